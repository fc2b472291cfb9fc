"""Shared inputs for tests of the public op: named cases, random tensors, the float64 oracle.

A case fixes the shapes (rows, widths, adapter ranks) and the gate kind; ``make_inputs`` draws
fresh random tensors for it from the global generator (seeded per test by the ``seed`` fixture).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from litelora_fast.op.reference import gated_lora_linear_ref
from litelora_fast.op.validation import normalize_scaling
from numerics import assert_rel

ARG_NAMES = ("x", "weight", "bias", "lora_A", "lora_B", "gates")


@dataclass
class Case:
    lead: tuple                       # x's leading dims
    d_in: int
    d_out: int
    ranks: list                       # r_k per adapter (ragged allowed, 0 allowed)
    per_row: bool = False
    bias: bool = True
    zero_gates: tuple = ()            # adapters whose gate is exactly 0
    strided_x: bool = False           # x is a non-contiguous view
    scaling: Optional[list] = None
    trainable: dict = field(default_factory=lambda: dict.fromkeys(ARG_NAMES, True))
    base: bool = True                 # False: weight = bias = None, the LoRA-only op

    @property
    def rank_offsets(self) -> list:
        out = [0]
        for r in self.ranks:
            out.append(out[-1] + r)
        return out


def case_params(cases: dict) -> list:
    return [pytest.param(c, id=name) for name, c in cases.items()]


# Shapes named for their purpose: odd sizes, one row, one adapter, ragged ranks, 3-D input.
CASES = {
    "N1-K1": Case(lead=(1,), d_in=13, d_out=7, ranks=[4]),
    "N37-K3-ragged": Case(lead=(37,), d_in=29, d_out=19, ranks=[3, 1, 6], scaling=[2.0, 0.5, 1.5]),
    "3d-perrow-K4": Case(lead=(3, 11), d_in=24, d_out=17, ranks=[2, 5, 2, 3], per_row=True),
    "zero-gates": Case(lead=(20,), d_in=16, d_out=12, ranks=[4, 4, 4, 4], zero_gates=(1, 2)),
    "zero-gates-perrow-nobias": Case(lead=(2, 9), d_in=10, d_out=21, ranks=[3, 2, 4],
                                     per_row=True, bias=False, zero_gates=(0,)),
    "strided-x": Case(lead=(15,), d_in=18, d_out=9, ranks=[2, 2], strided_x=True),
    "rank0-adapter": Case(lead=(8,), d_in=12, d_out=10, ranks=[3, 0, 2]),
    "Din1": Case(lead=(6,), d_in=1, d_out=5, ranks=[1, 2]),
}


def make_inputs(case: Case, dtype=torch.float32, device="cpu") -> dict:
    """Fresh random tensors for ``case`` (leaves, with requires_grad as the case says)."""
    K, R = len(case.ranks), sum(case.ranks)
    t = {}
    x = torch.randn(*case.lead, case.d_in * (2 if case.strided_x else 1), dtype=dtype,
                    device=device)
    t["x"] = x[..., ::2] if case.strided_x else x
    t["weight"] = torch.randn(case.d_out, case.d_in, dtype=dtype, device=device) / case.d_in ** 0.5
    t["bias"] = torch.randn(case.d_out, dtype=dtype, device=device) if case.bias else None
    if not case.base:
        t["weight"] = t["bias"] = None
    t["lora_A"] = torch.randn(R, case.d_in, dtype=dtype, device=device) / case.d_in ** 0.5
    t["lora_B"] = torch.randn(case.d_out, R, dtype=dtype, device=device)
    gshape = (*case.lead, K) if case.per_row else (K,)
    g = torch.rand(gshape, dtype=dtype, device=device) + 0.25
    for k in case.zero_gates:
        g[..., k] = 0.0
    t["gates"] = g
    for name in ARG_NAMES:
        if t[name] is not None and case.trainable.get(name, False):
            if name == "x" and case.strided_x:
                base = x.detach().requires_grad_()
                t["x"] = base[..., ::2]
                t["_x_leaf"] = base
            else:
                t[name] = t[name].detach().requires_grad_()
    return t


def call(fn, case: Case, t: dict):
    return fn(t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["gates"],
              case.rank_offsets, case.scaling)


def leaves(t: dict) -> dict:
    """The tensors whose .grad the test compares (the strided x's base stands for x)."""
    out = {}
    for name in ARG_NAMES:
        leaf = t.get("_x_leaf") if name == "x" and "_x_leaf" in t else t[name]
        if leaf is not None and leaf.requires_grad:
            out[name] = leaf
    return out


def oracle(case: Case, t: dict, dy: torch.Tensor, **ref_kwargs):
    """Float64 reference output and gradients for the same draw (``ref_kwargs``, e.g.
    ``dropout``/``dropout_mask``, go to the reference)."""
    t64 = {}
    for name in ARG_NAMES:
        v = t["_x_leaf"] if name == "x" and "_x_leaf" in t else t[name]
        if v is None:
            t64[name] = None
            continue
        v = v.detach().double().requires_grad_(v.requires_grad)
        t64[name] = v
    x_leaf = t64["x"]
    if "_x_leaf" in t:
        t64["_x_leaf"] = x_leaf
        t64["x"] = x_leaf[..., ::2]
    y = call(lambda *a: gated_lora_linear_ref(*a, **ref_kwargs), case, t64)
    y.backward(dy.double())
    # (An input the reference never touches, e.g. lora_A with K = 0, has gradient zero.)
    grads = {name: torch.zeros_like(v) if v.grad is None else v.grad
             for name, v in leaves(t64).items()}
    return y.detach(), grads


def gate_grad_scale(x, lora_A, lora_B, dy, rank_offsets, scaling, per_row: bool) -> torch.Tensor:
    """The gate gradient's sums taken over absolute values, in float64.

    ``dg_k = s_k * sum_{rows, j in k} (dy B)[n, j] * (x A^T)[n, j]`` is an inner product whose
    terms have random signs: it can cancel to far below its terms, and then fp32 rounding (about
    ``1e-7 * sum |terms|``) is large *relative to dg*. This scale, ``s_k * sum |terms|``, is what
    the rounding is relative to; a wrong formula still misses by O(1) of it."""
    d_in, d_out = lora_A.shape[1], lora_B.shape[0]
    n = math.prod(x.shape[:-1])                       # rows (reshape(-1, 0) cannot infer it)
    S = x.detach().double().reshape(n, d_in) @ lora_A.detach().double().t()
    dS_g = dy.detach().double().reshape(n, d_out) @ lora_B.detach().double()
    terms = (S * dS_g).abs()
    K = len(rank_offsets) - 1
    if K == 0:
        return torch.zeros(*x.shape[:-1], 0, dtype=torch.float64) if per_row else \
            torch.zeros(0, dtype=torch.float64)
    scales = normalize_scaling(scaling, K)
    out = torch.stack([terms[:, rank_offsets[k]:rank_offsets[k + 1]].sum(1) * abs(scales[k])
                       for k in range(K)], dim=1)
    return out.reshape(*x.shape[:-1], K) if per_row else out.sum(0)


def check_against_oracle(case: Case, t: dict, y: torch.Tensor, dtype: torch.dtype,
                         **ref_kwargs) -> None:
    """Backpropagate a random ``dy`` through ``y`` and compare output and grads with float64,
    within ``numerics.TOL[dtype]`` (gate gradients against their cancellation-aware scale).
    ``ref_kwargs`` go to the reference: with LoRA ``dropout``/``dropout_mask`` (x's shape) the
    gate gradient's terms are those of the dropped ``x``."""
    dy = torch.randn_like(y)
    y_ref, g_ref = oracle(case, t, dy, **ref_kwargs)
    assert_rel("y", y, y_ref, dtype)
    if not leaves(t):
        return
    y.backward(dy)
    x_lora = t["x"].detach()
    if ref_kwargs.get("dropout_mask") is not None:
        x_lora = x_lora * ref_kwargs["dropout_mask"] / (1 - ref_kwargs["dropout"])
    for name, leaf in leaves(t).items():
        assert leaf.grad is not None, name
        scale = None
        if name == "gates":
            scale = gate_grad_scale(x_lora, t["lora_A"], t["lora_B"], dy, case.rank_offsets,
                                    case.scaling, case.per_row)
        assert_rel(f"d{name}", leaf.grad, g_ref[name], dtype, scale=scale)
