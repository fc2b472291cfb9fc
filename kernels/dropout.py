"""LoRA dropout inside the kernels: the keep-mask of one call, regenerated wherever it is needed.

As in PEFT, dropout applies to the adapter branch's input only:
``y = x W^T + b + (drop(x) A^T * G_E) B^T`` with ``drop(x) = x * keep / (1 - p)``. The mask is
never stored: the shrink draws it while it loads ``x`` tiles, and the kernels that need
``drop(x)`` again in the backward (``dA = dS^T @ drop(x)``, the adapter part of ``dx``) draw the
same bits from the same seed. Saved memory stays ``x + S + one seed``.

The generator is counter-based (Philox 4x32, Triton's ``tl.philox``): element ``(n, d)`` of the
mask is a pure function of ``(seed, n, d)``, so any tile of any kernel reproduces it exactly,
in any order. The two 32-bit counters are the row and the column, so masks never repeat inside
a call for ``N, D_in < 2**32``. The seed lives in a one-element int64 tensor on the device
(drawn by ``torch.randint`` on that device), so a CUDA graph replay draws a fresh mask and no
host read is needed.

- ``keep_scale(seed, rows, cols, P_DROP)``: device helper, the tile's ``keep / (1 - p)`` in fp32.
- ``dropout_mask(seed, N, D_in, p)``: the mask as a bool tensor, for tests and the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def keep_scale(seed, rows, cols, P_DROP: tl.constexpr):
    """``keep / (1 - p)`` (fp32) of the tile ``rows[:, None] x cols[None, :]``.

    ``seed``: int scalar; ``rows``/``cols``: int vectors of absolute indices (any int width; the
    low 32 bits are the Philox counters). ``P_DROP`` is a compile-time constant, so ``p = 0``
    compiles to nothing at all in the callers.
    """
    r = rows[:, None].to(tl.uint32) + tl.zeros_like(cols[None, :]).to(tl.uint32)
    c = cols[None, :].to(tl.uint32) + tl.zeros_like(rows[:, None]).to(tl.uint32)
    z = tl.zeros_like(r)
    bits, _, _, _ = tl.philox(seed, c, r, z, z)
    u = tl.uint_to_uniform_float(bits)
    return tl.where(u >= P_DROP, 1.0 / (1.0 - P_DROP), 0.0)


@triton.jit
def _mask_kernel(seed_ptr, out_ptr, N, D_in, stride_out_n, P_DROP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    seed = tl.load(seed_ptr)
    keep = keep_scale(seed, rows, cols, P_DROP) != 0.0
    mask = (rows < N)[:, None] & (cols < D_in)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out_n + cols[None, :], keep.to(tl.int8),
             mask=mask)


def new_seed(device) -> torch.Tensor:
    """A fresh per-call seed: one int64 on ``device`` from torch's generator for that device
    (reproducible under ``torch.manual_seed``, and captured correctly by CUDA graphs)."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def dropout_mask(seed: torch.Tensor, N: int, D_in: int, p: float) -> torch.Tensor:
    """The ``(N, D_in)`` bool keep-mask that every kernel of a call with this seed applies."""
    from .tuning import on_device

    out = torch.empty((N, D_in), dtype=torch.int8, device=seed.device)
    if N and D_in:
        grid = (triton.cdiv(N, 32), triton.cdiv(D_in, 32))
        with on_device(seed):
            _mask_kernel[grid](seed, out, N, D_in, out.stride(0), P_DROP=float(p),
                               BLOCK_M=32, BLOCK_D=32)
    return out.bool()
