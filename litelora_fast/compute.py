"""The op's forward and backward math for one plan, over a backend's five primitives.

Both dispatch paths run these two functions, so they compute the same numbers: the registered
custom ops in ``ops.py`` (which rebuild the plan from their arguments) and the eager autograd
function in ``eager.py`` (which plans once in the forward and re-packs the same active set in
the backward).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import backends
from .plan import Plan, weight_grad_columns


def forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan: Optional[Plan], be):
    """``(y, S)``: ``y`` ``(N, D_out)`` and ``S`` ``(N, R)``, active adapters' S first, then 0."""
    n, R = x2d.shape[0], lora_A.shape[0]
    if plan is None:
        return F.linear(x2d, weight, bias), x2d.new_zeros(n, R)
    # S is saved in an (N, R) buffer whose first R_act columns are the active adapters' S in plan
    # order (the backward reads that view back: no scatter, no gather). The tail is zeroed so the
    # op's output is deterministic.
    S_buf = x2d.new_empty(n, R)
    if plan.rank != R:
        S_buf[:, plan.rank:].zero_()
    _, SG = be.shrink(x2d, plan.lora_A, gates2d, plan.col_adapter, plan.col_scale,
                      S_out=S_buf[:, :plan.rank])
    y = be.fused_forward(x2d, weight, bias, SG, plan.lora_B)
    return y, S_buf


def backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan: Optional[Plan],
             grad_adapters: list, be, needs: list) -> list:
    """Gradients ``[dx, dW, db, dA, dB, dg_rows]``; an unneeded one is ``None``."""
    need_x, need_W, need_b, need_A, need_B, need_g = needs
    dx = dW = db = dA = dB = dg = None
    dS = P = None
    if plan is not None:
        S_act = S[:, :plan.rank]
        if need_x or need_A or need_g:
            dS, P = be.grad_shrink(dy, plan.lora_B, S_act, gates2d, plan.col_adapter,
                                   plan.col_scale, need_g)
        local, full = weight_grad_columns(plan, grad_adapters)
        if need_A and not local:
            dA = torch.zeros_like(lora_A)
        elif need_A:
            dA_part = be.matmul_tn(_take(dS, local), x2d, lora_A.dtype)
            dA = _place(dA_part, full, lora_A, dim=0)
        if need_B and not local:
            dB = torch.zeros_like(lora_B)
        elif need_B:
            G_E = backends.expanded_gates(gates2d, plan.col_adapter, plan.col_scale)
            SG = backends.as_dtype(backends.as_dtype(S_act, G_E.dtype) * G_E, dy.dtype)
            dB = _place(be.matmul_tn(dy, _take(SG, local), lora_B.dtype), full, lora_B, dim=1)
        if need_g:
            dg = torch.zeros(dy.shape[0], gates2d.shape[1], dtype=P.dtype, device=dy.device)
            dg.index_add_(1, plan.col_adapter, P)
            dg = backends.as_dtype(dg, gates2d.dtype)
    elif need_g:
        dg = torch.zeros(dy.shape[0], gates2d.shape[1], dtype=gates2d.dtype, device=dy.device)
    if need_x:
        if plan is None:
            dx = be.fused_dx(dy, weight, None, None)
        else:
            dx = be.fused_dx(dy, weight, dS, plan.lora_A)
    if need_W:
        dW = be.matmul_tn(dy, x2d, weight.dtype)
    if need_b:
        db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
    if need_A and plan is None:
        dA = torch.zeros_like(lora_A)
    if need_B and plan is None:
        dB = torch.zeros_like(lora_B)
    return [dx, dW, db, dA, dB, dg]


def _span(cols: list):
    """``(start, stop)`` when ``cols`` is one contiguous stretch, else ``None``."""
    if cols and cols[-1] - cols[0] + 1 == len(cols):
        return cols[0], cols[-1] + 1
    return None


def _take(t: torch.Tensor, cols: list) -> torch.Tensor:
    """Columns ``cols`` of ``t``: a view for one stretch, a gather otherwise."""
    span = _span(cols)
    if span is not None:
        return t[:, span[0]:span[1]]
    return t.index_select(1, torch.tensor(cols, device=t.device))


def _place(grad_part: torch.Tensor, cols: list, like: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of ``like`` whose slices ``cols`` along ``dim`` are ``grad_part``, else 0."""
    if len(cols) == like.shape[dim] and _span(cols) is not None:
        return grad_part
    full = grad_part.new_zeros(like.shape)
    span = _span(cols)
    if span is not None:
        full.narrow(dim, span[0], span[1] - span[0]).copy_(grad_part)
    elif cols:
        full.index_copy_(dim, torch.tensor(cols, device=like.device), grad_part)
    return full
