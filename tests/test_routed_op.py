"""The grouped op behind ``llf.route`` (``routed_op``) against a float64 reference: rows in slices
and in index lists, one adapter in several groups, rows routed to no adapter, a separate adapter
input (LoRA dropout), a trainable base; gradients by ``gradcheck``; fp32 adapters beside a bf16
base output."""
import pytest
import torch

from litelora_fast.op.routed_op import routed_linear, routed_lora_
from numerics import assert_rel

F64 = torch.float64


def bank(ranks, d_in, d_out, dtype=F64):
    A = [torch.randn(r, d_in, dtype=dtype, requires_grad=True) for r in ranks]
    B = [torch.randn(d_out, r, dtype=dtype, requires_grad=True) for r in ranks]
    return A, B


def reference(x, W, b, groups, A, B, x_lora=None):
    xl = x if x_lora is None else x_lora
    y = x @ W.t() + (0 if b is None else b)
    delta = torch.zeros_like(y)
    for rows, k, c in groups:
        idx = torch.arange(x.shape[0])[rows] if isinstance(rows, slice) else rows
        mask = torch.zeros(x.shape[0], 1, dtype=x.dtype)
        mask[idx] = 1.0
        delta = delta + mask * (c * (xl @ A[k].t()) @ B[k].t())
    return y + delta


GROUPS = {
    "slices": lambda: [(slice(0, 3), 1, 0.5), (slice(3, 7), 0, 2.0)],
    "index": lambda: [(torch.tensor([0, 4, 5]), 1, 0.5), (torch.tensor([1, 2, 3, 6]), 0, -1.5)],
    "repeated_adapter": lambda: [(slice(0, 2), 0, 1.0), (slice(2, 5), 1, 0.25),
                                 (torch.tensor([5, 6]), 0, 3.0)],
    "uncovered_rows": lambda: [(slice(1, 3), 1, 1.0), (torch.tensor([5]), 0, 1.0)],
    "no_group": lambda: [],
}


@pytest.mark.parametrize("case", sorted(GROUPS))
@pytest.mark.parametrize("has_bias", [True, False])
def test_routed_linear_against_float64(case, has_bias, seed):
    x = torch.randn(7, 5, dtype=F64, requires_grad=True)
    W = torch.randn(6, 5, dtype=F64)
    b = torch.randn(6, dtype=F64) if has_bias else None
    A, B = bank([3, 2], 5, 6)
    groups = GROUPS[case]()
    y = routed_linear(x, W, b, groups, A, B)
    ref = reference(x, W, b, groups, A, B)
    assert_rel("y", y, ref, F64)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, *A, *B], dy)
    # (An adapter no group uses: zeros from the op, absent from the reference's graph.)
    want = torch.autograd.grad(ref, [x, *A, *B], dy, allow_unused=True, materialize_grads=True)
    for name, g, w in zip(["x", "A0", "A1", "B0", "B1"], got, want):
        assert_rel(f"d{name}", g, w, F64)


def test_gradcheck_with_dropped_input_and_trainable_base(seed):
    x = torch.randn(5, 4, dtype=F64, requires_grad=True)
    x_lora = (x * torch.tensor([0.0, 2.0, 2.0, 0.0], dtype=F64))   # a dropout mask, scaled
    W = torch.randn(3, 4, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    A, B = bank([2, 1], 4, 3)
    groups = [(slice(0, 2), 1, 0.7), (torch.tensor([2, 4]), 0, 1.3)]
    y = routed_linear(x, W, b, groups, A, B, x_lora=x_lora)
    assert_rel("y", y, reference(x, W, b, groups, A, B, x_lora), F64)
    assert torch.autograd.gradcheck(
        lambda x, W, b, a0, a1, b0, b1: routed_linear(
            x, W, b, groups, [a0, a1], [b0, b1],
            x_lora=x * torch.tensor([0.0, 2.0, 2.0, 0.0], dtype=F64)),
        (x, W, b, *A, *B))


def test_unrouted_trainable_adapter_gets_a_zero_gradient(seed):
    x = torch.randn(4, 3, dtype=F64)
    A, B = bank([2, 2], 3, 2)
    y = routed_linear(x, torch.randn(2, 3, dtype=F64), None, [(slice(0, 4), 0, 1.0)], A, B)
    y.sum().backward()
    assert torch.equal(A[1].grad, torch.zeros_like(A[1])) and B[1].grad is not None
    assert A[0].grad.abs().sum() > 0


def test_fp32_adapters_on_a_bf16_base_output(seed):
    x = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    W = torch.randn(5, 8, dtype=torch.bfloat16)
    A, B = bank([4, 2], 8, 5, dtype=torch.float32)
    groups = [(slice(0, 4), 0, 0.5), (torch.tensor([4, 5]), 1, 2.0)]
    y = routed_lora_(x @ W.t(), x, groups, A, B)
    assert y.dtype == torch.bfloat16
    x64 = x.detach().double().requires_grad_(True)
    A64 = [a.detach().double().requires_grad_(True) for a in A]
    B64 = [b.detach().double().requires_grad_(True) for b in B]
    ref = reference(x64, W.double(), None, groups, A64, B64)
    assert_rel("y", y, ref, torch.bfloat16)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(y, [x, *A, *B], dy.to(torch.bfloat16))
    want = torch.autograd.grad(ref, [x64, *A64, *B64], dy)
    for name, g, w in zip(["x", "A0", "A1", "B0", "B1"], got, want):
        assert_rel(f"d{name}", g, w, torch.bfloat16)
