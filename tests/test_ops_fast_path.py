"""The public op on the PyTorch fast path (CPU tensors) against the float64 reference."""
import dataclasses

import pytest
import torch

import litelora_fast as llf
from litelora_fast.op import backends
from numerics import assert_rel
from op_cases import (ARG_NAMES, CASES, call, case_params, check_against_oracle, gate_grad_scale,
                      make_inputs, oracle)

# Which arguments train: all; the usual LoRA setup (frozen base); gates frozen (so zero-gate
# adapters are skipped); only the gates (LiteLoRA's phase 2); only x (a frozen layer mid-network).
TRAINABLE = {
    "all": set(ARG_NAMES),
    "frozen-base": {"x", "lora_A", "lora_B", "gates"},
    "frozen-gates": {"x", "lora_A", "lora_B"},
    "gates-only": {"gates"},
    "x-only": {"x"},
}


def _with_trainable(case, names):
    return dataclasses.replace(case, trainable={n: n in names for n in ARG_NAMES})


@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("case", case_params(CASES))
def test_forward_and_grads_match_float64(case, trainable, fast_path, seed):
    case = _with_trainable(case, TRAINABLE[trainable])
    t = make_inputs(case, torch.float32)
    y = call(llf.gated_lora_linear, case, t)
    assert y.shape == (*case.lead, case.d_out) and y.dtype == torch.float32
    check_against_oracle(case, t, y, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in ("N37-K3-ragged",
                                                                     "3d-perrow-K4")}))
def test_half_precision(case, dtype, fast_path, seed):
    t = make_inputs(case, dtype)
    y = call(llf.gated_lora_linear, case, t)
    assert y.dtype == dtype
    check_against_oracle(case, t, y, dtype)


@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in
                                              ("N37-K3-ragged", "3d-perrow-K4", "zero-gates",
                                               "strided-x")}))
def test_gradcheck_float64(case, fast_path, seed):
    small = dataclasses.replace(case, lead=(3,) if not case.per_row else (1, 3))
    t = make_inputs(small, torch.float64)
    names = [n for n in ARG_NAMES if t[n] is not None]

    def fn(*args):
        kw = dict(zip(names, args))
        return llf.gated_lora_linear(kw["x"], kw["weight"], kw.get("bias"), kw["lora_A"],
                                     kw["lora_B"], kw["gates"], small.rank_offsets, small.scaling)

    assert torch.autograd.gradcheck(fn, tuple(t[n] for n in names))


def test_all_zero_gates_return_exactly_the_base_linear(fast_path, seed):
    case = CASES["zero-gates"]
    t = make_inputs(dataclasses.replace(case, zero_gates=(0, 1, 2, 3)))
    with torch.no_grad():
        y = call(llf.gated_lora_linear, case, t)
        assert torch.equal(y, torch.nn.functional.linear(t["x"], t["weight"], t["bias"]))


def test_zero_gate_adapters_are_skipped(fast_path, seed, shrink_widths):
    """Frozen zero gates shrink the packed bank: the shrink only sees the live columns."""
    seen = shrink_widths
    case = _with_trainable(CASES["zero-gates"], {"x", "lora_A", "lora_B"})
    t = make_inputs(case)
    call(llf.gated_lora_linear, case, t).sum().backward()
    assert seen == [8]                              # 2 of 4 rank-4 adapters are live
    assert torch.count_nonzero(t["lora_A"].grad[4:12]) == 0   # skipped adapters: exact zeros
    assert torch.count_nonzero(t["lora_A"].grad[:4]) > 0


def test_trainable_zero_gate_still_gets_its_gradient(fast_path, seed):
    case = _with_trainable(CASES["zero-gates"], {"gates"})
    t = make_inputs(case)
    y = call(llf.gated_lora_linear, case, t)
    dy = torch.randn_like(y)
    y.backward(dy)
    _, g_ref = oracle(case, t, dy)
    assert torch.all(t["gates"].grad[[1, 2]] != 0)
    scale = gate_grad_scale(t["x"], t["lora_A"], t["lora_B"], dy, case.rank_offsets,
                            case.scaling, case.per_row)
    assert_rel("dgates", t["gates"].grad, g_ref["gates"], torch.float32, scale=scale)


