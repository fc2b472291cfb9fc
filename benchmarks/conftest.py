"""Benchmark session setup: ``--grid``/``--full``, no Triton interpreter, versions in the JSON.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` for the unit tests. A benchmark must never run
under it: CPU "ours" would be the numpy-backed interpreter, and GPU kernels would be interpreted.
The op reads the variable at call time, so an autouse fixture sets it to ``0`` around every
benchmark (and restores it, so unit tests collected in the same run keep theirs). Kernels are
built interpreted or compiled when triton is imported, which a fixture cannot undo: the GPU cases
skip when the variable was set then (``harness.run_case``); run ``pytest benchmarks/`` on its own.
"""
import importlib.metadata
import importlib.util
import os

import pytest
import torch

# One CPU thread for the benchmarks: on a shared machine with few cores, intra-op threads spin-wait
# on each other, and a 512x256x256 matmul's median went from 1 ms to 40 ms at load 7 on 2 cores
# (seen 2026-11-29). The GPU cases only launch work from the CPU, so this does not slow them.
BENCH_THREADS = 1


def pytest_addoption(parser):
    # The names of litelora_fast.tools.bench_cases.GRIDS (not imported here: options are parsed
    # before the session fixtures set the environment the package should be imported under).
    parser.addoption("--grid", choices=("headline", "default", "full"), default="default",
                     help="litelora-fast: which GPU cases: headline (what gpu_check.sh times), "
                          "default (under 5 minutes on an H200) or full")
    parser.addoption("--full", action="store_true", default=False,
                     help="litelora-fast: the whole GPU grid (same as --grid full)")


def gpu_grid(config) -> str:
    return "full" if config.getoption("--full") else config.getoption("--grid")


def pytest_generate_tests(metafunc):
    if "gpu_case" in metafunc.fixturenames:
        from litelora_fast.tools.bench_cases import gpu_cases
        cases = gpu_cases(gpu_grid(metafunc.config))
        metafunc.parametrize("gpu_case", cases, ids=[c.id for c in cases])


@pytest.fixture(autouse=True)
def _bench_environment(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    yield
    torch.set_num_threads(threads)


def pytest_benchmark_update_machine_info(config, machine_info):
    import triton

    import litelora_fast
    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["litelora_fast"] = litelora_fast.__version__
    machine_info["peft"] = (None if importlib.util.find_spec("peft") is None
                            else importlib.metadata.version("peft"))
    machine_info["cuda_device"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                                   else None)
    machine_info["cuda_runtime"] = torch.version.cuda
    machine_info["cpu_threads"] = BENCH_THREADS
    machine_info["load_avg_1min_at_start"] = os.getloadavg()[0]
