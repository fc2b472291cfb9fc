"""The op's arithmetic, written once: gate expansion, forward and backward over six primitives.

``forward`` and ``backward`` compute ``y`` and the gradients of one call for a packed ``Plan``
(``plan.py``), calling the six primitives of a backend class passed in (``backends.py``:
``TorchBackend``, ``TritonBackend`` or ``HybridBackend``). Both dispatch paths of ``ops.py`` run
these two functions,
so they compute the same numbers bit for bit: the direct autograd function (plain eager calls) and
the registered custom ops (``torch.compile``/``torch.export``, modes, subclasses).

The gate arithmetic (``expanded_gates``: ``G_E = g[col_adapter] * col_scale``; ``as_dtype``) lives
here too: the backward needs it to rebuild ``S * G_E`` for ``dB``, and ``TorchBackend`` uses it for
its primitives. This module imports no backend (the backend is an argument), so the imports run
one way: ``plan <- op_math <- backends <- autotune <- ops`` (the kernels sit under ``backends``).
The math itself is in docs/MATH.md. The gate gradient's per-adapter sums run in a fixed order
(``adapter_sums``: a gather and a sum, no atomics), so the backward is deterministic on CUDA too.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .plan import Plan, weight_grad_columns


def expanded_gates(gates2d: torch.Tensor, col_adapter: torch.Tensor,
                   col_scale: torch.Tensor) -> torch.Tensor:
    """``G_E`` in ``col_scale``'s dtype (float32; float64 on the float64 path): ``(R_act,)`` for
    per-adapter gates (row stride 0), else ``(N, R_act)``."""
    # index_select takes the int32 table as is (no int64 copy of it per call). An empty batch
    # (N = 0) has no row 0 to broadcast: it takes the (0, R_act) branch.
    if gates2d.shape[0] > 0 and (gates2d.stride(0) == 0 or gates2d.shape[0] == 1):
        return as_dtype(gates2d[0], col_scale.dtype).index_select(0, col_adapter) * col_scale
    return as_dtype(gates2d, col_scale.dtype).index_select(1, col_adapter) * col_scale


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when ``t`` already has that dtype."""
    return t if t.dtype == dtype else t.to(dtype)


def needed_grads(needs_input_grad, has_bias: bool) -> list:
    """``[x, weight, bias, lora_A, lora_B, gates]``: which gradients the backward computes, from
    autograd's ``needs_input_grad`` over the op's first six inputs (a ``None`` bias needs none)."""
    n = needs_input_grad
    return [bool(n[0]), bool(n[1]), bool(has_bias and n[2]), bool(n[3]), bool(n[4]), bool(n[5])]


def forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan: Optional[Plan], be, drop=None):
    """``(y, S)``: ``y`` ``(N, D_out)`` and ``S`` ``(N, R)``, active adapters' S first, then 0.
    ``weight`` ``None`` (and then no ``bias``): the LoRA-only op, ``y = SG @ lora_B^T`` alone.
    ``drop``: ``None`` or ``(p, seed)``, the call's LoRA dropout (``lora_dropout.py``): then
    ``S = drop(x) @ A^T``."""
    n, R = x2d.shape[0], lora_A.shape[0]
    if plan is None:
        y = (F.linear(x2d, weight, bias) if weight is not None      # (None: the LoRA-only op)
             else x2d.new_zeros(n, lora_B.shape[0]))
        return y, x2d.new_zeros(n, R)
    # S is saved in an (N, R) buffer whose first R_act columns are the active adapters' S in plan
    # order (the backward reads that view back: no scatter, no gather). The tail is zeroed so the
    # op's output is deterministic.
    S_buf = x2d.new_empty(n, R)
    if plan.rank != R:
        S_buf[:, plan.rank:].zero_()
    _, SG = be.shrink(x2d, plan.lora_A, gates2d, plan.col_adapter, plan.col_scale,
                      S_out=S_buf[:, :plan.rank], dropout=drop)
    y = be.fused_forward(x2d, weight, bias, SG, plan.lora_B)
    return y, S_buf


def backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan: Optional[Plan],
             grad_adapters: list, be, needs: list, drop=None) -> list:
    """Gradients ``[dx, dW, db, dA, dB, dg_rows]``; an unneeded one is ``None``. ``drop``: the
    forward's ``(p, seed)``: ``dA = dS^T @ drop(x)`` and ``dx``'s adapter term is masked."""
    need_x, need_W, need_b, need_A, need_B, need_g = needs
    dx = dW = db = dA = dB = dg = None
    dS = P = None
    if plan is not None:
        S_act = S[:, :plan.rank]
        if need_x or need_A or need_g:
            dS, P = be.grad_shrink(dy, plan.lora_B, S_act, gates2d, plan.col_adapter,
                                   plan.col_scale, need_g)
        local, full = weight_grad_columns(plan, grad_adapters)
        if local and (need_A or need_B):
            # dB needs SG = S * G_E of the training columns: S and their gate tables go to the
            # backend, which forms SG where it is cheapest (inside the weight-gradient kernel).
            tables = (gates2d, _take(plan.col_adapter, local, dim=0),
                      _take(plan.col_scale, local, dim=0))
            dA_part, dB_part = _weight_grads(be, dy, x2d, _take(dS, local) if need_A else None,
                                             _take(S_act, local) if need_B else None, tables,
                                             lora_A.dtype, drop)
            dA = None if dA_part is None else _place(dA_part, full, lora_A, dim=0)
            dB = None if dB_part is None else _place(dB_part, full, lora_B, dim=1)
        if need_A and dA is None:
            dA = torch.zeros_like(lora_A)
        if need_B and dB is None:
            dB = torch.zeros_like(lora_B)
        if need_g:
            dg = as_dtype(adapter_sums(P, plan, gates2d.shape[1]), gates2d.dtype)
    else:
        if need_g:
            dg = torch.zeros(dy.shape[0], gates2d.shape[1], dtype=gates2d.dtype,
                             device=dy.device)
        if need_A:
            dA = torch.zeros_like(lora_A)
        if need_B:
            dB = torch.zeros_like(lora_B)
    if need_x:
        if plan is None and weight is None:        # the LoRA-only op with no active adapter
            dx = torch.zeros(dy.shape[0], x2d.shape[1], dtype=dy.dtype, device=dy.device)
        elif plan is None:
            dx = be.fused_dx(dy, weight, None, None)
        else:
            dx = be.fused_dx(dy, weight, dS, plan.lora_A, dropout=drop)
    if need_W:
        dW = be.matmul_tn(dy, x2d, weight.dtype)
    if need_b:
        # (summed in fp32 at least: float64 stays float64)
        db = dy.sum(0, dtype=torch.promote_types(dy.dtype, torch.float32)).to(dy.dtype)
    return [dx, dW, db, dA, dB, dg]


def gated_columns(S, gates2d, col_adapter, col_scale, out_dtype):
    """``SG = S * G_E`` in fp32 (float64 on the float64 path), rounded to ``out_dtype``."""
    G_E = expanded_gates(gates2d, col_adapter, col_scale)
    return as_dtype(as_dtype(S, G_E.dtype) * G_E, out_dtype)


