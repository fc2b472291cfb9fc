"""No device-to-host read per call in steady state.

On a GPU a read (``.tolist()``, ``.item()``, ``bool(t)``, ``.cpu()``, ``.numpy()``) stalls the
launch queue and makes CUDA-graph capture impossible. These tests wrap those Tensor methods (and
``__int__``/``__float__``/``__index__``) and count the calls made during training steps 2-5 of a
``GatedLoRALinear``, for frozen, trainable and per-row gates, on
the PyTorch fast path and through the Triton kernels (the interpreter, small shapes), and with
LoRA dropout through the kernels. The count must be 0. Calls made by Triton's interpreter itself
are not counted: it *is* the device there (it moves tensors to numpy to emulate the kernels).

Every tensor here is a CPU tensor, whose values the op reads for free at every call (frozen
``(K,)`` gates: their zeros are skipped). The step tests make the op treat the gates as it treats
a CUDA tensor (``plan.free_to_read`` false): then nothing may be read, and zeros multiply.
"""
import os
import sys

import pytest
import torch

import litelora_fast as llf
from litelora_fast import kernels
from litelora_fast.op import plan

READS = ("tolist", "item", "__bool__", "cpu", "numpy", "__int__", "__float__", "__index__")
_TRITON_DIR = os.path.dirname(__import__("triton").__file__)


class ReadCounter:
    """Counts calls of the wrapped Tensor methods made outside Triton's own code."""

    def __init__(self, monkeypatch):
        self.calls = []
        self.on = False
        for name in READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def wrapper(t, *args, **kwargs):
            if self.on:
                caller = sys._getframe(1).f_code.co_filename
                if not caller.startswith(_TRITON_DIR):
                    self.calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return real(t, *args, **kwargs)
        return wrapper


def _layer(gates: str) -> llf.GatedLoRALinear:
    layer = llf.GatedLoRALinear(12, 10, rank=3, num_adapters=3,
                                gate="per_row" if gates == "per-row" else "per_adapter",
                                dropout=0.1 if gates == "frozen+dropout" else 0.0)
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
        if gates != "per-row":
            layer.gates.copy_(torch.tensor([0.5, 0.0, 1.5]))   # one zero gate: skipping matters
        else:
            layer.router_weight.normal_()
    layer.freeze_adapter(0)                                     # an earlier task
    if gates == "trainable":
        layer.gates.requires_grad_(True)
    return layer


def _train(layer, counter, steps=5):
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)        # (Adam reads its step count with .item())
    x = torch.randn(4, 5, 12)
    target = torch.randn(4, 5, 10)
    for step in range(1, steps + 1):
        counter.on = step >= 2
        loss = torch.nn.functional.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    counter.on = False


CASES = [(g, path) for path in ("fast_path", "interpreter")
         for g in ("frozen", "trainable", "per-row")]
# LoRA dropout draws one seed per call on the device. The CPU fast path turns it into a CPU
# generator's seed with int() (a CPU tensor: no device there); on CUDA and under the interpreter
# the mask comes from the seed inside a kernel, so that path must not read it.
CASES.append(("frozen+dropout", "interpreter"))


@pytest.mark.parametrize("gates,path", CASES, ids=[f"{g}-{p}" for g, p in CASES])
def test_no_host_read_in_steps_2_to_5(gates, path, request, monkeypatch, seed):
    request.getfixturevalue(path)
    layer = _layer(gates)
    monkeypatch.setattr(plan, "free_to_read", lambda t: False)    # gates "on the device"
    counter = ReadCounter(monkeypatch)
    launches = sum(kernels.LAUNCH_COUNTS.values())
    _train(layer, counter)
    assert counter.calls == [], counter.calls
    counter.on = True                     # the counter itself works: one read is one call
    torch.zeros(1).item()
    assert len(counter.calls) == 1
    counter.on = False
    ran_kernels = sum(kernels.LAUNCH_COUNTS.values()) > launches
    assert ran_kernels == (path == "interpreter")


def test_cpu_gates_are_read_every_call_and_zeros_skipped(fast_path, seed, shrink_widths,
                                                         monkeypatch):
    """Frozen CPU gates cost no sync: read at every call (one ``tolist``), and a gate zeroed
    in place (``.data`` included) takes its adapter out of the shrink at the next call."""
    layer = _layer("frozen")
    x = torch.randn(6, 12)
    counter = ReadCounter(monkeypatch)
    counter.on = True
    y1 = layer(x)
    layer(x)
    assert len(counter.calls) == 2 and all("plan.py" in c for c in counter.calls), counter.calls
    counter.on = False
    layer.gates.data[2] = 0.0
    y2 = layer(x)
    assert shrink_widths == [6, 6, 3]          # adapters 0 and 2, then adapter 0 alone
    with torch.no_grad():
        expected = llf.reference.gated_lora_linear_ref(
            x, layer.weight, layer.bias, *layer.packed_bank(), layer.gates, layer.rank_offsets,
            layer.scaling)
    assert torch.allclose(y2, expected, rtol=0, atol=1e-5) and not torch.equal(y1, y2)


def test_nonzero_gates_hint_skips_without_reading(fast_path, seed, shrink_widths, monkeypatch):
    """Per-row gates are never read; the host hint still skips the adapters it rules out."""
    seen = shrink_widths
    x, W = torch.randn(7, 8), torch.randn(5, 8)
    A, B = torch.randn(6, 8), torch.randn(5, 6)
    g = torch.rand(7, 3) + 0.1
    g[:, 1] = 0.0
    counter = ReadCounter(monkeypatch)
    counter.on = True
    y_all = llf.gated_lora_linear(x, W, None, A, B, g)
    y_hint = llf.gated_lora_linear(x, W, None, A, B, g, nonzero_gates=[True, False, True])
    counter.on = False
    assert counter.calls == [] and seen == [6, 4]
    ref = llf.reference.gated_lora_linear_ref(x, W, None, A, B, g)
    for y in (y_all, y_hint):
        assert torch.allclose(y, ref, rtol=0, atol=1e-5)
