"""``torch.func`` transforms through the op: ``jvp``/``jacfwd`` give the right tangent (they got an
all-zero one through the custom op), ``grad``/``jacrev``/``vmap`` work (they raised from inside
torch). Checked against float64 autograd and F.linear-based math, on the op and on the module."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import litelora_fast as llf
from numerics import assert_rel

OFFSETS, SCALING = [0, 2, 5], [2.0, 0.5]


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, dtype=dtype, generator=g)
    W, b = torch.randn(4, 7, dtype=dtype, generator=g), torch.randn(4, dtype=dtype, generator=g)
    A, B = torch.randn(5, 7, dtype=dtype, generator=g), torch.randn(4, 5, dtype=dtype, generator=g)
    gates = torch.rand(2, dtype=dtype, generator=g) + 0.5
    return x, W, b, A, B, gates


def _linear_math(x, W, b, A, B, gates):
    """The op's definition in F.linear terms, adapter by adapter."""
    y = F.linear(x, W, b)
    for k, s in enumerate(SCALING):
        lo, hi = OFFSETS[k], OFFSETS[k + 1]
        y = y + gates[k] * s * F.linear(F.linear(x, A[lo:hi]), B[:, lo:hi])
    return y


def _op(x, W, b, A, B, gates, **kw):
    return llf.gated_lora_linear(x, W, b, A, B, gates, OFFSETS, SCALING, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_jvp_and_jacfwd_give_the_right_tangent(request, path, dtype):
    request.getfixturevalue(path)
    args = _inputs(dtype)
    tangents = tuple(torch.randn_like(a) for a in args)
    y, t = jvp(_op, args, tangents)
    y_ref, t_ref = jvp(_linear_math, tuple(a.double() for a in args),
                       tuple(v.double() for v in tangents))
    assert t.abs().max() > 0
    assert_rel("y", y, y_ref, dtype)
    assert_rel("tangent", t, t_ref, dtype)
    J = jacfwd(lambda gates: _op(*args[:5], gates))(args[5])
    J_ref = jacrev(lambda gates: _linear_math(*map(torch.Tensor.double, args[:5]), gates))(
        args[5].double())
    assert_rel("jacfwd d y / d gates", J, J_ref, dtype)


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_grad_and_jacrev_match_autograd(request, path):
    request.getfixturevalue(path)
    args = _inputs()
    # Autograd through the op's own (direct) path is the float64 oracle here.
    leaves = [a.clone().requires_grad_() for a in args]
    _op(*leaves).square().sum().backward()
    got = grad(lambda *a: _op(*a).square().sum(), argnums=tuple(range(6)))(*args)
    for name, g, leaf in zip(("x", "W", "b", "A", "B", "gates"), got, leaves):
        assert_rel(f"d{name}", g, leaf.grad, torch.float64)
    J = jacrev(lambda A: _op(args[0], args[1], args[2], A, args[4], args[5]))(args[3])
    J_ref = jacrev(lambda A: _linear_math(args[0], args[1], args[2], A, args[4], args[5]))(args[3])
    assert_rel("jacrev d y / d A", J, J_ref, torch.float64)


def test_grad_keeps_frozen_adapters_frozen(fast_path):
    x, W, b, A, B, gates = _inputs()
    dA, dB = grad(lambda A, B: _op(x, W, b, A, B, gates, trainable_adapters=[False, True])
                  .sum(), argnums=(0, 1))(A, B)
    assert dA[:2].abs().max() == 0 and dB[:, :2].abs().max() == 0
    ref_A, ref_B = grad(lambda A, B: _linear_math(x, W, b, A, B, gates).sum(), argnums=(0, 1))(A, B)
    assert_rel("dA trainable", dA[2:], ref_A[2:], torch.float64)
    assert_rel("dB trainable", dB[:, 2:], ref_B[:, 2:], torch.float64)


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_vmap_over_gates_and_rows(request, path):
    request.getfixturevalue(path)
    x, W, b, A, B, gates = _inputs(torch.float32)
    many = torch.rand(3, 2) + 0.25
    y = vmap(lambda g: _op(x, W, b, A, B, g))(many)
    ref = torch.stack([_linear_math(*(t.double() for t in (x, W, b, A, B, g))) for g in many])
    assert_rel("vmap over gates", y, ref, torch.float32)
    y_rows = vmap(lambda row: _op(row, W, b, A, B, gates))(x)
    assert_rel("vmap over rows", y_rows,
               _linear_math(*(t.double() for t in (x, W, b, A, B, gates))), torch.float32)


def test_the_module_under_functional_call_and_grad(fast_path, seed):
    layer = llf.GatedLoRALinear(7, 4, rank=3, num_adapters=2).double()
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
    x = torch.randn(5, 7, dtype=torch.float64)
    params = {n: p.detach() for n, p in layer.named_parameters() if p.requires_grad}
    got = grad(lambda ps: functional_call(layer, ps, (x,)).sum())(params)
    layer(x).sum().backward()
    assert got.keys() and all(
        assert_rel(n, got[n], p.grad, torch.float64) is not None
        for n, p in layer.named_parameters() if p.requires_grad)
