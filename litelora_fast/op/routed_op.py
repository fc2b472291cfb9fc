"""The LoRA update of a one-hot routed batch, grouped by adapter: each row pays for its own
adapter only (``llf.route``'s fast path).

With per-row one-hot gates the packed op (``gated_lora_linear``) runs every row through the whole
bank and multiplies the other adapters' columns by 0: ``K`` times the adapter work. Here the rows
of adapter ``k`` (a slice of consecutive rows, or an index list) go through ``A_k`` and ``B_k``
alone, so a batch of ``K`` tenants costs one adapter's work in total:

    S_k  = x[rows_k] @ A_k^T * c_k            (n_k, r_k)   c_k = routing weight * alpha_k / r_k
    y[rows_k] += S_k @ B_k^T

and in the backward, for ``dy``:

    dB_k = dy[rows_k]^T @ S_k,   dS_k = dy[rows_k] @ B_k * c_k,
    dA_k = dS_k^T @ x[rows_k],   dx[rows_k] += dS_k @ A_k   (nothing on rows routed to no adapter)

(zeros for a trainable adapter that no row uses, as the packed op gives, and as DDP needs).

Two entry points:

- :func:`routed_linear`: base ``x @ W^T + b`` and the update in one autograd node, for a plain
  weight (the adapters' ``dx`` is added into the base's ``dx`` in place: no second ``N x D_in``
  tensor, no autograd accumulation);
- :func:`routed_lora_`: the update added in place into a base output computed elsewhere (any base
  module: quantized, ``Conv1D``).

The adapter arithmetic runs in the adapters' dtype (fp32 adapters on a bf16 base compute in fp32,
as PEFT does) with autocast off, cast to the output's dtype once per group. Saved for backward:
``x`` (held by the caller anyway) and each ``S_k`` (``N x r`` in all).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Rows = Union[slice, torch.Tensor]          # consecutive rows, or a LongTensor of row indices
Segment = Tuple[Rows, int, float]          # (rows, adapter index in the bank, c_k)


def _take(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _add_product(out: torch.Tensor, rows: Rows, a: torch.Tensor, b: torch.Tensor,
                 accumulate: bool) -> None:
    """``out[rows] (+)= a @ b`` (``=`` when not ``accumulate``: each row is in one group)."""
    if isinstance(rows, slice) and out.dtype == a.dtype:
        if accumulate:
            out[rows].addmm_(a, b)
        else:
            torch.mm(a, b, out=out[rows])
        return
    value = (a @ b).to(out.dtype)
    if isinstance(rows, slice):
        out[rows].add_(value) if accumulate else out[rows].copy_(value)
    elif accumulate:
        out.index_add_(0, rows, value)
    else:
        out.index_copy_(0, rows, value)


def _covered(segments, n: int) -> bool:
    return sum((r.stop - r.start) if isinstance(r, slice) else r.numel()
               for r, _, _ in segments) == n


def _update_(y2d, x2d, segments, A, B) -> list:
    """Add every group's update to ``y2d`` in place; return the ``S_k`` (scaled) to save."""
    saved = []
    with torch.autocast(x2d.device.type, enabled=False):
        for rows, k, c in segments:
            s = (_take(x2d, rows).to(A[k].dtype) @ A[k].t()).mul_(c)
            _add_product(y2d, rows, s, B[k].t(), accumulate=True)
            saved.append(s)
    return saved


def _update_backward(dy, x2d, segments, A, B, S, need_A, need_B, dx, accumulate: bool):
    """``(dA, dB)`` lists; adds (or writes) the adapters' input gradient into ``dx`` if given."""
    dA, dB = [None] * len(A), [None] * len(B)
    with torch.autocast(dy.device.type, enabled=False):
        for (rows, k, c), s in zip(segments, S):
            g = _take(dy, rows).to(B[k].dtype)
            if need_B[k]:
                dB[k] = g.t() @ s if dB[k] is None else dB[k].addmm_(g.t(), s)
            if need_A[k] or dx is not None:
                ds = (g @ B[k]).mul_(c)
                if need_A[k]:
                    xs = _take(x2d, rows).to(A[k].dtype)
                    dA[k] = ds.t() @ xs if dA[k] is None else dA[k].addmm_(ds.t(), xs)
                if dx is not None:
                    _add_product(dx, rows, ds, A[k], accumulate)
    # A trainable adapter no row was routed to gets a zero gradient, not none: DDP waits for a
    # gradient of every Parameter in the graph (another rank's batch may route rows to it).
    dA = [torch.zeros_like(a) if need and d is None else d for a, d, need in zip(A, dA, need_A)]
    dB = [torch.zeros_like(b) if need and d is None else d for b, d, need in zip(B, dB, need_B)]
    return dA, dB


