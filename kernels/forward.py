"""Triton forward kernels: the gated shrink and the fused base-plus-adapter GEMM, with launchers.

    shrink(x2d, lora_A, gates2d, col_adapter, col_scale) -> (S, SG)
        S  = x2d @ lora_A^T                                  (N, R_act)  x.dtype
        SG = S * gates2d[n, col_adapter[j]] * col_scale[j]   (N, R_act)  x.dtype, from the fp32 acc

    fused_forward(x2d, weight, bias, SG, lora_B, *, variant=None) -> y
        y = x2d @ weight^T + bias + SG @ lora_B^T            (N, D_out)  x.dtype
        ONE fp32 accumulator: the K-loop runs over D_in (x, weight tiles), then carries on over
        R_act (SG, lora_B tiles) as extra K-steps; the bias is added and y is written once.

The launchers follow docs/DESIGN.md: inputs are already validated upstream (any strides, same
dtype and device), outputs are freshly allocated unless the caller passes ``out=`` (tests pre-fill
it with NaN to prove every element is written). ``SG`` is returned as an ``(N, R_act)`` view of an
``(N, pad16(R_act))`` buffer, so its rows are 16-byte aligned and the descriptor kernels can read it.

Two implementations of ``fused_forward`` (``variant=``, else ``LITELORA_KERNEL_VARIANT``, else
chosen by the inputs; see ``kernels.tuning``):
- "pointer": the kernel below, masked pointer loads, any strides (transposed or sliced ``x`` and
  ``weight``). On sm_90 these compile to cp.async pipelines feeding wgmma.
- "tma", "tma_persistent", "tma_ws": ``kernels.fused_tma``, tensor-descriptor loads, when ``x``,
  ``weight`` and ``y`` have unit inner strides and 16-byte aligned rows (the usual nn.Linear case).

Precision: fp32 accumulation everywhere. fp16/bf16 operands use the tensor cores directly; fp32
operands follow torch's TF32 setting on the GPU (``tuning.dot_precision``) and are exact fp32
("ieee") under ``TRITON_INTERPRET=1``, so CPU tests match a float64 reference to ~1e-5.
Kernels take no Python float scalars (the gate scalings arrive as the fp32 table ``col_scale``),
so nothing arrives as fp64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS, fused_tma
from .tiles import grouped_tile, rank_tile, two_stretch_tile
from .tuning import (block_r, check_out, choose_variant, dot_precision, fit_stages, n_bucket,
                     on_device, padded_columns, tuned)

# ---------------------------------------------------------------------------------------------
# Launch configs (data). Target: H200 (sm_90, 227 KiB shared memory per block, 132 SMs), bf16,
# N in {2048, 8192, 16384} tokens, D_in/D_out in {4096, 14336}, R_act 16..256.
# UNTUNED: chosen from the Triton matmul tutorial's CUDA list and common Hopper practice
# (128x128/128x256 tiles, BLOCK_K 64, 8 warps = 2 warpgroups for wgmma, 3-4 stages); nobody has
# timed them on an H200 yet. ``tuning.fit_stages`` lowers the stages or drops a config whose
# pipelined tiles would not fit in shared memory. The first entry is the LITELORA_AUTOTUNE=0 pick.
# ---------------------------------------------------------------------------------------------
FUSED_FORWARD_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    # Fewer, narrower tiles for N = 2048 rows so every SM still gets work.
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
]
# fp32 operands (TF32 wgmma): half the elements per byte of shared memory, twice the registers
# per loaded element; 128x128x32 tiles keep 3 stages and compile without register spills.
FUSED_FORWARD_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
]
# The shrink reads x once and writes N x R_act: memory-bound. Row tiles of 64 or 128 trade parallel
# programs (N = 2048 gives 16..32 of them) against re-reading lora_A's tile per program; 64 rows is
# the floor, as wgmma needs 64 rows per warpgroup (32-row tiles compile to the older mma.sync).
SHRINK_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]
# fp32: 64-deep tiles hold a stage in the shared memory of bf16's 128-deep ones; spill-free in the
# sm_90 compile with TF32 on and off (compile report), with S tiles of at most 64 columns.
SHRINK_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
]
# Under TRITON_INTERPRET=1: small tiles so that test shapes of tens of rows still cross several
# tile edges in every dimension (and a partial GROUP_M group), and one config, so the
# interpreter never benchmarks.
FUSED_FORWARD_INTERPRETER_CONFIG = triton.Config(
    {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2}, num_warps=4, num_stages=1)
SHRINK_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_K": 16}, num_warps=4, num_stages=1)

# The adapter stretch of the pointer kernel's K-loop steps over R_act in BLOCK_R columns; the
# shrink holds BLOCK_R columns of S per program (a power of two >= 16, ``tuning.block_r``).
FUSED_MAX_BLOCK_R = 64
SHRINK_MAX_BLOCK_R = 128
# fp32: a 64 x 128 fp32 tile of S next to exact-fp32 (FMA) products spills (592 B per thread in
# the sm_90 compile with TF32 off); 64-column tiles do not.
SHRINK_FP32_MAX_BLOCK_R = 64


# ---------------------------------------------------------------------------------------------
# Kernels.
# ---------------------------------------------------------------------------------------------
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
    acc, g_e, _, _, _, out_m, out_r, mask = rank_tile(
        tl.program_id(0), N, R_act, D_in, x_ptr, lora_A_ptr, stride_x_n, stride_x_i,
        stride_lora_A_i, stride_lora_A_r, col_adapter_ptr, col_scale_ptr, gates_ptr,
        stride_gates_n, stride_gates_k, drop_seed, DOT_PRECISION, BLOCK_M, BLOCK_K, BLOCK_R,
        P_DROP)
    sg = acc * g_e
    tl.store(S_ptr + out_m[:, None] * stride_S_n + out_r[None, :] * stride_S_r,
             acc.to(S_ptr.dtype.element_ty), mask=mask)
    tl.store(SG_ptr + out_m[:, None] * stride_SG_n + out_r[None, :] * stride_SG_r,
             sg.to(SG_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_forward_kernel(
    x_ptr,            # (N, D_in)      any strides
    weight_ptr,       # (D_out, D_in)  any strides
    bias_ptr,         # (D_out,)       or a placeholder when HAS_BIAS is False
    SG_ptr,           # (N, R_act)     S * G_E from the shrink; placeholder when R_act == 0
    lora_B_ptr,       # (D_out, R_act) active columns of B_cat; placeholder when R_act == 0
    y_ptr,            # (N, D_out)     out
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_x_n, stride_x_i,
    stride_weight_o, stride_weight_i,
    stride_bias_o,
    stride_SG_n, stride_SG_r,
    stride_lora_B_o, stride_lora_B_r,
    stride_y_n, stride_y_o,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped tile order: a group of x row tiles reuses the same weight column tiles from L2.
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    # x @ weight^T over D_in, then SG @ lora_B^T over R_act, one accumulator (W and lora_B are
    # read transposed: their (k, n) strides are (i, o) and (r, o)).
    acc, offs_m, offs_n, cols = two_stretch_tile(
        pid_m, pid_n, N, D_out, D_in, R_act, x_ptr, weight_ptr, SG_ptr, lora_B_ptr,
        stride_x_n, stride_x_i, stride_weight_i, stride_weight_o,
        stride_SG_n, stride_SG_r, stride_lora_B_r, stride_lora_B_o,
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * stride_bias_o).to(tl.float32)[None, :]

    out_m = offs_m.to(tl.int64)
    out_n = offs_n.to(tl.int64)
    mask = (offs_m < N)[:, None] & (offs_n < D_out)[None, :]
    tl.store(y_ptr + out_m[:, None] * stride_y_n + out_n[None, :] * stride_y_o,
             acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------
def shrink_smem_per_stage(config, elem_bytes, block_r_):
    return (config.kwargs["BLOCK_M"] + block_r_) * config.kwargs["BLOCK_K"] * elem_bytes


def fused_smem_per_stage(config, elem_bytes):
    c = config.kwargs
    return (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * elem_bytes


def _prune_shrink(configs, named_args, **kwargs):
    elem = named_args["x_ptr"].element_size()
    return fit_stages(configs, lambda c: shrink_smem_per_stage(c, elem, kwargs["BLOCK_R"]))


def _prune_fused(configs, named_args, **kwargs):
    elem = named_args["x_ptr"].element_size()
    return fit_stages(configs, lambda c: fused_smem_per_stage(c, elem))


def _by_dtype(kernel, configs, fp32_configs, interpreter_config, key, prune):
    """One launcher per operand width: fp32 has its own (spill-free) config list."""
    return {False: tuned(kernel, configs, interpreter_config, key=key, prune=prune),
            True: tuned(kernel, fp32_configs, interpreter_config, key=key, prune=prune)}


_shrink_launch = _by_dtype(_shrink_kernel, SHRINK_CONFIGS, SHRINK_FP32_CONFIGS,
                           SHRINK_INTERPRETER_CONFIG, ["N_BUCKET", "D_in", "R_act", "DOT_PRECISION"], _prune_shrink)
_fused_forward_launch = _by_dtype(_fused_forward_kernel, FUSED_FORWARD_CONFIGS,
                                  FUSED_FORWARD_FP32_CONFIGS, FUSED_FORWARD_INTERPRETER_CONFIG,
                                  ["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"], _prune_fused)


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
    assert lora_A.shape[1] == D_in and gates2d.shape[0] == N, "shrink: shape mismatch"
    assert col_adapter.shape == (R_act,) and col_scale.shape == (R_act,), "shrink: column tables"
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
    br = block_r(R_act, SHRINK_FP32_MAX_BLOCK_R if x2d.dtype == torch.float32 else SHRINK_MAX_BLOCK_R)
    p_drop, seed = dropout if dropout is not None else (0.0, x2d)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(R_act, br),)

    with on_device(x2d):
        _shrink_launch[x2d.dtype == torch.float32][grid](
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


def fused_forward(x2d, weight, bias, SG, lora_B, *, out=None, variant=None):
    """``y = x2d @ weight^T + bias + SG @ lora_B^T`` ``(N, D_out)`` in x's dtype, one accumulator.

    ``bias`` may be ``None``; ``SG`` ``(N, R_act)`` and ``lora_B`` ``(D_out, R_act)`` may have
    ``R_act == 0`` (no active adapter: the adapter steps are skipped). ``out``: optional ``y``
    buffer. ``variant``: "pointer", "tma", "tma_persistent", "tma_ws" or None (the environment
    variable ``LITELORA_KERNEL_VARIANT``, else the descriptor kernels when ``x2d``, ``weight`` and
    ``y`` are descriptor-legal on an sm_90+ GPU or the interpreter, else "pointer"); a forced
    descriptor variant on operands that cannot take it raises ``ValueError``.
    ``LAUNCH_COUNTS["fused_forward/<variant>"]`` records which one ran.
    """
    N, D_in = x2d.shape
    D_out = weight.shape[0]
    R_act = SG.shape[1]
    assert weight.shape[1] == D_in and SG.shape[0] == N, "fused_forward: shape mismatch"
    assert lora_B.shape == (D_out, R_act), "fused_forward: lora_B must be (D_out, R_act)"
    assert bias is None or bias.shape == (D_out,), "fused_forward: bias must be (D_out,)"
    y = check_out(out, "y", (N, D_out), x2d.dtype, x2d.device)
    if N == 0 or D_out == 0:
        return y
    ws_ok = fused_tma.ws_fits(R_act, x2d.dtype == torch.float32, b_kmajor=True)
    precision = dot_precision(x2d)
    chosen = choose_variant(variant, x2d.device, (x2d, weight, y), ws_ok, precision)
    if chosen != "pointer":
        fused_tma.launch(x2d, weight, SG, lora_B, y, bias, b_kmajor=True, variant=chosen,
                         precision=precision)
    else:
        # Unused pointers still need a valid tensor argument; constexprs/loop bounds keep them unread.
        bias_arg = bias if bias is not None else x2d
        sg_arg, b_arg = (SG, lora_B) if R_act > 0 else (x2d, weight)

        def grid(meta):
            return (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(D_out, meta["BLOCK_N"]),)

        with on_device(x2d):
            _fused_forward_launch[x2d.dtype == torch.float32][grid](
                x2d, weight, bias_arg, sg_arg, b_arg, y,
                N, D_in, D_out, R_act, n_bucket(N),
                x2d.stride(0), x2d.stride(1),
                weight.stride(0), weight.stride(1),
                bias.stride(0) if bias is not None else 0,
                sg_arg.stride(0), sg_arg.stride(1),
                b_arg.stride(0), b_arg.stride(1),
                y.stride(0), y.stride(1),
                HAS_BIAS=bias is not None, DOT_PRECISION=precision,
                BLOCK_R=block_r(R_act, FUSED_MAX_BLOCK_R),
            )
    LAUNCH_COUNTS["fused_forward"] += 1
    LAUNCH_COUNTS[f"fused_forward/{chosen}"] += 1
    return y
