"""Triton weight-gradient GEMMs ``a^T @ b`` (dA, dB, dW), deterministic, with their launchers.

    matmul_tn(a, b, out_dtype) -> a^T @ b      a (N, M), b (N, P) -> (M, P); reduction over N
    lora_weight_grads(x2d, dy, dS, SG, out_dtype) -> (dA, dB)
        dA = dS^T @ x2d (R, D_in) and dB = dy^T @ SG (D_out, R) in ONE launch (plus one partial-sum
        launch when N is split): both are "wide operand^T @ thin operand" products over the same
        N rows, so one grid holds the tiles of both (the first programs take dA's, the rest dB's).

The reduction runs over the long token dimension N (8192..16384 rows at the benchmark shapes)
while the output can be tiny (dB is D_out x R = 4096 x 16): its tile grid alone would leave
most of the GPU idle. Such calls split N into chunks, each program writes an fp32 partial tile,
and a second small kernel sums the partials in a fixed order (split 0, 1, 2, ...) and casts to
``out_dtype``. No floating-point atomics anywhere, so two runs are bitwise equal. The reduction
is our own kernel rather than ``torch.sum`` over the partial dimension because it writes the
cast result straight into ``out`` (one launch, no fp32 temporary of the output), and its order is
fixed by construction rather than by torch's reduction heuristics.

The launcher puts the narrow side of the output on the kernel's P axis (it computes
``(b^T @ a)^T`` by swapping operands and output strides when M < P), so dA = dS^T @ x (R x D_in)
and dB = dy^T @ SG (D_out x R) both run as tall tiles of >= 64 rows by a thin 16..64 column tile,
the shape wgmma wants. ``_tn_tile`` is that tile's body, shared by both kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .compile_spec import ALL_DTYPES, KernelSpec
from .tiles import dot_loop, grouped_tile
from .tuning import (INTERPRET, TCGEN05_ARCH, TMA_MIN_ARCH, Launcher, buckets, by_dtype,
                     check_out, dot_precision, n_bucket, num_sms, on_device, stage_bytes)

__all__ = ["matmul_tn", "lora_weight_grads", "split_count"]

# ---------------------------------------------------------------------------------------------
# Configs (data; ``tuning.STATUS``). Target: H200, bf16, reduction N in {2048, 8192, 16384}.
# Wide outputs (dW: 4096 x 14336 or 4096 x 4096; banks with R_act > 64): compute-bound GEMM tiles,
# as for the forward GEMM. Narrow outputs (dA / dB at r = 16..64, the thin side padded to
# BLOCK_N = 16..64 by the launcher): memory-bound on the wide operand, so long reduction tiles,
# deep pipelines, and the split-N path to fill the SMs. fp32: 32-deep tiles keep three stages.
# ---------------------------------------------------------------------------------------------
WIDE_CONFIGS = {
    "16-bit": [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ],
    "fp32": [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3)],
}
NARROW_CONFIGS = {
    "16-bit": [
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=4, num_stages=5),
    ],
    # 8 warps: at BLOCK_N = 64 with in-kernel dropout and gates, exact fp32 (FMA) products spill
    # with 4 (328 B per thread in the sm_90 compile). 32-deep tiles for exact fp32 with the gates
    # in the kernel, where 64-deep ones spill (296 B at BLOCK_N = 32).
    "fp32": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=8, num_stages=3),
             triton.Config({"BLOCK_M": 64, "BLOCK_K": 32, "GROUP_M": 1}, num_warps=8, num_stages=3)],
}

# Where the list leaves nothing (a 101,376 B GPU with the gates in the kernel at BLOCK_N = 64:
# the fp32 re-staged b tiles of 64-deep steps take 49,152 B before any stage): 32-deep tiles.
NARROW_FALLBACK = {"16-bit": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 32, "GROUP_M": 1},
                                            num_warps=4, num_stages=3)], "fp32": []}

# Under the interpreter: small tiles so test shapes cover several tiles and ragged edges.
_WIDE_INTERPRET = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2},
                                num_warps=4, num_stages=1)
_NARROW_INTERPRET = triton.Config({"BLOCK_M": 32, "BLOCK_K": 32, "GROUP_M": 1},
                                  num_warps=4, num_stages=1)

NARROW_MAX_P = 64            # outputs at most this wide (after the swap) use the narrow configs
# lora_weight_grads with LoRA dropout: the masked x tile next to the gate and S tiles leaves no
# registers for a 64-wide output tile (sm_90 compile: every 16-bit narrow config spills 56-4424 B
# at BLOCK_N = 64), so wider banks take 32-column tiles (x re-read from L2, the mask redrawn).
DROPOUT_MAX_N = 32
SPLIT_ALIGN = 256            # chunk lengths are multiples of every BLOCK_K above
MIN_SPLIT_ROWS = 1024        # below this a chunk's partial write + read outweighs its share of work
SUM_BLOCK = 1024             # elements per program of the partial-sum kernel


@triton.jit
def _tn_tile(
    a_ptr, b_ptr, out_ptr, pid_m, pid_p, pid_s,
    N, M, P, chunk,
    stride_a_n, stride_a_m, stride_b_n, stride_b_p, stride_out_s, stride_out_m, stride_out_p,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    gates_ptr=0, col_adapter_ptr=0, col_scale_ptr=0, stride_gates_n=0, stride_gates_k=0,
    use_gate=False, GATED: tl.constexpr = False,
    drop_seed=0, drop_on=0, P_DROP: tl.constexpr = 0.0,
):
    """One (BLOCK_M, BLOCK_N) tile of ``a^T @ b`` over rows [pid_s * chunk, +chunk) of N, stored
    at ``out_ptr + pid_s * stride_out_s`` (the split's partial, or the output itself). With
    ``GATED``, b's columns are scaled by the expanded gate on the fly where ``use_gate``; with
    ``P_DROP > 0``, a (an ``x`` tile, read transposed) gets the call's LoRA-dropout mask where
    ``drop_on`` (``tiles.dot_loop``)."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_m = (offs_m % M).to(tl.int64)
    cols_p = (offs_p % P).to(tl.int64)
    n_start = pid_s.to(tl.int64) * chunk
    n_len = tl.minimum(N - pid_s * chunk, chunk)

    # a's tile is gathered as (BLOCK_M, BLOCK_K), i.e. already transposed for the dot.
    a_ptrs = a_ptr + n_start * stride_a_n + rows_m[:, None] * stride_a_m + offs_k[None, :] * stride_a_n
    b_ptrs = b_ptr + n_start * stride_b_n + offs_k[:, None] * stride_b_n + cols_p[None, :] * stride_b_p
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATED:
        on = cols_p >= 0    # all True: the column-shaped form of the scalar use_gate
        adapter = tl.load(col_adapter_ptr + cols_p, mask=on & use_gate, other=0).to(tl.int64)
        g_scale = tl.load(col_scale_ptr + cols_p, mask=on & use_gate, other=1.0).to(tl.float32)
        g_ptrs = (gates_ptr + (n_start + offs_k)[:, None] * stride_gates_n
                  + adapter[None, :] * stride_gates_k)
    else:
        g_ptrs, g_scale = 0, 1.0
    # a's tile holds x[n, d] at (d = rows_m, n = n_start + k): the mask walks along n.
    acc = dot_loop(acc, a_ptrs, b_ptrs, n_len, stride_a_n, stride_b_n, BLOCK_K, DOT_PRECISION,
                   drop_seed=drop_seed, drop_n=(n_start + offs_k)[None, :],
                   drop_d=rows_m[:, None], drop_on=drop_on, DROP_ALONG_N=True, P_DROP=P_DROP,
                   g_ptrs=g_ptrs, g_scale=g_scale, use_gate=use_gate, step_g=stride_gates_n,
                   GATE_B=GATED)

    out_ptrs = (out_ptr + pid_s.to(tl.int64) * stride_out_s
                + offs_m.to(tl.int64)[:, None] * stride_out_m
                + offs_p.to(tl.int64)[None, :] * stride_out_p)
    mask = (offs_m[:, None] < M) & (offs_p[None, :] < P)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _matmul_tn_kernel(
    a_ptr,      # (N, M) left operand, read transposed
    b_ptr,      # (N, P) right operand, a's dtype
    out_ptr,    # (M, P) result in out_dtype, or (SPLIT, M, P) float32 partials
    N, M, P, chunk,
    N_BUCKET,   # autotune key only
    stride_a_n, stride_a_m, stride_b_n, stride_b_p, stride_out_s, stride_out_m, stride_out_p,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Axis 0: output tiles in grouped order (GROUP_M row tiles share one b column tile in L2).
    # Axis 1: the N chunk this program reduces over (one chunk when not split).
    pid_m, pid_p = grouped_tile(tl.program_id(0), M, P, BLOCK_M, BLOCK_N, GROUP_M)
    _tn_tile(a_ptr, b_ptr, out_ptr, pid_m, pid_p, tl.program_id(1), N, M, P, chunk,
             stride_a_n, stride_a_m, stride_b_n, stride_b_p, stride_out_s, stride_out_m,
             stride_out_p, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _lora_weight_grads_kernel(
    x_ptr,      # (N, D_in)  layer input
    dS_ptr,     # (N, R)     adapter-column gradient (the columns that train)
    dA_ptr,     # (R, D_in)  out: dS^T @ x; or the split partials of dA^T, (SPLIT, D_in, R) fp32
    dy_ptr,     # (N, D_out) upstream gradient
    SG_ptr,     # (N, R)     S * G_E of the same columns; S itself when GATED
    dB_ptr,     # (D_out, R) out: dy^T @ SG; or its split partials, (SPLIT, D_out, R) fp32
    gates_ptr,        # (N, K) gates2d (row stride 0 for per-adapter gates); read only if GATED
    col_adapter_ptr,  # (R,) int32 adapter of each column; read only if GATED
    col_scale_ptr,    # (R,) fp32 that adapter's scaling; read only if GATED
    seed_ptr,         # (1,) int64 LoRA-dropout seed of the call; read only if P_DROP > 0
    N, D_in, D_out, R, chunk,
    N_BUCKET,   # autotune key only
    stride_x_n, stride_x_i, stride_dS_n, stride_dS_r, stride_dA_s, stride_dA_r, stride_dA_i,
    stride_dy_n, stride_dy_o, stride_SG_n, stride_SG_r, stride_dB_s, stride_dB_o, stride_dB_r,
    stride_gates_n, stride_gates_k,
    DOT_PRECISION: tl.constexpr, GATED: tl.constexpr, P_DROP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # With LoRA dropout (P_DROP > 0) dA = dS^T @ drop(x): the dA programs regenerate the mask
    # the shrink applied, from the same seed (kernels/dropout.py); the dB programs do not.
    drop_seed = 0
    if P_DROP > 0.0:
        drop_seed = tl.load(seed_ptr)
    # Both products in the narrow-side-on-P frame: dA^T = x^T @ dS (D_in x R) and dB = dy^T @ SG
    # (D_out x R). Programs [0, tiles_dA) take dA^T's row tiles, the rest dB's. Only scalars are
    # chosen per program (pointers, sizes, strides), and the tile body is called once: calling it
    # in both branches would compile two pipelined loops with two sets of shared-memory buffers.
    pid = tl.program_id(0)
    tiles_p = tl.cdiv(R, BLOCK_N)
    tiles_dA = tl.cdiv(D_in, BLOCK_M) * tiles_p
    a_ptr, b_ptr, out_ptr, M, local = x_ptr, dS_ptr, dA_ptr, D_in, pid
    stride_a_n, stride_a_m, stride_b_n, stride_b_p = stride_x_n, stride_x_i, stride_dS_n, stride_dS_r
    stride_out_s, stride_out_m, stride_out_p = stride_dA_s, stride_dA_i, stride_dA_r
    if pid >= tiles_dA:
        a_ptr, b_ptr, out_ptr, M, local = dy_ptr, SG_ptr, dB_ptr, D_out, pid - tiles_dA
        stride_a_n, stride_a_m, stride_b_n, stride_b_p = stride_dy_n, stride_dy_o, stride_SG_n, stride_SG_r
        stride_out_s, stride_out_m, stride_out_p = stride_dB_s, stride_dB_o, stride_dB_r
    _tn_tile(a_ptr, b_ptr, out_ptr, local // tiles_p, local % tiles_p, tl.program_id(1),
             N, M, R, chunk, stride_a_n, stride_a_m, stride_b_n, stride_b_p,
             stride_out_s, stride_out_m, stride_out_p, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
             gates_ptr=gates_ptr, col_adapter_ptr=col_adapter_ptr, col_scale_ptr=col_scale_ptr,
             stride_gates_n=stride_gates_n, stride_gates_k=stride_gates_k,
             use_gate=pid >= tiles_dA, GATED=GATED,
             drop_seed=drop_seed, drop_on=pid < tiles_dA, P_DROP=P_DROP)


@triton.jit
def _sum_partials_kernel(
    part_ptr,   # (SPLIT, M, P) float32 partials, contiguous
    out_ptr,    # rows [0, M0) of the result, (M0, P) in out_dtype
    out2_ptr,   # rows [M0, M), (M - M0, P): lora_weight_grads' dB (out_ptr again for matmul_tn)
    M, M0, P, SPLIT,
    stride_out_m, stride_out_p, stride_out2_m, stride_out2_p,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * P
    part_ptrs = part_ptr + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    # Fixed order over the splits: the same inputs always give the same bits.
    for s in range(0, SPLIT):
        acc += tl.load(part_ptrs, mask=mask, other=0.0)
        part_ptrs += M * P
    m = offs // P
    p = offs % P
    first = m < M0
    tl.store(out_ptr + m * stride_out_m + p * stride_out_p, acc.to(out_ptr.dtype.element_ty),
             mask=mask & first)
    tl.store(out2_ptr + (m - M0) * stride_out2_m + p * stride_out2_p,
             acc.to(out2_ptr.dtype.element_ty), mask=mask & ~first)


def _tn_smem(c, elem, consts):
    """Pipelined a/b tiles; with in-kernel gates or dropout, the b tile is re-staged with its
    gate in fp32 (sm_90 compile: 3 x BLOCK_K x BLOCK_N x 4 B beyond the stages, at most)."""
    k = c.kwargs
    n = k.get("BLOCK_N", consts.get("BLOCK_N"))
    transformed = consts.get("GATED", False) or consts.get("P_DROP", 0.0) > 0
    return stage_bytes(k["BLOCK_M"], n, k["BLOCK_K"], elem), 3 * k["BLOCK_K"] * n * 4 if transformed else 0


def _pair_spills(c, elem, consts, arch):
    # sm_90 compile, with the gates (and dropout) applied in the kernel: 256-deep tiles spill
    # 176-4,424 B, and 4 warps at BLOCK_K x BLOCK_N = 128 x 64 spill 480 B (8 warps do not).
    # sm_100: 4 warps from 128 x 32 with them (424 B), 256-deep 64-column tiles without (8 B).
    k = c.kwargs
    transformed = consts.get("GATED", False) or consts.get("P_DROP", 0.0) > 0
    if arch == TCGEN05_ARCH and c.num_warps == 4 and elem == 2 and (
            k["BLOCK_K"] * consts["BLOCK_N"] >= (128 * 32 if transformed else 256 * 64)):
        return True
    if not transformed:
        return False
    if consts.get("DOT_PRECISION") == "ieee":      # exact fp32: FMA products hold both tiles
        return elem == 4 and k["BLOCK_K"] >= 64 and consts["BLOCK_N"] >= 32
    # sm_80 (mma.sync): also 4 warps at BLOCK_M x BLOCK_N = 128 x 64 (168 B).
    wide_rows = arch < TMA_MIN_ARCH and k["BLOCK_M"] * consts["BLOCK_N"] >= 128 * 64
    return k["BLOCK_K"] >= 256 or (c.num_warps == 4 and (
        k["BLOCK_K"] * consts["BLOCK_N"] >= 128 * 64 or wide_rows))


def _tn_spills(c, elem, consts, arch):
    # sm_80 and sm_89 compiles (mma.sync): 128 x 128 16-bit tiles on 8 warps with 2 stages keep
    # an 8 B stack frame (3 or more stages do not; only 2 fit 101,376 B). sm_100, the narrow
    # (split) form: 128 rows x 64 columns on 4 warps (8 B).
    k = c.kwargs
    if "BLOCK_N" not in k:                          # narrow: BLOCK_N is the call's bucket
        return (arch == TCGEN05_ARCH and elem == 2 and c.num_warps == 4 and k["BLOCK_M"] >= 128
                and consts["BLOCK_N"] >= 64)
    return (arch < TMA_MIN_ARCH and elem == 2 and c.num_warps == 8 and c.num_stages == 2
            and k["BLOCK_M"] * k["BLOCK_N"] >= 128 * 128)


_KEY = ["M", "P", "N_BUCKET", "chunk", "DOT_PRECISION"]
_wide = {fp32: Launcher("matmul_tn", _matmul_tn_kernel, c, _WIDE_INTERPRET, _KEY, _tn_smem, "wide",
                        spills=_tn_spills)
         for fp32, c in by_dtype(WIDE_CONFIGS).items()}
_narrow = {fp32: Launcher("matmul_tn", _matmul_tn_kernel, c, _NARROW_INTERPRET, _KEY + ["BLOCK_N"],
                          _tn_smem, "narrow", spills=_tn_spills)
           for fp32, c in by_dtype(NARROW_CONFIGS).items()}
# lora_weight_grads: the narrow configs (dA^T and dB are both D x R outputs).
_lora_pair = {fp32: Launcher("lora_weight_grads", _lora_weight_grads_kernel, c, _NARROW_INTERPRET,
                             ["D_in", "D_out", "R", "N_BUCKET", "chunk", "BLOCK_N", "DOT_PRECISION",
                              "GATED", "P_DROP"], _tn_smem, spills=_pair_spills,
                             fallback=by_dtype(NARROW_FALLBACK)[fp32])
              for fp32, c in by_dtype(NARROW_CONFIGS).items()}
_SUM_CONFIG = triton.Config({"BLOCK": SUM_BLOCK}, num_warps=4, num_stages=1)
_sum = {fp32: Launcher("matmul_tn_sum_partials", _sum_partials_kernel, [_SUM_CONFIG], _SUM_CONFIG,
                       [], lambda c, elem, consts: (0, 0))
        for fp32 in (False, True)}

_TN_TYPES = {"out_ptr": "*fp32"}          # the split path's fp32 partials
SPECS = [
    KernelSpec("matmul_tn", "wide", _matmul_tn_kernel, _wide, types={"out_ptr": "*T"},
               unit_strides=("stride_a_m", "stride_b_p", "stride_out_p")),      # dW
    KernelSpec("matmul_tn", "narrow", _matmul_tn_kernel, _narrow, types=_TN_TYPES,
               unit_strides=("stride_a_m", "stride_b_p", "stride_out_p"),       # dB, split
               buckets=lambda dt, flags: {"BLOCK_N": buckets(NARROW_MAX_P)}),
    # The split path (what the benchmark shapes run: their output tiles cannot fill the SMs),
    # with and without the gates and dropout (``lora_weight_grads(..., gates=, dropout=)``).
    KernelSpec("lora_weight_grads", "pointer", _lora_weight_grads_kernel, _lora_pair,
               types={"dA_ptr": "*fp32", "dB_ptr": "*fp32", "gates_ptr": "*fp32",
                      "col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32", "seed_ptr": "*i64"},
               unit_strides=("stride_x_i", "stride_dS_r", "stride_dy_o", "stride_SG_r",
                             "stride_dA_r", "stride_dB_r", "stride_gates_k"),
               unaligned=("stride_gates_n",),
               buckets=lambda dt, flags: {"BLOCK_N": buckets(DROPOUT_MAX_N if flags["P_DROP"] else NARROW_MAX_P)},
               # plain (direct calls), the op's call without and with dropout
               flags=({"GATED": False, "P_DROP": 0.0}, {"GATED": True, "P_DROP": 0.0},
                      {"GATED": True, "P_DROP": 0.1})),
    KernelSpec("matmul_tn_sum_partials", "pointer", _sum_partials_kernel, _sum,
               types={"part_ptr": "*fp32"}, unit_strides=("stride_out_p", "stride_out2_p"),
               dtypes=("bf16", "fp32"), listed=False),
]


def split_count(n: int, m: int, p: int, num_sms: int) -> int:
    """How many N chunks to reduce in parallel for an (m, p) output (after the narrow-side swap).

    The output tile count is estimated with 128 x min(128, p) tiles (the configs' typical size);
    when it cannot fill ``num_sms``, N is split until it can, keeping every chunk at least
    ``MIN_SPLIT_ROWS`` long.
    """
    tiles = triton.cdiv(m, 128) * triton.cdiv(p, 128)
    if tiles >= num_sms:
        return 1
    return max(1, min(triton.cdiv(num_sms, tiles), n // MIN_SPLIT_ROWS))


def _chunking(N, M, P, device, split_n):
    """``(chunk, split)``: rows per N chunk (a multiple of every BLOCK_K) and the chunk count."""
    if split_n is None:
        split_n = split_count(N, M, P, num_sms(device))
    if split_n < 1:
        raise ValueError(f"split_n must be >= 1, got {split_n}")
    align = 32 if INTERPRET else SPLIT_ALIGN
    chunk = triton.cdiv(triton.cdiv(N, split_n), align) * align
    return chunk, triton.cdiv(N, chunk)


def _sum_partials(part, out, out_m, out_p, out2=None, out2_m=0, out2_p=0, m0=None):
    """Sum the (SPLIT, M, P) partials in split order into ``out`` (rows < m0) and ``out2``."""
    split, M, P = part.shape
    m0 = M if m0 is None else m0
    out2 = out if out2 is None else out2
    _sum[out.dtype == torch.float32][(triton.cdiv(M * P, SUM_BLOCK),)](
        part, out, out2, M, m0, P, split, out_m, out_p, out2_m, out2_p)
    LAUNCH_COUNTS["matmul_tn_sum_partials"] += 1


def matmul_tn(a, b, out_dtype, *, out=None, split_n=None):
    """``a^T @ b``: a (N, M), b (N, P) of one dtype, any strides -> (M, P) in ``out_dtype``.

    fp32 accumulation; deterministic (see the module docstring). ``out``: optional (M, P) buffer
    to write into. ``split_n``: number of N chunks (default: ``split_count``'s heuristic); tests
    force the split path with it.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"matmul_tn: expected a (N, M) and b (N, P), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul_tn: a and b must share one dtype, got {a.dtype} and {b.dtype}")
    N, M = a.shape
    P = b.shape[1]
    out = check_out(out, "out", (M, P), out_dtype, a.device)
    if M == 0 or P == 0:
        return out
    if N == 0:
        return out.zero_()

    # Kernel frame: the narrow side of the output on the P axis.
    out_m, out_p = out.stride()
    if M < P:
        a, b, M, P, out_m, out_p = b, a, P, M, out_p, out_m
    try:
        chunk, split_n = _chunking(N, M, P, a.device, split_n)
    except ValueError as e:
        raise ValueError(f"matmul_tn: {e}") from None

    if split_n == 1:
        target, strides = out, (0, out_m, out_p)
    else:
        target = torch.empty((split_n, M, P), dtype=torch.float32, device=a.device)
        strides = target.stride()
    fp32 = a.dtype == torch.float32
    if P <= NARROW_MAX_P:
        launcher, meta = _narrow[fp32], {"BLOCK_N": max(16, triton.next_power_of_2(P))}
        grid = lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(P, meta["BLOCK_N"]), split_n)
    else:
        launcher, meta = _wide[fp32], {}
        grid = lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(P, c["BLOCK_N"]), split_n)
    with on_device(a):
        launcher[grid](
            a, b, target, N, M, P, chunk, n_bucket(N),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), *strides,
            DOT_PRECISION=dot_precision(a), **meta,
        )
        LAUNCH_COUNTS["matmul_tn"] += 1
        if split_n > 1:
            _sum_partials(target, out, out_m, out_p)
    return out


def lora_weight_grads(x2d, dy, dS, SG, out_dtype, *, out=None, split_n=None, gates=None,
                      dropout=None):
    """``(dA, dB)``: ``dA = dS^T @ x2d`` (R, D_in) and ``dB = dy^T @ SG`` (D_out, R) in
    ``out_dtype``, from ONE GEMM launch (plus one fixed-order partial-sum launch when N is split).

    x2d (N, D_in), dy (N, D_out), dS and SG (N, R) (the columns whose adapters train), one dtype,
    any strides; R <= ``NARROW_MAX_P``-wide tiles are the fast case, wider banks take several
    column tiles. Deterministic (no float atomics). ``out``: optional ``(dA, dB)`` buffers;
    ``split_n`` as ``matmul_tn``.

    ``gates``: optional ``(gates2d, col_adapter, col_scale)`` of these R columns (gates2d (N, K)
    any float dtype, a row-stride-0 view for per-adapter gates; col_adapter (R,) int;
    col_scale (R,) float). Then the fourth operand is the saved ``S`` and the kernel forms
    ``SG = S * G_E`` tile by tile (fp32 product rounded to S's dtype, as the op's own recompute
    does), which saves the op the elementwise launches that would build SG first.

    ``dropout``: optional ``(p, seed)``, the call's LoRA dropout (``kernels/dropout.py``): then
    ``dA = dS^T @ drop(x2d)``, the mask regenerated from ``seed`` (a (1,) int64 tensor) in the
    kernel; ``dB`` is unchanged.
    """
    for name, t in (("x2d", x2d), ("dy", dy), ("dS", dS), ("SG", SG)):
        if t.dim() != 2 or t.shape[0] != x2d.shape[0]:
            raise ValueError(f"lora_weight_grads: {name} must be (N, *) with N = {x2d.shape[0]}, "
                             f"got {tuple(t.shape)}")
    if dS.shape[1] != SG.shape[1]:
        raise ValueError(f"lora_weight_grads: dS {tuple(dS.shape)} and SG {tuple(SG.shape)} "
                         "must have the same columns")
    dtypes = {t.dtype for t in (x2d, dy, dS, SG)}
    if len(dtypes) != 1:
        raise TypeError(f"lora_weight_grads: operands must share one dtype, got {sorted(map(str, dtypes))}")
    N, D_in = x2d.shape
    D_out, R = dy.shape[1], dS.shape[1]
    if gates is not None:
        gates2d, col_adapter, col_scale = gates
        if gates2d.dim() != 2 or gates2d.shape[0] != N or col_adapter.shape != (R,) \
                or col_scale.shape != (R,):
            raise ValueError(f"lora_weight_grads: gates must be ((N, K), (R,), (R,)) with N = {N}, "
                             f"R = {R}, got {tuple(gates2d.shape)}, {tuple(col_adapter.shape)}, "
                             f"{tuple(col_scale.shape)}")
        col_adapter = col_adapter.to(device=x2d.device, dtype=torch.int32).contiguous()
        col_scale = col_scale.to(device=x2d.device, dtype=torch.float32).contiguous()
    dA_out, dB_out = out if out is not None else (None, None)
    dA = check_out(dA_out, "out[0] (dA)", (R, D_in), out_dtype, x2d.device)
    dB = check_out(dB_out, "out[1] (dB)", (D_out, R), out_dtype, x2d.device)
    if R == 0 or (D_in == 0 and D_out == 0):
        return dA, dB
    if N == 0:
        return dA.zero_(), dB.zero_()
    try:
        chunk, split_n = _chunking(N, D_in + D_out, R, x2d.device, split_n)
    except ValueError as e:
        raise ValueError(f"lora_weight_grads: {e}") from None

    # Kernel frame: dA^T (D_in, R) and dB (D_out, R); dA^T's (m, p) strides are dA's swapped.
    if split_n == 1:
        tA, sA = dA, (0, dA.stride(0), dA.stride(1))
        tB, sB = dB, (0, dB.stride(0), dB.stride(1))
    else:
        part = torch.empty((split_n, D_in + D_out, R), dtype=torch.float32, device=x2d.device)
        tA, sA = part, (part.stride(0), 1, R)                 # (s, r, i) strides of dA^T rows
        tB, sB = part[:, D_in:], (part.stride(0), R, 1)       # (s, o, r)
    cap = DROPOUT_MAX_N if dropout is not None and dropout[0] > 0 else NARROW_MAX_P
    block_n = min(max(16, triton.next_power_of_2(R)), cap)
    tiles_p = triton.cdiv(R, block_n)
    grid = lambda c: ((triton.cdiv(D_in, c["BLOCK_M"]) + triton.cdiv(D_out, c["BLOCK_M"])) * tiles_p,
                      split_n)
    with on_device(x2d):
        g_args = (gates2d, col_adapter, col_scale) if gates is not None else (SG, SG, SG)
        g_strides = (gates2d.stride(0), gates2d.stride(1)) if gates is not None else (0, 0)
        p_drop, seed = dropout if dropout is not None else (0.0, x2d)
        _lora_pair[x2d.dtype == torch.float32][grid](
            x2d, dS, tA, dy, SG, tB, *g_args, seed,
            N, D_in, D_out, R, chunk, n_bucket(N),
            x2d.stride(0), x2d.stride(1), dS.stride(0), dS.stride(1), *sA,
            dy.stride(0), dy.stride(1), SG.stride(0), SG.stride(1), *sB, *g_strides,
            DOT_PRECISION=dot_precision(x2d), GATED=gates is not None, P_DROP=float(p_drop),
            BLOCK_N=block_n,
        )
        LAUNCH_COUNTS["lora_weight_grads"] += 1
        if split_n > 1:
            _sum_partials(part, dA, dA.stride(1), dA.stride(0), dB, dB.stride(0), dB.stride(1),
                          m0=D_in)
    return dA, dB