def _weight_grads(be, dy, x2d, dS_train, S_train, tables, out_dtype, drop=None):
    """``(dA_part, dB_part)`` = ``(dS^T @ drop(x), dy^T @ (S * G_E))`` over the training
    columns (``tables``: ``gates2d`` and those columns' ``col_adapter``/``col_scale``); ``None``
    for an operand not given. Both from one ``lora_weight_grads`` call (one launch on the
    kernels), which also forms ``S * G_E`` itself."""
    if dS_train is not None and S_train is not None:
        return be.lora_weight_grads(x2d, dy, dS_train, S_train, out_dtype, gates=tables,
                                    dropout=drop)
    SG_train = None if S_train is None else gated_columns(S_train, *tables, dy.dtype)
    if dS_train is not None and drop is not None:
        # dA alone (lora_B frozen) under dropout: rare, so the dropped x is a temporary.
        from .lora_dropout import dropped
        x2d = dropped(x2d, drop[1], drop[0])
    dA = None if dS_train is None else be.matmul_tn(dS_train, x2d, out_dtype)
    dB = None if SG_train is None else be.matmul_tn(dy, SG_train, out_dtype)
    return dA, dB


def adapter_sums(P: torch.Tensor, plan: Plan, K: int) -> torch.Tensor:
    """``(N, K)``: column ``k`` sums ``P``'s columns of adapter ``k`` (0 for inactive adapters).

    In a fixed order on every device: the packed columns of each active adapter are one stretch,
    gathered into an ``(N, K_act, r_max)`` block (narrower adapters padded with a zero column)
    and summed along the last dimension. ``index_add_`` would do it in one call, but on CUDA it
    accumulates with atomics, whose order (and so the rounding) changes from run to run."""
    n = P.shape[0]
    widths = tuple(b - a for a, b in plan.spans)
    if len(set(widths)) == 1:                         # equal ranks: a view, no gather
        sums = P.reshape(n, len(widths), widths[0]).sum(2)
    else:
        padded = torch.cat([P, P.new_zeros(n, 1)], dim=1)
        idx = _gather_index(widths, P.device)
        sums = padded.index_select(1, idx).reshape(n, len(widths), max(widths)).sum(2)
    if len(plan.active) == K:
        return sums
    dg = sums.new_zeros(n, K)
    dg.index_copy_(1, _index(plan.active, P.device), sums)   # distinct columns: no accumulation
    return dg


@functools.lru_cache(maxsize=256)
def _gather_index(widths: tuple, device: torch.device) -> torch.Tensor:
    # Row-major (K_act, r_max): adapter i's packed columns, then the zero column (index R_act).
    r_max, pad, out, pos = max(widths), sum(widths), [], 0
    for w in widths:
        out.extend(range(pos, pos + w))
        out.extend([pad] * (r_max - w))
        pos += w
    return torch.tensor(out, dtype=torch.int64, device=device)


def _span(cols: tuple):
    """``(start, stop)`` when ``cols`` is one contiguous stretch, else ``None``."""
    if cols and cols[-1] - cols[0] + 1 == len(cols):
        return cols[0], cols[-1] + 1
    return None


@functools.lru_cache(maxsize=256)
def _index(cols: tuple, device: torch.device) -> torch.Tensor:
    # Cached per layout: a host-to-device copy per call would be a synchronous transfer (and
    # illegal under CUDA-graph capture). The tensor is only read.
    return torch.tensor(cols, dtype=torch.int64, device=device)


def _take(t: torch.Tensor, cols: tuple, dim: int = 1) -> torch.Tensor:
    """Entries ``cols`` of ``t`` along ``dim`` (columns of a matrix, entries of a per-column
    table with ``dim=0``): a view for one stretch, a gather otherwise."""
    span = _span(cols)
    if span is not None:
        return t.narrow(dim, span[0], span[1] - span[0])
    return t.index_select(dim, _index(cols, t.device))


def _place(grad_part: torch.Tensor, cols: tuple, like: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of ``like`` whose slices ``cols`` along ``dim`` are ``grad_part``, else 0."""
    if len(cols) == like.shape[dim] and _span(cols) is not None:
        return grad_part
    full = grad_part.new_zeros(like.shape)
    span = _span(cols)
    if span is not None:
        full.narrow(dim, span[0], span[1] - span[0]).copy_(grad_part)
    elif cols:
        full.index_copy_(dim, _index(cols, like.device), grad_part)
    return full
