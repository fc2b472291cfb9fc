"""Command-line tools around the op, apart from the core package.

- ``bench_cases``: the benchmark cases (``Case``, the GPU grids) shared by the roofline model,
  the benchmarks and the report;
- ``bench_json``: reading a benchmark run (pytest-benchmark JSON or the harness's JSON lines);
- ``roofline``: FLOPs, bytes and predicted times (H200 or H100 ceilings) of each case and peer
  (``roofline`` command);
- ``report``: a benchmark run -> markdown table + speedup plot (``report`` command);
- ``validate``: the op against the float64 reference on random shapes (``validate`` command);
- ``tune``: pre-tunes the op's kernels-vs-cuBLAS choice for a model's shapes (``tune`` command);
- ``demo``: the LiteLoRA demo and the redundancy analysis of a checkpoint (``demo``, ``analyze``).

Each command module has ``main(argv) -> exit code``; ``litelora_fast/__main__.py`` routes to it.

Dependency arrows point one way: ``bench_cases <- bench_json <- report``,
``bench_cases <- roofline``, ``bench_json <- roofline``; nothing in the core imports this package.
"""
