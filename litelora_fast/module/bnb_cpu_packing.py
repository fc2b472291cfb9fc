"""A workaround for bitsandbytes' packed 4-bit CPU weights (bitsandbytes 0.49 and later).

On a CPU with AVX512-BF16, ``Linear4bit.forward`` repacks its weight for its CPU kernel the
first time it runs in eval mode on an ``x`` that needs no grad, and keeps it packed. A later
forward whose ``x`` needs grad (training resumed after an evaluation: LiteLoRA's learner
predicts between tasks) then fails inside bitsandbytes ("a view of a leaf Variable that requires
grad is being used in an in-place operation"), under PEFT as under our layer. Before such a
forward the weight is unpacked again with bitsandbytes' own inverse (the one its
``_save_to_state_dict`` calls), which restores the portable layout exactly.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def unpack_for_grad(base: nn.Module, x: torch.Tensor) -> None:
    """Unpack ``base``'s 4-bit weight when it is in bitsandbytes' packed CPU layout and ``x``
    needs grad; otherwise nothing."""
    if not (x.requires_grad and torch.is_grad_enabled()):
        return
    weight = getattr(base, "weight", None)
    state = getattr(weight, "quant_state", None)
    if not getattr(state, "packing_format_for_cpu", False):
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
