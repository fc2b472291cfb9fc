"""LoRA dropout inside the kernels: the keep-mask of one call, regenerated wherever it is needed.

As in PEFT, dropout applies to the adapter branch's input only:
``y = x W^T + b + (drop(x) A^T * G_E) B^T`` with ``drop(x) = x * keep / (1 - p)``. The mask is
never stored: the shrink draws it while it loads ``x`` tiles, and the kernels that need
``drop(x)`` again in the backward (``dA = dS^T @ drop(x)``, the adapter part of ``dx``) draw the
same bits from the same seed. Saved memory stays ``x + S + one seed``.

The generator is counter-based (Philox 4x32-10, the bits of Triton's ``tl.philox``): element
``(n, d)`` of the mask is a pure function of ``(seed, n, d)``, so any tile of any kernel
reproduces it exactly, in any order. The counters are the column group ``d // 4`` and the row;
the group's four outputs are its four columns, each kept iff at least ``round(p * 2**32)``
(``tiles.keep_scale``; ``lora_dropout.philox_keep_mask`` is the same rule in PyTorch), so masks
never repeat inside a call for ``N, D_in < 2**32``. The seed lives in a one-element int64 tensor
on the device (``litelora_fast.op.lora_dropout.new_seed``: ``torch.randint`` on that device), so
a CUDA graph replay draws a fresh mask and no host read is needed.

- ``tiles.keep_scale(seed, n_idx, d_idx, P_DROP)``: the device helper every kernel calls, a
  tile's ``keep / (1 - p)`` in fp32.
- ``dropout_mask(seed, N, D_in, p)``: the mask as a bool tensor, for tests and the reference.
- ``mask_cost_kernel``: the mask of one tile alone, which ``compile_report.mask_instructions``
  compiles to count its SASS instructions per element (docs/kernels.md, "LoRA dropout mask").
- ``masked_addmm_(dx, dS, lora_A, seed, p)``: ``dx += keep / (1 - p) * (dS @ lora_A)``, the
  adapter part of ``dx`` (the gradient flows back through ``drop``). The fused ``dx`` kernels
  keep one accumulator for ``dy @ W + dS @ lora_A``; with dropout only the second term is masked,
  so the op runs them base-only (any variant, TMA included) and adds this term in place: one
  more launch and one more read and write of ``dx``, only when ``p > 0``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .compile_spec import KernelSpec
from .tiles import keep_scale, two_stretch_tile
from .tuning import (Launcher, block_r, buckets, check_launch, dot_precision, on_device,
                     stage_bytes)


@triton.jit
def _mask_kernel(seed_ptr, out_ptr, N, D_in, stride_out_n, P_DROP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    seed = tl.load(seed_ptr)
    keep = keep_scale(seed, rows[:, None], cols[None, :], P_DROP) != 0.0
    mask = (rows < N)[:, None] & (cols < D_in)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out_n + cols[None, :], keep.to(tl.int8),
             mask=mask)


@triton.jit
def mask_cost_kernel(seed_ptr, x_ptr, out_ptr, P_DROP: tl.constexpr, D_ALONG_ROWS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``out = x * keep_scale`` for one unmasked (BLOCK_M, BLOCK_D) tile and nothing else: what
    ``compile_report.mask_instructions`` compiles with and without ``P_DROP`` to count the mask's
    SASS instructions per element (``D_ALONG_ROWS``: the tile is ``x^T`` with ``d`` contiguous,
    as ``lora_weight_grads``' dA programs read it)."""
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    if D_ALONG_ROWS:     # tile (BLOCK_D, BLOCK_M) of x^T, d contiguous in memory as dA reads it
        ptrs = cols[:, None] + rows[None, :] * BLOCK_D
    else:
        ptrs = rows[:, None] * BLOCK_D + cols[None, :]
    x = tl.load(x_ptr + ptrs)
    if P_DROP > 0.0:
        if D_ALONG_ROWS:
            x = x * keep_scale(tl.load(seed_ptr), rows[None, :], cols[:, None], P_DROP,
                               D_ALONG_ROWS=True)
        else:
            x = x * keep_scale(tl.load(seed_ptr), rows[:, None], cols[None, :], P_DROP)
    tl.store(out_ptr + ptrs, x)


