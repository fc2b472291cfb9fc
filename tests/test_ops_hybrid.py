"""The hybrid backend, ``backend="hybrid"``: cuBLAS (torch) for the base GEMMs ``x W^T``,
``dy W`` and ``dW``, the Triton kernels for the LoRA work (shrink with in-kernel dropout and gate
scaling, grad-shrink with the gate-gradient partials, ``lora_weight_grads``, the masked dropout
term of ``dx``). Same math, same checks as the other two backends: every op case against the
float64 reference (the kernels run by the interpreter on CPU tensors), both dispatch paths, the
launches pinned, and with dropout the dropped ``x`` is never materialised.
"""
import dataclasses

import pytest
import torch

import litelora_fast as llf
from litelora_fast import kernels
from litelora_fast.op import lora_dropout
from op_cases import ARG_NAMES, CASES, call, case_params, check_against_oracle, leaves, make_inputs

TRAINABLE = {
    "all": set(ARG_NAMES),
    "frozen-base": {"x", "lora_A", "lora_B", "gates"},
    "frozen-gates": {"x", "lora_A", "lora_B"},
    "gates-only": {"gates"},
}


def hybrid(*args, **kwargs):
    return llf.gated_lora_linear(*args, backend="hybrid", **kwargs)


def _with(case, trainable, base=True):
    return dataclasses.replace(case, trainable={n: n in TRAINABLE[trainable] for n in ARG_NAMES},
                               base=base, bias=case.bias and base)


@pytest.mark.parametrize("base", [True, False], ids=["base", "lora-only"])
@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("case", case_params(CASES))
def test_matches_float64(case, trainable, base, interpreter, seed):
    case = _with(case, trainable, base)
    t = make_inputs(case)
    y = call(hybrid, case, t)
    assert y.shape == (*case.lead, case.d_out)
    check_against_oracle(case, t, y, torch.float32)


@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in ("N37-K3-ragged",
                                                                     "3d-perrow-K4")}))
def test_fp16_matches_float64(case, interpreter, seed):
    t = make_inputs(case, torch.float16)
    check_against_oracle(case, t, call(hybrid, case, t), torch.float16)


@pytest.mark.parametrize("case", case_params(CASES) + [pytest.param(
    _with(CASES["3d-perrow-K4"], "all", base=False), id="lora-only-3d-perrow-K4")])
def test_dropout_matches_float64_given_the_mask(case, interpreter, seed):
    t = make_inputs(case)
    with lora_dropout.recorded_masks() as masks:
        y = call(lambda *a: hybrid(*a, dropout=0.3), case, t)
    check_against_oracle(case, t, y, torch.float32, dropout=0.3,
                         dropout_mask=masks[0].reshape(t["x"].shape))


@pytest.mark.parametrize("dropout", [0.0, 0.25], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("train_gates", [False, True], ids=["frozen-gates", "trainable-gates"])
def test_launches_and_no_dropped_copy_of_x(interpreter, seed, monkeypatch, train_gates, dropout):
    """A LoRA step (frozen base): the kernels' shrink, grad-shrink and lora_weight_grads, plus
    masked_addmm with dropout; no fused GEMM (those are cuBLAS), and no keep-mask materialised."""
    def no_mask(*args):
        raise AssertionError("the hybrid materialised the dropout mask")

    monkeypatch.setattr(lora_dropout, "keep_mask", no_mask)
    trainable = "frozen-base" if train_gates else "frozen-gates"
    case = _with(CASES["N37-K3-ragged"], trainable)
    t = make_inputs(case)
    kernels.LAUNCH_COUNTS.clear()
    call(lambda *a: hybrid(*a, dropout=dropout), case, t).sum().backward()
    assert {k: v for k, v in kernels.LAUNCH_COUNTS.items() if v} == {
        "shrink": 1, "grad_shrink": 1, "lora_weight_grads": 1,
        **({"masked_addmm": 1} if dropout else {})}


def test_direct_and_custom_op_paths_agree_bit_for_bit(interpreter, seed):
    from test_dispatch_paths import RecordDispatch

    case = CASES["zero-gates-perrow-nobias"]
    t = make_inputs(case)
    dy = torch.randn(*case.lead, case.d_out)
    runs = []
    for mode in (None, RecordDispatch):
        with mode() if mode else torch.autograd.graph.saved_tensors_hooks(lambda v: v,
                                                                          lambda v: v):
            y = call(hybrid, case, t)
            y.backward(dy)
        runs.append((y.detach(), {n: v.grad.clone() for n, v in leaves(t).items()}))
        for v in leaves(t).values():
            v.grad = None
    (y0, g0), (y1, g1) = runs
    assert torch.equal(y0, y1)
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name


def test_forcing_it_where_the_kernels_cannot_run_says_why(fast_path, seed):
    case = CASES["N1-K1"]
    t = make_inputs(case)
    with pytest.raises(ValueError, match="backend='hybrid'.*TRITON_INTERPRET"):
        call(hybrid, case, t)
    with pytest.raises(ValueError, match="backend must be None or one of"):
        call(lambda *a: llf.gated_lora_linear(*a, backend="cublas"), case, t)
