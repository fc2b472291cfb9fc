"""Odd but legal input behaves like ``nn.Linear`` (and the reference), on both backends, forward
and backward: empty batches, ``D_in = 0``, ``D_out = 0``, no adapters, meta tensors (inf and
NaN gates: tests/test_nonfinite_gates.py).
Nonsense is refused with a clear error: non-finite or non-numeric ``scaling``, a forced Triton
backend that cannot run, bfloat16 forced through Triton's interpreter.
"""
import dataclasses
import warnings

import pytest
import torch

import litelora_fast as llf
from litelora_fast.op import autotune
from litelora_fast import kernels
from numerics import assert_rel
from op_cases import ARG_NAMES, Case, call, check_against_oracle, make_inputs

PATHS = ["fast_path", "interpreter"]
ODD = {
    "N0-per-adapter": Case(lead=(0,), d_in=5, d_out=4, ranks=[2, 3]),
    "N0-per-row": Case(lead=(0,), d_in=5, d_out=4, ranks=[2, 3], per_row=True),
    "N0-3d": Case(lead=(2, 0), d_in=5, d_out=4, ranks=[2, 2], per_row=True),
    "Din0": Case(lead=(3,), d_in=0, d_out=4, ranks=[2, 1]),
    "Din0-3d": Case(lead=(2, 3), d_in=0, d_out=4, ranks=[2, 1], per_row=True),
    "Dout0": Case(lead=(3,), d_in=5, d_out=0, ranks=[2, 1]),
    "K0": Case(lead=(3,), d_in=5, d_out=4, ranks=[]),
    "K0-no-bias": Case(lead=(3,), d_in=5, d_out=4, ranks=[], bias=False),
}
TRAINABLE = {"all": set(ARG_NAMES), "frozen-gates": {"x", "lora_A", "lora_B"}}


@pytest.mark.parametrize("trainable", list(TRAINABLE))
@pytest.mark.parametrize("name", list(ODD))
@pytest.mark.parametrize("path", PATHS)
def test_degenerate_shapes_match_the_reference(name, trainable, path, request, seed):
    request.getfixturevalue(path)
    case = dataclasses.replace(ODD[name], trainable={n: n in TRAINABLE[trainable]
                                                     for n in ARG_NAMES})
    t = make_inputs(case)
    y = call(llf.gated_lora_linear, case, t)
    assert y.shape == (*case.lead, case.d_out)
    # nn.Linear's answer where there is no adapter work: D_in = 0 gives the bias.
    base = torch.nn.functional.linear(t["x"], t["weight"], t["bias"])
    if case.d_in == 0 or not case.ranks:
        assert torch.equal(y.detach(), base.detach())
    check_against_oracle(case, t, y, torch.float32)


@pytest.mark.parametrize("path", PATHS)
def test_meta_tensors_give_shapes_forward_and_backward(path, request):
    request.getfixturevalue(path)
    case = Case(lead=(2, 7), d_in=6, d_out=5, ranks=[2, 3])
    for trainable_gates in (False, True):
        t = make_inputs(dataclasses.replace(case, trainable={
            n: n != "gates" or trainable_gates for n in ARG_NAMES}), device="meta")
        y = call(llf.gated_lora_linear, case, t)
        assert y.is_meta and y.shape == (2, 7, 5)
        y.sum().backward()
        for n in ARG_NAMES:
            if t[n] is not None and t[n].requires_grad:
                assert t[n].grad.is_meta and t[n].grad.shape == t[n].shape, n


def test_meta_module_then_to_empty(fast_path, seed):
    layer = llf.GatedLoRALinear(6, 5, rank=2, num_adapters=2, device="meta")
    x = torch.randn(3, 6, device="meta")
    assert layer(x).shape == (3, 5)
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def _small(dtype=torch.float32):
    case = Case(lead=(4,), d_in=6, d_out=5, ranks=[2, 2])
    return case, make_inputs(case, dtype)


@pytest.mark.parametrize("scaling", ["22", b"\x02\x03", float("nan"), float("inf"),
                                     -float("inf"), 1e300, [1.0, "2"], [1.0, float("nan")],
                                     True, 3 + 0j, torch.tensor([1.0, float("inf")]),
                                     torch.tensor(float("nan"))], ids=repr)
def test_scaling_must_be_finite_real_numbers(scaling, fast_path, seed):
    case, t = _small()
    with pytest.raises((TypeError, ValueError), match="scaling"):
        llf.gated_lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"],
                              t["gates"], case.rank_offsets, scaling)


def test_huge_scaling_is_a_value_error_below_float64_and_works_in_float64(fast_path, seed):
    case, t = _small()
    args = (t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["gates"],
            case.rank_offsets)
    with pytest.raises(ValueError, match="scaling entry 0 = 1e\\+300 overflows"):
        llf.gated_lora_linear(*args, [1e300, 1.0])
    t64 = [None if v is None else v.detach().double() for v in args[:6]]
    y = llf.gated_lora_linear(*t64, case.rank_offsets, [1e300, 1.0])
    ref = llf.reference.gated_lora_linear_ref(*t64, case.rank_offsets, [1e300, 1.0])
    # (elementwise: the norm of values near 1e300 overflows)
    assert torch.isfinite(y).all() and torch.allclose(y, ref, rtol=1e-12, atol=0)


def test_forced_triton_without_gpu_or_interpreter_is_a_clear_error(fast_path, seed):
    case, t = _small()
    with pytest.raises(ValueError, match="backend='triton'.*TRITON_INTERPRET=1"):
        call(lambda *a: llf.gated_lora_linear(*a, backend="triton"), case, t)
    meta = make_inputs(case, device="meta")
    with pytest.raises(ValueError, match="backend='triton'.*meta"):
        call(lambda *a: llf.gated_lora_linear(*a, backend="triton"), case, meta)


def test_bf16_under_the_interpreter_warns_once_and_takes_the_torch_path(interpreter, seed,
                                                                       monkeypatch):
    monkeypatch.setattr(autotune, "_warned_bf16", False)    # (the rule lives in autotune)
    case, t = _small(torch.bfloat16)
    before = sum(kernels.LAUNCH_COUNTS.values())
    with pytest.warns(RuntimeWarning, match="bfloat16.*11584"):
        y = call(llf.gated_lora_linear, case, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = call(llf.gated_lora_linear, case, t)
    assert sum(kernels.LAUNCH_COUNTS.values()) == before
    assert torch.equal(y, y2)
    check_against_oracle(case, t, y, torch.bfloat16)
    with pytest.raises(ValueError, match="backend='triton'.*bfloat16"):
        call(lambda *a: llf.gated_lora_linear(*a, backend="triton"), case, t)
