"""Triton weight-gradient GEMM ``a^T @ b`` (dA, dB, dW), deterministic, with its launcher.

    matmul_tn(a, b, out_dtype) -> a^T @ b      a (N, M), b (N, P) -> (M, P); reduction over N

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
the shape wgmma wants.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .tiles import dot_loop, grouped_tile
from .tuning import INTERPRET, check_out, dot_precision, fit_stages, n_bucket, on_device, tuned

__all__ = ["matmul_tn", "split_count"]

# ---------------------------------------------------------------------------------------------
# Launch configs (data). Target: H200 (Hopper, sm_90, 132 SMs), bf16, reduction N in
# {2048, 8192, 16384}. UNTUNED: written without a GPU from Hopper rules of thumb (>= 64 rows per
# warpgroup for wgmma, 3-5 stages inside 227 KiB of shared memory). The first entry of each list
# is what LITELORA_AUTOTUNE=0 launches (after the shared-memory fit).
# ---------------------------------------------------------------------------------------------

# Wide outputs: dW (4096 x 14336 or 4096 x 4096) and banks with R_act > 64. Compute-bound GEMM
# tiles, as for the forward GEMM.
MATMUL_TN_WIDE_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_P": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_P": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]

# Narrow outputs: dA / dB at r = 16..64 (the thin side padded to BLOCK_P = 16..64 by the
# launcher). Memory-bound on the wide operand: long reduction tiles, deep pipelines, and the
# split-N path to fill the SMs.
MATMUL_TN_NARROW_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 64, "GROUP_M": 1}, num_warps=4, num_stages=5),
]

# Under the interpreter: small tiles so test shapes cover several tiles and ragged edges.
_WIDE_INTERPRET = triton.Config({"BLOCK_M": 32, "BLOCK_P": 32, "BLOCK_K": 32, "GROUP_M": 2},
                                num_warps=4, num_stages=1)
_NARROW_INTERPRET = triton.Config({"BLOCK_M": 32, "BLOCK_K": 32, "GROUP_M": 1},
                                  num_warps=4, num_stages=1)

NARROW_MAX_P = 64            # outputs at most this wide (after the swap) use the narrow configs
SPLIT_ALIGN = 256            # chunk lengths are multiples of every BLOCK_K above
MIN_SPLIT_ROWS = 1024        # below this a chunk's partial write + read outweighs its share of work
SUM_BLOCK = 1024             # elements per program of the partial-sum kernel
_CPU_NUM_SMS = 4             # what the split heuristic assumes under the interpreter


@triton.jit
def _matmul_tn_kernel(
    a_ptr,      # (N, M) left operand, read transposed
    b_ptr,      # (N, P) right operand, a's dtype
    out_ptr,    # (M, P) result in out_dtype, or (SPLIT, M, P) float32 partials
    N, M, P, chunk,
    N_BUCKET,   # autotune key only
    stride_a_n, stride_a_m, stride_b_n, stride_b_p, stride_o_s, stride_o_m, stride_o_p,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Axis 0: output tiles in grouped order (GROUP_M row tiles share one b column tile in L2).
    # Axis 1: the N chunk this program reduces over (one chunk when not split).
    pid_m, pid_p = grouped_tile(tl.program_id(0), M, P, BLOCK_M, BLOCK_P, GROUP_M)
    pid_s = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_k = tl.arange(0, BLOCK_K)
    rows_m = (offs_m % M).to(tl.int64)
    cols_p = (offs_p % P).to(tl.int64)
    n_start = pid_s.to(tl.int64) * chunk
    n_len = tl.minimum(N - pid_s * chunk, chunk)

    # a's tile is gathered as (BLOCK_M, BLOCK_K), i.e. already transposed for the dot.
    a_ptrs = a_ptr + n_start * stride_a_n + rows_m[:, None] * stride_a_m + offs_k[None, :] * stride_a_n
    b_ptrs = b_ptr + n_start * stride_b_n + offs_k[:, None] * stride_b_n + cols_p[None, :] * stride_b_p
    acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    acc = dot_loop(acc, a_ptrs, b_ptrs, n_len, stride_a_n, stride_b_n, BLOCK_K, DOT_PRECISION)

    out_ptrs = (out_ptr + pid_s.to(tl.int64) * stride_o_s
                + offs_m.to(tl.int64)[:, None] * stride_o_m + offs_p.to(tl.int64)[None, :] * stride_o_p)
    mask = (offs_m[:, None] < M) & (offs_p[None, :] < P)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sum_partials_kernel(
    part_ptr,   # (SPLIT, M, P) float32 partials, contiguous
    out_ptr,    # (M, P) result in out_dtype
    M, P, SPLIT,
    stride_o_m, stride_o_p,
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
    tl.store(out_ptr + m * stride_o_m + p * stride_o_p, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _smem(nargs, block_p):
    size = nargs["a_ptr"].element_size()
    return lambda c: (c.kwargs["BLOCK_M"] + c.kwargs.get("BLOCK_P", block_p)) * c.kwargs["BLOCK_K"] * size


def _prune_wide(configs, nargs, **_):
    return fit_stages(configs, _smem(nargs, None))


def _prune_narrow(configs, nargs, BLOCK_P, **_):
    return fit_stages(configs, _smem(nargs, BLOCK_P))


_KEY = ["M", "P", "N_BUCKET", "chunk"]
_wide = tuned(_matmul_tn_kernel, MATMUL_TN_WIDE_CONFIGS, _WIDE_INTERPRET, key=_KEY, prune=_prune_wide)
_narrow = tuned(_matmul_tn_kernel, MATMUL_TN_NARROW_CONFIGS, _NARROW_INTERPRET,
                key=_KEY + ["BLOCK_P"], prune=_prune_narrow)


def _num_sms(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _CPU_NUM_SMS


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
    if split_n is None:
        split_n = split_count(N, M, P, _num_sms(a.device))
    if split_n < 1:
        raise ValueError(f"matmul_tn: split_n must be >= 1, got {split_n}")
    align = 32 if INTERPRET else SPLIT_ALIGN
    chunk = triton.cdiv(triton.cdiv(N, split_n), align) * align
    split_n = triton.cdiv(N, chunk)

    if split_n == 1:
        target, strides = out, (0, out_m, out_p)
    else:
        target = torch.empty((split_n, M, P), dtype=torch.float32, device=a.device)
        strides = target.stride()
    if P <= NARROW_MAX_P:
        launcher, meta = _narrow, {"BLOCK_P": max(16, triton.next_power_of_2(P))}
        grid = lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(P, meta["BLOCK_P"]), split_n)
    else:
        launcher, meta = _wide, {}
        grid = lambda c: (triton.cdiv(M, c["BLOCK_M"]) * triton.cdiv(P, c["BLOCK_P"]), split_n)
    with on_device(a):
        launcher[grid](
            a, b, target, N, M, P, chunk, n_bucket(N),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), *strides,
            DOT_PRECISION=dot_precision(a), **meta,
        )
        LAUNCH_COUNTS["matmul_tn"] += 1
        if split_n > 1:
            _sum_partials_kernel[(triton.cdiv(M * P, SUM_BLOCK),)](
                target, out, M, P, split_n, out_m, out_p, BLOCK=SUM_BLOCK)
            LAUNCH_COUNTS["matmul_tn_sum_partials"] += 1
    return out


def aot_specs(make_spec, aligned):
    """Ahead-of-time compile specs (see ``backward._aot_specs``): every shipped config in bf16.

    Wide: dW = dy^T @ x, contiguous, written straight to the output. Narrow: dB = dy^T @ SG at
    BLOCK_P = 16 and 64 into fp32 split partials (the benchmark shapes always split), plus dA =
    dS^T @ x swapped and unsplit (a column-major store). Plus the partial-sum kernel, and one fp16
    variant of each GEMM family.
    """
    bf16 = {"a_ptr": torch.empty(0, dtype=torch.bfloat16)}
    specs = []

    def add(dtype, out_type, c, block_p, out_consts, tag):
        consts = dict(c.kwargs, DOT_PRECISION="tf32", stride_a_m=1, stride_b_p=1, **out_consts)
        if block_p is not None:
            consts["BLOCK_P"] = block_p
        ptrs = {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}", "out_ptr": out_type}
        k = consts
        label = (f"{k['BLOCK_M']}x{k['BLOCK_P']}x{k['BLOCK_K']} G{k['GROUP_M']} "
                 f"w{c.num_warps} s{c.num_stages} {dtype} {tag}")
        specs.append(make_spec("matmul_tn", _matmul_tn_kernel, ptrs, consts, c.num_warps,
                               c.num_stages, config=label,
                               aligned=aligned(_matmul_tn_kernel, consts)))

    wide = _prune_wide(MATMUL_TN_WIDE_CONFIGS, bf16)
    for c in wide:
        add("bf16", "*bf16", c, None, {"stride_o_p": 1}, "dW")
    add("fp16", "*fp16", wide[0], None, {"stride_o_p": 1}, "dW")
    for bp in (16, NARROW_MAX_P):
        narrow = _prune_narrow(MATMUL_TN_NARROW_CONFIGS, bf16, BLOCK_P=bp)
        for c in narrow:
            add("bf16", "*fp32", c, bp, {"stride_o_p": 1}, "dB split")
    add("bf16", "*bf16", narrow[0], 16, {"stride_o_m": 1}, "dA swapped")
    add("fp16", "*fp32", narrow[0], 16, {"stride_o_p": 1}, "dB split")

    for out in ("bf16", "fp32"):
        consts = {"BLOCK": SUM_BLOCK, "stride_o_p": 1}
        specs.append(make_spec("matmul_tn_sum_partials", _sum_partials_kernel,
                               {"part_ptr": "*fp32", "out_ptr": f"*{out}"}, consts, 4, 3,
                               config=f"{SUM_BLOCK} w4 {out}",
                               aligned=aligned(_sum_partials_kernel, consts)))
    return specs