class _RoutedLoRA(torch.autograd.Function):
    """In place on a given base output ``y2d``."""

    @staticmethod
    def forward(ctx, y2d, x2d, segments, *bank):
        K = len(bank) // 2
        saved = _update_(y2d, x2d, segments, bank[:K], bank[K:])
        ctx.mark_dirty(y2d)
        ctx.segments, ctx.K = segments, K
        ctx.save_for_backward(x2d, *bank, *saved)
        return y2d

    @staticmethod
    def backward(ctx, dy):
        x2d, *rest = ctx.saved_tensors
        K, segments = ctx.K, ctx.segments
        dx = None
        if ctx.needs_input_grad[1]:
            # Rows routed to no adapter get no adapter gradient.
            dx = (torch.empty_like if _covered(segments, x2d.shape[0]) else torch.zeros_like)(x2d)
        dA, dB = _update_backward(dy, x2d, segments, rest[:K], rest[K:2 * K], rest[2 * K:],
                                  ctx.needs_input_grad[3:3 + K],
                                  ctx.needs_input_grad[3 + K:3 + 2 * K], dx, accumulate=False)
        return (dy, dx, None, *dA, *dB)


class _RoutedLinear(torch.autograd.Function):
    """``x @ W^T + b`` plus the routed update, one node. ``x_lora``: the adapters' input when it
    differs from ``x`` (LoRA dropout), else ``None``."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, x_lora, segments, *bank):
        K = len(bank) // 2
        y2d = F.linear(x2d, weight, bias)
        xl = x2d if x_lora is None else x_lora
        saved = _update_(y2d, xl, segments, bank[:K], bank[K:])
        ctx.segments, ctx.K, ctx.has_bias, ctx.own_x = segments, K, bias is not None, x_lora is None
        ctx.save_for_backward(x2d, weight, xl, *bank, *saved)
        return y2d

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, xl, *rest = ctx.saved_tensors
        K, segments = ctx.K, ctx.segments
        need = ctx.needs_input_grad
        dx = dy @ weight if need[0] else None
        dxl = None
        if ctx.own_x:
            target, accumulate = dx, True
        else:
            if need[3]:
                dxl = (torch.empty_like if _covered(segments, xl.shape[0]) else torch.zeros_like
                       )(xl)
            target, accumulate = dxl, False
        dA, dB = _update_backward(dy, xl, segments, rest[:K], rest[K:2 * K], rest[2 * K:],
                                  need[5:5 + K], need[5 + K:5 + 2 * K], target, accumulate)
        dW = dy.t() @ x2d if need[1] else None
        db = dy.sum(0) if ctx.has_bias and need[2] else None
        return (dx, dW, db, dxl, None, *dA, *dB)


def routed_lora_(y2d: torch.Tensor, x2d: torch.Tensor, segments: Sequence[Segment],
                 lora_A: Sequence[torch.Tensor], lora_B: Sequence[torch.Tensor]) -> torch.Tensor:
    """Add each group's adapter update to ``y2d`` ``(N, D_out)`` in place and return it
    (differentiable in ``y2d``, ``x2d`` ``(N, D_in)`` and the adapters). ``segments``: the
    ``(rows, k, c_k)`` groups, disjoint rows; rows in no group keep the base output."""
    return _RoutedLoRA.apply(y2d, x2d, list(segments), *lora_A, *lora_B)


def routed_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  segments: Sequence[Segment], lora_A: Sequence[torch.Tensor],
                  lora_B: Sequence[torch.Tensor],
                  x_lora: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x2d @ weight^T + bias`` plus each group's adapter update, ``(N, D_out)``; ``x_lora``: the
    adapters' input (a dropped-out ``x2d``), default ``x2d``. Differentiable in every tensor."""
    return _RoutedLinear.apply(x2d, weight, bias, x_lora, list(segments), *lora_A, *lora_B)