@triton.jit
def _masked_addmm_kernel(dx_ptr, dS_ptr, lora_A_ptr, seed_ptr, N, D_in, R_act,
                         stride_dx_n, stride_dx_i, stride_dS_n, stride_dS_r,
                         stride_lora_A_r, stride_lora_A_i,
                         DOT_PRECISION: tl.constexpr, P_DROP: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    # dS @ lora_A alone: the fused tile with an empty base stretch (K1 = 0: no steps).
    acc, offs_m, offs_n, _ = two_stretch_tile(
        tl.program_id(0), tl.program_id(1), N, D_in, 0, R_act, dS_ptr, lora_A_ptr, dS_ptr,
        lora_A_ptr, stride_dS_n, stride_dS_r, stride_lora_A_r, stride_lora_A_i,
        stride_dS_n, stride_dS_r, stride_lora_A_r, stride_lora_A_i,
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_R, BLOCK_R)
    keep = keep_scale(tl.load(seed_ptr), offs_m[:, None], offs_n[None, :], P_DROP)
    mask = (offs_m < N)[:, None] & (offs_n < D_in)[None, :]
    dx_ptrs = (dx_ptr + offs_m.to(tl.int64)[:, None] * stride_dx_n
               + offs_n.to(tl.int64)[None, :] * stride_dx_i)
    dx = tl.load(dx_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptrs, (dx + acc * keep).to(dx_ptr.dtype.element_ty), mask=mask)


# One launch config each (``tuning.STATUS``; nothing to tune: one pass over the output). The
# interpreter uses small tiles so test shapes of tens of rows cross tile edges.
MASKED_ADDMM_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=1)
MASK_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_D": 128}, num_warps=4, num_stages=1)
MAX_BLOCK_R = 64     # masked_addmm_ reduces over R_act in steps of at most this many columns


def _addmm_smem(c, elem, consts):
    return stage_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], consts["BLOCK_R"], elem), 0


_ADDMM = {fp32: Launcher("masked_addmm", _masked_addmm_kernel, [MASKED_ADDMM_CONFIG],
                         triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1),
                         ["N", "D_in", "R_act", "DOT_PRECISION"], _addmm_smem)
          for fp32 in (False, True)}
_MASK = {fp32: Launcher("dropout_mask", _mask_kernel, [MASK_CONFIG],
                        triton.Config({"BLOCK_M": 32, "BLOCK_D": 32}, num_warps=4, num_stages=1),
                        [], lambda c, elem, consts: (0, 0))
         for fp32 in (False, True)}

SPECS = [
    KernelSpec("masked_addmm", "pointer", _masked_addmm_kernel, _ADDMM,
               types={"seed_ptr": "*i64"},
               unit_strides=("stride_dx_i", "stride_dS_r", "stride_lora_A_i"),
               buckets=lambda dt, flags: {"BLOCK_R": buckets(MAX_BLOCK_R)}, flags=({"P_DROP": 0.1},)),
    KernelSpec("dropout_mask", "pointer", _mask_kernel, _MASK,
               types={"seed_ptr": "*i64", "out_ptr": "*i8"}, flags=({"P_DROP": 0.1},),
               dtypes=("bf16",), listed=False),   # the mask is int8 whatever the operands' dtype
]


def masked_addmm_(dx, dS, lora_A, seed, p: float):
    """``dx += keep / (1 - p) * (dS @ lora_A)`` in place, fp32 accumulation; returns ``dx``.

    dx (N, D_in), dS (N, R_act), lora_A (R_act, D_in) share one dtype, any strides; ``seed``
    the call's (1,) int64 seed. The product's reduction is the short R_act (the adapter ranks),
    so one pass over ``dx`` tiles (``MASKED_ADDMM_CONFIG``) does the whole update.
    """
    N, D_in = dx.shape
    R_act = dS.shape[1]
    check_launch(dS.shape[0] == N and tuple(lora_A.shape) == (R_act, D_in), f"masked_addmm_: dx {tuple(dx.shape)}, dS {tuple(dS.shape)} and lora_A "
                 f"{tuple(lora_A.shape)} do not chain as (N, D_in) += (N, R) @ (R, D_in)")
    if N == 0 or D_in == 0 or R_act == 0:
        return dx
    grid = lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(D_in, m["BLOCK_N"]))
    with on_device(dx):
        _ADDMM[dx.dtype == torch.float32][grid](
            dx, dS, lora_A, seed, N, D_in, R_act, dx.stride(0), dx.stride(1),
            dS.stride(0), dS.stride(1), lora_A.stride(0), lora_A.stride(1),
            DOT_PRECISION=dot_precision(dx), P_DROP=float(p), BLOCK_R=block_r(R_act, MAX_BLOCK_R))
    LAUNCH_COUNTS["masked_addmm"] += 1
    return dx


def dropout_mask(seed: torch.Tensor, N: int, D_in: int, p: float) -> torch.Tensor:
    """The ``(N, D_in)`` bool keep-mask that every kernel of a call with this seed applies."""
    out = torch.empty((N, D_in), dtype=torch.int8, device=seed.device)
    if N and D_in:
        grid = lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(D_in, m["BLOCK_D"]))
        with on_device(seed):
            _MASK[False][grid](seed, out, N, D_in, out.stride(0), P_DROP=float(p))
        LAUNCH_COUNTS["dropout_mask"] += 1
    return out.bool()
