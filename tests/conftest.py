"""Test session setup.

``TRITON_INTERPRET=1`` must be set before triton is imported so that ``@triton.jit`` builds
interpreted kernels that run on CPU tensors. The op reads the variable again at call time: tests of
the PyTorch fast path set it to ``0`` around their calls (fixture ``fast_path``).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

# Import triton now, under the variable: a fast-path test would otherwise be the first to import
# it (through torch's dynamo machinery) with the variable at 0, and later interpreter tests would
# meet compiled-mode @triton.jit objects.
import triton  # noqa: E402,F401

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def fast_path(monkeypatch):
    """Route CPU tensors to the PyTorch fast path for this test."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def interpreter(monkeypatch):
    """Route CPU tensors to the Triton kernels (run by the interpreter) for this test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def seed(request):
    """A fresh seed per test run, printed on failure so a failing draw can be replayed."""
    value = int(os.environ.get("LITELORA_TEST_SEED", torch.seed() % (2**31)))
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value


@pytest.fixture
def shrink_widths(monkeypatch):
    """The list of R_act widths the PyTorch backend's shrink sees, one per call: the packed
    bank after zero-gate skipping."""
    from litelora_fast import backends

    seen = []
    real = backends.TorchBackend.shrink
    monkeypatch.setattr(backends.TorchBackend, "shrink",
                        staticmethod(lambda x, A, *a, **kw: seen.append(A.shape[0])
                                     or real(x, A, *a, **kw)))
    return seen
