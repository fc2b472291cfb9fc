"""The shrink ``S = drop(x) @ lora_A^T`` and its gated copy ``SG = S * G_E``: kernel, configs,
compile spec and the launcher ``shrink``.

    shrink(x2d, lora_A, gates2d, col_adapter, col_scale, *, out=None, dropout=None) -> (S, SG)
        S  = drop(x2d) @ lora_A^T                            (N, R_act)  x.dtype
        SG = S * gates2d[n, col_adapter[j]] * col_scale[j]   (N, R_act)  x.dtype, from the fp32 acc

Memory-bound: it reads x once and writes N x R_act. Each program holds BLOCK_M rows and BLOCK_R
of the R_act columns (``tiles.rank_tile``); the launcher picks BLOCK_R = the next power of two
>= R_act in [16, cap] (``tuning.block_r``), so the compile-time shapes are the buckets 16..cap.
``SG`` is returned as an ``(N, R_act)`` view of an ``(N, pad16(R_act))`` buffer, so its rows are
16-byte aligned and the descriptor kernels of ``fused_forward`` read it as it is. Kernels take no
Python float scalars (the scalings arrive as the fp32 table ``col_scale``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .compile_spec import KernelSpec
from .tiles import expanded_gate, rank_tile, store_rank_tile
from .tuning import (TCGEN05_ARCH, TMA_MIN_ARCH, Launcher, block_r, buckets, by_dtype,
                     check_launch, check_out, dot_precision, n_bucket, on_device, padded_columns,
                     stage_bytes)

# ---------------------------------------------------------------------------------------------
# Configs (data; ``tuning.STATUS``). Row tiles of 64 or 128 trade parallel programs (N = 2048
# gives 16..32 of them) against re-reading lora_A's tile per program; 64 rows is the floor, as
# wgmma needs 64 rows per warpgroup. fp32: 64-deep tiles hold a stage in the shared memory of
# bf16's 128-deep ones. The first entry that fits is what LITELORA_AUTOTUNE=0 launches.
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    "16-bit": [
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    ],
    "fp32": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3)],
}
# Under TRITON_INTERPRET=1: small tiles, so test shapes of tens of rows cross several tile edges.
INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_K": 16}, num_warps=4, num_stages=1)
# Widest S tile per program; wider banks take several column tiles (neighbouring programs, so the
# second read of the same x rows hits L2). fp32: a 64 x 128 fp32 tile next to exact-fp32 (FMA)
# products spills (592 B per thread in the sm_90 compile), 64 columns do not.
MAX_BLOCK_R = {"16-bit": 128, "fp32": 64}


@triton.jit
def _shrink_kernel(
    x_ptr,            # (N, D_in)      x.dtype, any strides
    lora_A_ptr,       # (R_act, D_in)  x.dtype, any strides
    gates_ptr,        # (N, K)         fp32/fp16/bf16, row stride may be 0 (per-adapter gates)
    col_adapter_ptr,  # (R_act,)       int32, contiguous: adapter index of each column
    col_scale_ptr,    # (R_act,)       fp32, contiguous: that adapter's scaling s_k
    S_ptr,            # (N, R_act)     x.dtype out: S
    SG_ptr,           # (N, R_act)     x.dtype out: S * G_E
    seed_ptr,         # (1,)           int64 LoRA-dropout seed; read only if P_DROP > 0
    N, D_in, R_act,
    N_BUCKET,         # autotune key only
    stride_x_n, stride_x_i,
    stride_lora_A_r, stride_lora_A_i,
    stride_gates_n, stride_gates_k,
    stride_S_n, stride_S_r,
    stride_SG_n, stride_SG_r,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    P_DROP: tl.constexpr,
):
    # LoRA dropout: S = drop(x) @ A^T, the mask drawn from the call's seed as x tiles arrive.
    drop_seed = 0
    if P_DROP > 0.0:
        drop_seed = tl.load(seed_ptr)
    pid = tl.program_id(0)
    acc, rows, cols = rank_tile(pid, N, R_act, D_in, x_ptr, lora_A_ptr, stride_x_n, stride_x_i,
                                stride_lora_A_i, stride_lora_A_r, DOT_PRECISION, BLOCK_M,
                                BLOCK_K, BLOCK_R, drop_seed=drop_seed, P_DROP=P_DROP)
    g_e, _ = expanded_gate(rows, cols, col_adapter_ptr, col_scale_ptr, gates_ptr,
                           stride_gates_n, stride_gates_k)
    store_rank_tile(S_ptr, acc, pid, N, R_act, stride_S_n, stride_S_r, BLOCK_M, BLOCK_R)
    store_rank_tile(SG_ptr, acc * g_e, pid, N, R_act, stride_SG_n, stride_SG_r, BLOCK_M, BLOCK_R)


def rank_smem(c, elem, consts):
    """Shared memory of a rank-side tile (shrink, grad-shrink): (BLOCK_M + BLOCK_R) x BLOCK_K
    operand tiles per stage; nothing held once."""
    return stage_bytes(c.kwargs["BLOCK_M"], consts["BLOCK_R"], c.kwargs["BLOCK_K"], elem), 0


def _spills(c, elem, consts, arch):
    # sm_90 compile: with dropout at BLOCK_R = 128, 4 warps holding the 64 x 128 accumulator and
    # a 64 x 128 x tile's Philox counters spill 80 B per thread (8 warps, or 64-deep tiles, do not).
    # sm_89 (mma.sync, no wgmma): the same from BLOCK_R = 64 (8 B), and exact fp32 at BLOCK_R = 64
    # with 2 stages (8 B; 3 stages do not spill, but only 2 fit 101,376 B). sm_100: 128-row 16-bit
    # tiles at BLOCK_R = 128 (48 B), exact fp32 64-deep tiles at BLOCK_R = 64 (1,488-2,480 B).
    mma_sync = arch < TMA_MIN_ARCH
    exact = consts.get("DOT_PRECISION") == "ieee"
    k = c.kwargs
    if arch == TCGEN05_ARCH and ((elem == 2 and consts["BLOCK_R"] >= 128 and k["BLOCK_M"] >= 128)
                                 or (exact and consts["BLOCK_R"] >= 64 and k["BLOCK_K"] >= 64)):
        return True
    exact_two_stages = mma_sync and exact and consts["BLOCK_R"] >= 64 and c.num_stages == 2
    return exact_two_stages or (consts.get("P_DROP", 0.0) > 0 and c.num_warps == 4
                                and consts["BLOCK_R"] >= (64 if mma_sync else 128)
                                and k["BLOCK_K"] >= 128)


# Where the list leaves nothing (fp32 at BLOCK_R = 64 on a 101,376 B GPU or sm_100): 32-deep tiles.
FALLBACK = {"16-bit": [], "fp32": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=8,
                                                 num_stages=3)]}


_LAUNCH = {fp32: Launcher("shrink", _shrink_kernel, configs, INTERPRETER_CONFIG,
                          ["N_BUCKET", "D_in", "R_act", "DOT_PRECISION", "P_DROP"], rank_smem,
                          spills=_spills, fallback=by_dtype(FALLBACK)[fp32])
           for fp32, configs in by_dtype(CONFIGS).items()}

SPECS = [KernelSpec(
    "shrink", "pointer", _shrink_kernel, _LAUNCH,
    types={"gates_ptr": "*fp32", "col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32",
           "seed_ptr": "*i64"},
    unit_strides=("stride_x_i", "stride_lora_A_i", "stride_gates_k", "stride_S_r", "stride_SG_r"),
    unaligned=("stride_gates_n",),
    buckets=lambda dt, flags: {"BLOCK_R": buckets(MAX_BLOCK_R["fp32" if dt.startswith("fp32") else "16-bit"])},
    # With LoRA dropout the Philox mask on the x tiles must not cost the HGMMA or spill.
    flags=({"P_DROP": 0.0}, {"P_DROP": 0.1}))]


def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, *, out=None, dropout=None):
    """``(S, SG)``: ``S = x2d @ lora_A^T`` and ``SG = S * G_E``, both ``(N, R_act)`` in x's dtype.

    ``gates2d`` ``(N, K)`` may be a row-stride-0 expanded view; ``col_adapter`` ``(R_act,)`` int32
    and ``col_scale`` ``(R_act,)`` float are the plan's per-column tables. ``out``: optional
    ``(S, SG)`` buffers to write into (tests pass NaN-filled ones); without it ``SG`` is a view of
    a buffer padded to 16 columns (descriptor-legal rows for ``fused_forward``).
    ``dropout``: optional ``(p, seed)``: ``S = drop(x2d) @ lora_A^T`` with the keep-mask of
    ``kernels/dropout.py`` drawn from ``seed`` (a (1,) int64 tensor on x's device).
    """
    N, D_in = x2d.shape
    R_act = lora_A.shape[0]
    check_launch(lora_A.dim() == 2 and lora_A.shape[1] == D_in and gates2d.dim() == 2
                 and gates2d.shape[0] == N,
                 f"shrink: x2d {tuple(x2d.shape)}, lora_A {tuple(lora_A.shape)} and gates2d "
                 f"{tuple(gates2d.shape)} do not chain as (N, D_in), (R_act, D_in), (N, K)")
    check_launch(col_adapter.shape == (R_act,) and col_scale.shape == (R_act,),
                 f"shrink: col_adapter {tuple(col_adapter.shape)} and col_scale "
                 f"{tuple(col_scale.shape)} must be ({R_act},)")
    S_out, SG_out = out if out is not None else (None, None)
    S = check_out(S_out, "S", (N, R_act), x2d.dtype, x2d.device)
    if SG_out is None:
        SG = padded_columns(N, R_act, x2d.dtype, x2d.device)
    else:
        SG = check_out(SG_out, "SG", (N, R_act), x2d.dtype, x2d.device)
    if N == 0 or R_act == 0:
        return S, SG
    col_adapter = col_adapter.to(device=x2d.device, dtype=torch.int32).contiguous()
    col_scale = col_scale.to(device=x2d.device, dtype=torch.float32).contiguous()
    fp32 = x2d.dtype == torch.float32
    br = block_r(R_act, MAX_BLOCK_R["fp32" if fp32 else "16-bit"])
    p_drop, seed = dropout if dropout is not None else (0.0, x2d)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(R_act, br),)

    with on_device(x2d):
        _LAUNCH[fp32][grid](
            x2d, lora_A, gates2d, col_adapter, col_scale, S, SG, seed,
            N, D_in, R_act, n_bucket(N),
            x2d.stride(0), x2d.stride(1),
            lora_A.stride(0), lora_A.stride(1),
            gates2d.stride(0), gates2d.stride(1),
            S.stride(0), S.stride(1),
            SG.stride(0), SG.stride(1),
            DOT_PRECISION=dot_precision(x2d), BLOCK_R=br, P_DROP=float(p_drop),
        )
    LAUNCH_COUNTS["shrink"] += 1
    return S, SG
