"""The unfused reference: a loop over adapters, the way PEFT computes LoRA.

``gated_lora_linear_ref`` is the numerics oracle of the tests and the naive peer of the benchmarks.
It uses only autograd-visible PyTorch ops, so its backward is PyTorch's own (and its activation
memory is what a plain implementation pays: per adapter, the shrink output and, when the gates
train, the full ``(N, D_out)`` expansion).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import RankOffsets, Scaling, validate


def gated_lora_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias, lora_A: torch.Tensor,
                          lora_B: torch.Tensor, gates: torch.Tensor,
                          rank_offsets: RankOffsets = None, scaling: Scaling = None) -> torch.Tensor:
    """``y = x @ W^T + b + sum_k g_k * s_k * (x @ A_k^T) @ B_k^T``, one adapter at a time.

    Same arguments and checks as :func:`litelora_fast.gated_lora_linear`.
    """
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    y = F.linear(x, weight, bias)
    for k, s_k in enumerate(p.scaling):
        lo, hi = p.rank_offsets[k], p.rank_offsets[k + 1]
        if hi == lo:
            continue
        update = F.linear(F.linear(x, lora_A[lo:hi]), lora_B[:, lo:hi])
        g_k = gates[..., k:k + 1] if p.per_row_gates else gates[k]
        y = y + update * (g_k * s_k).to(update.dtype)
    return y
