"""The op on newer torch APIs (issue: drift seen on torch 2.11): the TF32 switch read through
either of torch's APIs, and no untraceable autocast query in the op's path under Dynamo."""
import pytest
import torch

import litelora_fast as llf
from litelora_fast.kernels import tuning
from numerics import assert_rel
from op_cases import CASES, call, make_inputs


@pytest.fixture
def restore_fp32_precision():
    previous = torch.get_float32_matmul_precision()
    yield torch.backends.cuda.matmul
    torch.backends.cuda.matmul.fp32_precision = "none"
    torch.backends.fp32_precision = "none"
    torch.set_float32_matmul_precision(previous)
    assert torch.backends.cuda.matmul.allow_tf32 == (previous != "highest")   # readable again


def test_tf32_read_with_the_fp32_precision_api(restore_fp32_precision):
    """Once a user sets ``fp32_precision``, reading the legacy ``allow_tf32`` raises; the kernels'
    choice follows the new setting instead, and still the legacy one when only that was used."""
    matmul = restore_fp32_precision
    t32 = torch.empty(1)
    matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError, match="legacy and new"):
        matmul.allow_tf32                                           # what the old read did
    assert tuning.torch_allows_tf32() and tuning.dot_precision(t32, cuda=True) == "tf32"
    matmul.fp32_precision = "ieee"
    assert not tuning.torch_allows_tf32() and tuning.dot_precision(t32, cuda=True) == "ieee"
    matmul.fp32_precision = "none"
    torch.backends.fp32_precision = "tf32"                          # the global switch
    assert tuning.torch_allows_tf32()
    torch.backends.fp32_precision = "none"
    torch.set_float32_matmul_precision("high")                      # the legacy switch
    assert tuning.torch_allows_tf32()
    torch.set_float32_matmul_precision("highest")
    assert not tuning.torch_allows_tf32()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_op_never_asks_is_autocast_available(compiled, fast_path, monkeypatch, seed):
    """Dynamo on torch 2.11 cannot trace ``torch.amp.is_autocast_available``, which made
    ``torch.compile(fullgraph=True)`` of the op raise; simulated here by making it raise."""
    def untraceable(device_type):
        raise RuntimeError("torch.amp.is_autocast_available called in the op's path")

    monkeypatch.setattr(torch.amp, "is_autocast_available", untraceable)
    case = CASES["3d-perrow-K4"]
    t = make_inputs(case)
    fn = llf.gated_lora_linear
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(fn, backend="aot_eager", fullgraph=True)
    y = call(fn, case, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = call(fn, case, t)
    assert y16.dtype == torch.bfloat16
    ref = call(llf.reference.gated_lora_linear_ref, case, t)
    assert_rel("y", y, ref.double(), torch.float32)
    assert_rel("y autocast", y16, ref.double(), torch.bfloat16)
