"""Bad inputs to the public op raise clear errors that name the argument and the shapes."""
import pytest
import torch

import litelora_fast as llf
from litelora_fast.op.reference import gated_lora_linear_ref


def _args(n=5, d_in=8, d_out=6, ranks=(2, 3)):
    R, K = sum(ranks), len(ranks)
    return dict(x=torch.randn(n, d_in), weight=torch.randn(d_out, d_in), bias=torch.randn(d_out),
                lora_A=torch.randn(R, d_in), lora_B=torch.randn(d_out, R), gates=torch.rand(K),
                rank_offsets=[0, ranks[0], R], scaling=None)


BAD = {
    "x-width": (dict(x=torch.randn(5, 7)), ValueError, r"x's last dimension.*D_in = 8.*\(5, 7\)"),
    "x-scalar": (dict(x=torch.tensor(1.0)), ValueError, r"x must have at least 1 dimension"),
    "x-int": (dict(x=torch.ones(5, 8, dtype=torch.int64)), TypeError, r"x must be a floating"),
    "x-not-tensor": (dict(x=[[1.0] * 8]), TypeError, r"x must be a torch.Tensor"),
    "weight-1d": (dict(weight=torch.randn(8)), ValueError, r"weight must be 2-D.*\(8,\)"),
    "bias-shape": (dict(bias=torch.randn(7)), ValueError, r"bias must have shape \(D_out,\) = \(6,\).*\(7,\)"),
    "A-width": (dict(lora_A=torch.randn(5, 9)), ValueError, r"lora_A must have shape \(R, D_in\).*\(5, 9\)"),
    "B-shape": (dict(lora_B=torch.randn(6, 4)), ValueError, r"lora_B must have shape \(D_out, R\) = \(6, 5\).*\(6, 4\)"),
    "B-transposed": (dict(lora_B=torch.randn(5, 6)), ValueError, r"lora_B must have shape"),
    "dtype-mix": (dict(lora_A=torch.randn(5, 8, dtype=torch.float64)), TypeError, r"lora_A must have x's dtype"),
    "gates-int": (dict(gates=torch.ones(2, dtype=torch.int64)), TypeError, r"gates must be a floating"),
    "gates-scalar": (dict(gates=torch.tensor(1.0)), ValueError, r"gates must have shape \(K,\).*scalar"),
    "gates-rows": (dict(gates=torch.rand(4, 2)), ValueError, r"gates must have shape \(K,\).*\(5, 'K'\).*\(4, 2\)"),
    "offsets-len": (dict(rank_offsets=[0, 5]), ValueError, r"rank_offsets must have K \+ 1 = 3 entries"),
    "offsets-end": (dict(rank_offsets=[0, 2, 4]), ValueError, r"end at R = 5"),
    "offsets-decreasing": (dict(rank_offsets=[0, 4, 3, 5], gates=torch.rand(3)), ValueError, r"non-decreasing"),
    "offsets-float": (dict(rank_offsets=torch.tensor([0.0, 2.0, 5.0])), TypeError, r"integer tensor"),
    "offsets-none-indivisible": (dict(rank_offsets=None), ValueError, r"R = 5.*not divisible by K = 2"),
    "scaling-len": (dict(scaling=[1.0, 2.0, 3.0]), ValueError, r"scaling must have K = 2 entries"),
    "scaling-shape": (dict(scaling=torch.ones(3)), ValueError, r"scaling must have shape \(K,\) = \(2,\)"),
    "scaling-grad": (dict(scaling=torch.ones(2, requires_grad=True)), TypeError, r"must not require grad"),
    "scaling-str": (dict(scaling="big"), TypeError, r"scaling must be a float"),
    "device": (dict(gates=torch.rand(2, device="meta")), ValueError, r"gates is on meta but x is on cpu"),
}


@pytest.mark.parametrize("fn", [llf.gated_lora_linear, gated_lora_linear_ref], ids=["op", "ref"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_bad_input_raises_a_clear_error(bad, fn):
    override, exc, pattern = BAD[bad]
    args = {**_args(), **override}
    with pytest.raises(exc, match=pattern):
        fn(**args)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be"):
        llf.gated_lora_linear(**_args(), backend="cuda")


def test_no_adapters_is_the_base_linear():
    a = _args()
    y = llf.gated_lora_linear(a["x"], a["weight"], a["bias"], torch.empty(0, 8),
                              torch.empty(6, 0), torch.empty(0))
    assert torch.equal(y, torch.nn.functional.linear(a["x"], a["weight"], a["bias"]))
