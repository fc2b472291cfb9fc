"""Command-line tools around the op, apart from the core package.

- ``bench_cases``: the benchmark cases (``Case``, the GPU grids) shared by the roofline model,
  the benchmarks and the report;
- ``bench_json``: reading a benchmark run (pytest-benchmark JSON or the harness's JSON lines);
- ``roofline``: FLOPs, bytes and predicted H200 times of each case and peer (``roofline`` command);
- ``report``: a benchmark run -> markdown table + speedup plot (``report`` command);
- ``validate``: the op against the float64 reference on random shapes (``validate`` command).

Dependency arrows point one way: ``bench_cases <- bench_json <- report``,
``bench_cases <- roofline``, ``bench_json <- roofline``; nothing in the core imports this package.
"""
