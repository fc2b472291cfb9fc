"""The packed bank of a ``GatedLoRALinear``, built afresh at every call.

A layer stores adapter ``k`` as two Parameters (``A_k``, ``B_k``: per-adapter freezing, optimizer
references that survive a recruit), while the op reads one packed ``lora_A`` ``(R, D_in)`` and
``lora_B`` ``(D_out, R)``. :func:`cat_bank` packs them with ``torch.cat`` (differentiable: autograd
hands each Parameter its rows or columns of the gradient) and casts them to the dtype the op
computes in.

Nothing is kept between calls, on purpose: the layer must compute with the values its Parameters
hold, whatever wrote them. A packed copy re-made only when ``(_version, data_ptr)`` changed missed
every write that does not bump the version counter: fused optimizers (``torch.optim.AdamW(...,
fused=True)``, the HF Trainer's default), writes through ``Parameter.data``, FSDP's refills. The
copy costs ``R x (D_in + D_out)`` elements read and written per call, about ``4R / (D + 2N)`` of a
square layer's memory traffic (0.3% at N = 8192, D = 4096, R = 16). One adapter already in the
compute dtype is used as it is (no copy).
"""
from __future__ import annotations

from typing import Optional

import torch


def cat_bank(As, Bs, dtype: Optional[torch.dtype] = None) -> tuple:
    """``(lora_A, lora_B)`` packed by ``torch.cat`` (differentiable), cast to ``dtype``."""
    As, Bs = list(As), list(Bs)
    A = As[0] if len(As) == 1 else torch.cat(As, 0)
    B = Bs[0] if len(Bs) == 1 else torch.cat(Bs, 1)
    if dtype is not None and A.dtype != dtype:
        A, B = A.to(dtype), B.to(dtype)
    return A, B
