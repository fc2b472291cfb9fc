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
    dA_k = dS_k^T @ x[rows_k],   dx[rows_k] = dS_k @ A_k   (0 on rows routed to no adapter)

``y`` is the base output, updated in place (``mark_dirty``): no second ``N x D_out`` tensor.
The adapter arithmetic runs in the adapters' dtype (fp32 adapters on a bf16 base compute in
fp32, as PEFT does), with autocast off, and is cast back to ``y``'s dtype once per group.
Saved for backward: ``x`` (a view the caller holds anyway) and each ``S_k`` (``N x r`` in all).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

Rows = Union[slice, torch.Tensor]          # consecutive rows, or a LongTensor of row indices
Segment = Tuple[Rows, int, float]          # (rows, adapter index in the bank, c_k)


def _take(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _put(out: torch.Tensor, rows: Rows, value: torch.Tensor) -> None:
    """``out[rows] = value`` (``dx``: each row belongs to one group)."""
    if isinstance(rows, slice):
        out[rows].copy_(value)
    else:
        out.index_copy_(0, rows, value.to(out.dtype))


class _RoutedLoRA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y2d, x2d, segments, *bank):
        K = len(bank) // 2
        A, B = bank[:K], bank[K:]
        saved = []
        with torch.autocast(x2d.device.type, enabled=False):
            for rows, k, c in segments:
                xs = _take(x2d, rows).to(A[k].dtype)
                s = (xs @ A[k].t()).mul_(c)
                if isinstance(rows, slice) and y2d.dtype == B[k].dtype:
                    y2d[rows].addmm_(s, B[k].t())
                elif isinstance(rows, slice):
                    y2d[rows].add_((s @ B[k].t()).to(y2d.dtype))
                else:
                    y2d.index_add_(0, rows, (s @ B[k].t()).to(y2d.dtype))
                saved.append(s)
        ctx.mark_dirty(y2d)
        ctx.segments = segments
        ctx.K = K
        ctx.save_for_backward(x2d, *bank, *saved)
        return y2d

    @staticmethod
    def backward(ctx, dy):
        x2d, *rest = ctx.saved_tensors
        K, segments = ctx.K, ctx.segments
        A, B, S = rest[:K], rest[K:2 * K], rest[2 * K:]
        need_x = ctx.needs_input_grad[1]
        need_A = ctx.needs_input_grad[3:3 + K]
        need_B = ctx.needs_input_grad[3 + K:3 + 2 * K]
        dA, dB = [None] * K, [None] * K
        dx = None
        if need_x:
            covered = sum((r.stop - r.start) if isinstance(r, slice) else r.numel()
                          for r, _, _ in segments)
            # Rows routed to no adapter get no adapter gradient.
            dx = (torch.empty_like(x2d) if covered == x2d.shape[0] else torch.zeros_like(x2d))
        with torch.autocast(dy.device.type, enabled=False):
            for (rows, k, c), s in zip(segments, S):
                g = _take(dy, rows).to(B[k].dtype)
                if need_B[k]:
                    dB[k] = g.t() @ s if dB[k] is None else dB[k].addmm_(g.t(), s)
                if need_A[k] or need_x:
                    ds = (g @ B[k]).mul_(c)
                    if need_A[k]:
                        xs = _take(x2d, rows).to(A[k].dtype)
                        dA[k] = ds.t() @ xs if dA[k] is None else dA[k].addmm_(ds.t(), xs)
                    if need_x:
                        _put(dx, rows, (ds @ A[k]).to(dx.dtype))
        return (dy, dx, None, *dA, *dB)


def routed_lora_(y2d: torch.Tensor, x2d: torch.Tensor, segments: Sequence[Segment],
                 lora_A: Sequence[torch.Tensor], lora_B: Sequence[torch.Tensor]) -> torch.Tensor:
    """Add each group's adapter update to ``y2d`` ``(N, D_out)`` in place and return it
    (differentiable in ``y2d``, ``x2d`` ``(N, D_in)`` and the adapters). ``segments``: the
    ``(rows, k, c_k)`` groups, disjoint rows; rows in no group keep the base output."""
    return _RoutedLoRA.apply(y2d, x2d, list(segments), *lora_A, *lora_B)
