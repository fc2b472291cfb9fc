"""LoRA dropout of one call: its seed, its keep-mask, and a hook that records masks for tests.

As in PEFT, dropout applies to the adapter branch's input only (docs/MATH.md, section 1):

    y = x W^T + b + ((drop(x) A^T) * G_E) B^T,     drop(x) = x * keep / (1 - p)

One mask per call is shared by all adapters of the bank (PEFT draws one per adapter; the
expectation and the variance per adapter are the same). The mask is never stored: a call holds a
one-element int64 ``seed`` on x's device, and the mask is a pure function of ``(seed, row,
column)`` (``kernels/dropout.py``: Philox 4x32 with the row and the column as counters).

- The Triton kernels draw it in-kernel: in the shrink (``S = drop(x) A^T``), for ``dA =
  dS^T drop(x)`` and for the adapter term of ``dx``. Saved for backward: ``x``, ``S``, the seed.
- The PyTorch backend materialises it for the duration of one primitive (``keep_mask``): on CUDA
  or under ``TRITON_INTERPRET=1`` with the same Triton mask kernel, so both backends drop the same
  elements; on a plain CPU run from ``torch.Generator`` seeded with the seed's value (a CPU
  tensor: reading it is no device sync), so the bits differ from the kernels' there.

The seed is drawn with ``torch.randint`` on x's device: reproducible under
``torch.manual_seed``, no host read, and a CUDA graph replay draws a fresh one.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .. import settings

_RECORDERS: list = []


def check_p(dropout) -> float:
    """``dropout`` as a float in ``[0, 1)``; ``ValueError``/``TypeError`` naming it otherwise."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a real number in [0, 1), got {type(dropout).__name__} "
                        f"{dropout!r}")
    p = float(dropout)
    if not math.isfinite(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return p


def new_seed(device) -> torch.Tensor:
    """The seed of one call: a (1,) int64 on ``device`` from torch's generator for that device."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def keep_mask(seed: torch.Tensor, n: int, d_in: int, p: float) -> torch.Tensor:
    """The ``(n, d_in)`` bool keep-mask of the call whose seed is ``seed``."""
    # The Triton mask kernel runs on CUDA, and on CPU tensors under TRITON_INTERPRET=1 (the same
    # call-time rule as backends.interpreter_requested; backends imports this module, not back).
    if seed.is_cuda or settings.interpret():
        from ..kernels.dropout import dropout_mask

        return dropout_mask(seed, n, d_in, p)
    gen = torch.Generator(device=seed.device)
    gen.manual_seed(int(seed.reshape(())))
    return torch.rand((n, d_in), generator=gen, device=seed.device) >= p


def dropped(x2d: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``drop(x2d) = x2d * keep / (1 - p)`` as a temporary (PyTorch backend, rare kernel paths)."""
    keep = keep_mask(seed, x2d.shape[0], x2d.shape[1], p)
    return x2d * keep.to(x2d.dtype) * (1.0 / (1.0 - p))


def record(seed: torch.Tensor, n: int, d_in: int, p: float) -> None:
    """Hand the call's mask to every active ``recorded_masks`` block (no work when none is)."""
    for masks in _RECORDERS:
        masks.append(keep_mask(seed, n, d_in, p))


@contextlib.contextmanager
def recorded_masks():
    """``with recorded_masks() as masks:`` appends the ``(N, D_in)`` bool keep-mask of every
    call with dropout in the block, in call order (a debugging and testing hook: it costs one
    extra mask computation per call while active)."""
    masks: list = []
    _RECORDERS.append(masks)
    try:
        yield masks
    finally:
        _RECORDERS.remove(masks)