def test_float_and_tensor_scaling_and_offsets_forms_agree(fast_path, seed):
    case = CASES["N37-K3-ragged"]
    t = make_inputs(case)
    args = (t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["gates"])
    a = llf.gated_lora_linear(*args, case.rank_offsets, case.scaling)
    b = llf.gated_lora_linear(*args, torch.tensor(case.rank_offsets), torch.tensor(case.scaling))
    assert torch.equal(a, b)
    c = llf.gated_lora_linear(*args[:4], t["lora_B"], t["gates"], case.rank_offsets, 2.0)
    d = llf.gated_lora_linear(*args, case.rank_offsets, [2.0, 2.0, 2.0])
    assert torch.equal(c, d)


def test_equal_ranks_by_default(fast_path, seed):
    case = dataclasses.replace(CASES["zero-gates"], zero_gates=())
    t = make_inputs(case)
    a = llf.gated_lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["gates"])
    b = call(llf.gated_lora_linear, case, t)
    assert torch.equal(a, b)


def test_autocast_runs_the_matmuls_in_bf16(fast_path, seed):
    case = CASES["N37-K3-ragged"]
    t = make_inputs(case)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = call(llf.gated_lora_linear, case, t)
        y_lin = torch.nn.functional.linear(t["x"], t["weight"], t["bias"])
    assert y.dtype == y_lin.dtype == torch.bfloat16
    y_ref, _ = oracle(case, t, torch.zeros(y.shape))
    assert_rel("y", y, y_ref, torch.bfloat16)


@pytest.mark.parametrize("trainable_adapters", [[False, True, False], [True, False, True],
                                                [False, False, False]], ids=str)
def test_frozen_adapters_get_no_weight_gradient_gemm(trainable_adapters, fast_path, seed,
                                                     monkeypatch):
    """Only trainable adapters' columns enter the dA/dB GEMMs; the others' gradients are 0."""
    widths = []
    both = backends.TorchBackend.lora_weight_grads    # dA and dB in one call: record both GEMMs
    monkeypatch.setattr(backends.TorchBackend, "lora_weight_grads", staticmethod(
        lambda x2d, dy, dS, SG, dt, **kw: widths.extend([(dS.shape[1], x2d.shape[1]),
                                                         (dy.shape[1], SG.shape[1])])
        or both(x2d, dy, dS, SG, dt, **kw)))
    case = _with_trainable(CASES["N37-K3-ragged"], {"x", "lora_A", "lora_B", "gates"})
    t = make_inputs(case)
    y = llf.gated_lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"],
                              t["gates"], case.rank_offsets, case.scaling,
                              trainable_adapters=trainable_adapters)
    dy = torch.randn_like(y)
    y.backward(dy)
    _, g_ref = oracle(case, t, dy)
    o = case.rank_offsets
    mask = torch.zeros(o[-1], dtype=torch.bool)
    for k, train in enumerate(trainable_adapters):
        mask[o[k]:o[k + 1]] = train
    r_train = int(mask.sum())
    assert widths == ([(r_train, case.d_in), (case.d_out, r_train)] if r_train else [])
    assert_rel("dA", t["lora_A"].grad, g_ref["lora_A"] * mask[:, None], torch.float32)
    assert_rel("dB", t["lora_B"].grad, g_ref["lora_B"] * mask[None, :], torch.float32)
    assert_rel("dx", t["x"].grad, g_ref["x"], torch.float32)
    scale = gate_grad_scale(t["x"], t["lora_A"], t["lora_B"], dy, case.rank_offsets,
                            case.scaling, case.per_row)
    assert_rel("dgates", t["gates"].grad, g_ref["gates"], torch.float32, scale=scale)
    with pytest.raises(ValueError, match="trainable_adapters must have K = 3"):
        llf.gated_lora_linear(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"],
                              t["gates"], case.rank_offsets, trainable_adapters=[True])


@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in
                                              ("N37-K3-ragged", "3d-perrow-K4", "zero-gates",
                                               "rank0-adapter")}))
@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_gate_gradient_sums_in_a_fixed_order(request, path, case, monkeypatch, seed):
    """The per-adapter sums of the gate gradient take no accumulating scatter (``index_add_``
    and ``scatter_add_`` use atomics on CUDA, so their rounding changes from run to run): equal
    ranks, ragged ranks and a rank-0 adapter (a gap in the active set), against float64."""
    request.getfixturevalue(path)

    def atomic(*args, **kwargs):
        raise AssertionError("an accumulating scatter (atomics on CUDA) in the gate gradient")

    for name in ("index_add_", "index_add", "scatter_add_", "scatter_add", "index_put_"):
        monkeypatch.setattr(torch.Tensor, name, atomic)
    t = make_inputs(case)
    check_against_oracle(case, t, call(llf.gated_lora_linear, case, t), torch.float32)
