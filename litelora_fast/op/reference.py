"""The unfused reference: a loop over adapters, the way PEFT computes LoRA.

``gated_lora_linear_ref`` is the numerics oracle of the tests and the naive peer of the benchmarks.
It uses only autograd-visible PyTorch ops, so its backward is PyTorch's own (and its activation
memory is what a plain implementation pays: per adapter, the shrink output and, when the gates
train, the full ``(N, D_out)`` expansion).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .lora_dropout import check_p
from .validation import RankOffsets, Scaling, validate


def gated_lora_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias, lora_A: torch.Tensor,
                          lora_B: torch.Tensor, gates: torch.Tensor,
                          rank_offsets: RankOffsets = None, scaling: Scaling = None, *,
                          dropout: float = 0.0,
                          dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``y = x @ W^T + b + sum_k g_k * s_k * (drop(x) @ A_k^T) @ B_k^T``, one adapter at a time.

    Same arguments and checks as :func:`litelora_fast.gated_lora_linear` (``weight=None``: the
    adapter term alone). LoRA ``dropout``
    applies to the adapters' input only, ``drop(x) = x * keep / (1 - p)``; ``dropout_mask`` (bool,
    ``x``'s shape, e.g. from ``lora_dropout.recorded_masks``) fixes ``keep``, else it is drawn
    with ``torch.rand``.
    """
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    # weight None: the LoRA-only op, the adapter term alone.
    y = F.linear(x, weight, bias) if weight is not None else x.new_zeros(
        *x.shape[:-1], lora_B.shape[0])
    x_lora = x
    if dropout_mask is not None or check_p(dropout) > 0:
        keep = torch.rand_like(x) >= dropout if dropout_mask is None else dropout_mask
        if tuple(keep.shape) != tuple(x.shape):
            raise ValueError(f"dropout_mask: expected x's shape {tuple(x.shape)}, got "
                             f"{tuple(keep.shape)}")
        x_lora = x * keep.to(x.dtype) * (1.0 / (1.0 - dropout))
    # A float32 bank beside a half-precision x runs in float32, as PEFT runs it: x is cast to the
    # adapters' dtype and each update back to y's.
    x_lora = x_lora.to(lora_A.dtype)
    for k, s_k in enumerate(p.scaling):
        lo, hi = p.rank_offsets[k], p.rank_offsets[k + 1]
        if hi == lo:
            continue
        update = F.linear(F.linear(x_lora, lora_A[lo:hi]), lora_B[:, lo:hi])
        g_k = gates[..., k:k + 1] if p.per_row_gates else gates[k]
        y = y + (update * (g_k * s_k).to(update.dtype)).to(y.dtype)
    return y
