"""``pytest benchmarks/``: ours against the reference (a), the packed plain-PyTorch path (b) and
the base GEMM (c), side by side, in the modes forward, backward and forward+backward.

GPU cases (bf16; default subset, ``--full`` for the grid) skip without CUDA; the small fp32 CPU
cases always run. ``--benchmark-json BENCH.json`` then ``python -m litelora_fast report
BENCH.json`` make the table and the plot. Headline numbers are ``extra_info["ms_<peer>"]``
(see ``harness.py``).
"""
import pytest

from cases import CPU_CASES
from harness import run_case
from litelora_fast.tools.bench_cases import MODES


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cpu_case", CPU_CASES, ids=[c.id for c in CPU_CASES])
def test_cpu(benchmark, cpu_case, mode):
    benchmark.group = f"{cpu_case.id}-{mode}"
    run_case(benchmark, cpu_case, mode)


@pytest.mark.parametrize("mode", MODES)
def test_gpu(benchmark, gpu_case, mode):
    benchmark.group = f"{gpu_case.id}-{mode}"
    run_case(benchmark, gpu_case, mode)
