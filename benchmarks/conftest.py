"""Benchmark session setup: the ``--full`` option, no Triton interpreter, versions in the JSON.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` for the unit tests; a benchmark must never run
under it (CPU "ours" would be the numpy-backed interpreter, GPU kernels would not compile), so it
is removed here before triton is imported and forced to ``0`` around every benchmark.
"""
import os

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    os.environ.pop("TRITON_INTERPRET")

import pytest  # noqa: E402
import torch  # noqa: E402

# One CPU thread: on a shared machine with few cores, intra-op threads spin-wait on each other and
# a 512x256x256 matmul's median went from 1 ms to 40 ms at load 7 on 2 cores (seen 2026-11-29).
# The GPU cases only launch work from the CPU, so this does not touch them.
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="litelora-fast: run the whole GPU grid, not the default subset "
                          "(the default finishes in under 5 minutes on an H200)")


def pytest_generate_tests(metafunc):
    if "gpu_case" in metafunc.fixturenames:
        from litelora_fast.roofline import gpu_cases
        cases = gpu_cases(full=metafunc.config.getoption("--full"))
        metafunc.parametrize("gpu_case", cases, ids=[c.id for c in cases])


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def pytest_benchmark_update_machine_info(config, machine_info):
    import triton

    import litelora_fast
    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["litelora_fast"] = litelora_fast.__version__
    machine_info["cuda_device"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                                   else None)
    machine_info["cuda_runtime"] = torch.version.cuda
    machine_info["cpu_threads"] = torch.get_num_threads()
    machine_info["load_avg_1min_at_start"] = os.getloadavg()[0]
