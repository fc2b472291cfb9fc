"""The LoRA-only op, ``gated_lora_linear(x, None, None, lora_A, lora_B, gates, ...)``: the adapter
term ``(S * G_E) @ B_cat^T`` alone, for a base the kernels cannot read (a quantized layer runs its
own forward and adds this). Every op case against the float64 reference on the PyTorch fast path
and on the kernels (interpreter), every gradient, LoRA dropout, zero-gate skipping, both dispatch
paths, the launches it makes, and the error for a bias without a weight.
"""
import dataclasses

import pytest
import torch

import litelora_fast as llf
from litelora_fast import kernels
from litelora_fast.op import lora_dropout
from numerics import assert_rel
from op_cases import (ARG_NAMES, CASES, call, case_params, check_against_oracle, leaves,
                      make_inputs)

PATHS = ["fast_path", "interpreter"]
TRAINABLE = {
    "all": {"x", "lora_A", "lora_B", "gates"},
    "frozen-gates": {"x", "lora_A", "lora_B"},
    "gates-only": {"gates"},
    "x-only": {"x"},
}


def _lora_only(case, trainable="all"):
    return dataclasses.replace(case, base=False, bias=False,
                               trainable={n: n in TRAINABLE[trainable] for n in ARG_NAMES})


@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("case", case_params(CASES))
@pytest.mark.parametrize("path", PATHS)
def test_matches_float64(request, path, case, trainable, seed):
    request.getfixturevalue(path)
    case = _lora_only(case, trainable)
    t = make_inputs(case)
    y = call(llf.gated_lora_linear, case, t)
    assert y.shape == (*case.lead, case.d_out) and y.dtype == torch.float32
    check_against_oracle(case, t, y, torch.float32)


@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in ("N37-K3-ragged",
                                                                     "3d-perrow-K4")}))
def test_fp16_on_the_kernels_matches_float64(case, interpreter, seed):
    case = _lora_only(case)
    t = make_inputs(case, torch.float16)
    check_against_oracle(case, t, call(llf.gated_lora_linear, case, t), torch.float16)


@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in
                                              ("N37-K3-ragged", "zero-gates-perrow-nobias",
                                               "strided-x", "3d-perrow-K4")}))
@pytest.mark.parametrize("path", PATHS)
def test_dropout_matches_float64_given_the_mask(request, path, case, seed):
    request.getfixturevalue(path)
    case = _lora_only(case)
    t = make_inputs(case)
    with lora_dropout.recorded_masks() as masks:
        y = call(lambda *a: llf.gated_lora_linear(*a, dropout=0.3), case, t)
    assert len(masks) == 1
    check_against_oracle(case, t, y, torch.float32, dropout=0.3,
                         dropout_mask=masks[0].reshape(t["x"].shape))


@pytest.mark.parametrize("path", PATHS)
def test_direct_and_custom_op_paths_agree_bit_for_bit(request, path, seed):
    """A torch-dispatch mode sends the call through the registered custom ops."""
    from test_dispatch_paths import RecordDispatch

    request.getfixturevalue(path)
    case = _lora_only(CASES["zero-gates-perrow-nobias"])
    t = make_inputs(case)
    dy = torch.randn(*case.lead, case.d_out)
    runs = []
    for mode in (None, RecordDispatch):
        with mode() if mode else torch.autograd.graph.saved_tensors_hooks(lambda v: v,
                                                                          lambda v: v) as m:
            y = call(llf.gated_lora_linear, case, t)
            y.backward(dy)
        if mode:
            assert "litelora_fast.gated_lora_fwd.default" in m.names
            assert "litelora_fast.gated_lora_bwd.default" in m.names
        runs.append((y.detach(), {n: v.grad.clone() for n, v in leaves(t).items()}))
        for v in leaves(t).values():
            v.grad = None
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1) and g0.keys() == g1.keys() == {"x", "lora_A", "lora_B", "gates"}
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name


def test_zero_gates_are_skipped(fast_path, shrink_widths, seed):
    case = _lora_only(CASES["zero-gates"], "frozen-gates")
    t = make_inputs(case)
    check_against_oracle(case, t, call(llf.gated_lora_linear, case, t), torch.float32)
    assert shrink_widths == [8]                 # adapters 1 and 2 (gate 0) left out: 16 -> 8
    # Every gate zero: zeros of (N, D_out), and zero gradients, without a kernel.
    t["gates"] = torch.zeros(4)
    for v in leaves(t).values():
        v.grad = None
    y = call(llf.gated_lora_linear, case, t)
    assert torch.equal(y, torch.zeros(20, 12))
    y.sum().backward()
    assert t["x"].grad.abs().max() == 0 and t["lora_A"].grad.abs().max() == 0


@pytest.mark.parametrize("dropout", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_kernel_launches(interpreter, seed, dropout):
    """Forward: shrink + the fused GEMM with an empty base stretch (pointer kernel); backward:
    grad-shrink + the dx GEMM likewise (or, with dropout, the masked term into zeros) + one
    launch for dA and dB. Nothing runs the PyTorch backend."""
    case = _lora_only(CASES["N37-K3-ragged"], "frozen-gates")
    t = make_inputs(case)
    kernels.LAUNCH_COUNTS.clear()
    call(lambda *a: llf.gated_lora_linear(*a, dropout=dropout), case, t).sum().backward()
    dx = {"masked_addmm": 1} if dropout else {"fused_dx": 1, "fused_dx/pointer": 1}
    assert {k: v for k, v in kernels.LAUNCH_COUNTS.items() if v} == {
        "shrink": 1, "fused_forward": 1, "fused_forward/pointer": 1, "grad_shrink": 1,
        "lora_weight_grads": 1, **dx}


def test_gradcheck_float64(fast_path, seed):
    case = dataclasses.replace(_lora_only(CASES["3d-perrow-K4"]), lead=(1, 3))
    t = make_inputs(case, torch.float64)
    names = [n for n in ARG_NAMES if t[n] is not None]

    def fn(*args):
        kw = dict(zip(names, args))
        return llf.gated_lora_linear(kw["x"], None, None, kw["lora_A"], kw["lora_B"],
                                     kw["gates"], case.rank_offsets, case.scaling)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_a_bias_without_a_weight_is_refused(seed):
    case = _lora_only(CASES["N1-K1"])
    t = make_inputs(case)
    with pytest.raises(ValueError, match="weight is None.*bias"):
        llf.gated_lora_linear(t["x"], None, torch.zeros(case.d_out), t["lora_A"], t["lora_B"],
                              t["gates"])
    with pytest.raises(ValueError, match="lora_A's D_in"):
        llf.gated_lora_linear(t["x"][..., :-1], None, None, t["lora_A"], t["lora_B"], t["gates"])


def test_adds_to_a_base_output_as_the_full_op(fast_path, seed):
    """base(x) + the LoRA-only op == the op with that base's weight (the quantized-base use)."""
    case = CASES["3d-perrow-K4"]
    t = make_inputs(case)
    full = call(llf.gated_lora_linear, case, t)
    lora = llf.gated_lora_linear(t["x"], None, None, t["lora_A"], t["lora_B"], t["gates"],
                                 case.rank_offsets, case.scaling)
    assert_rel("base + lora", torch.nn.functional.linear(t["x"], t["weight"], t["bias"]) + lora,
               full.double(), torch.float32)
