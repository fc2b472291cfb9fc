"""Triton backward kernels of the gated LoRA linear, with their launchers.

    grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad) -> (dS, P)
        dS_g = dy @ lora_B (fp32 accumulator, never stored); dS = dS_g * G_E; P = dS_g * S * s
    fused_dx(dy, weight, dS, lora_A, *, variant=None) -> dx = dy @ weight + dS @ lora_A
        one accumulator; "pointer" kernel below or the descriptor kernels of ``fused_tma``
        (same variant switch as ``forward.fused_forward``)
    matmul_tn(a, b, out_dtype) -> a^T @ b     (re-exported from ``weight_grad``: dA, dB, dW)
    lora_weight_grads(x2d, dy, dS, SG, out_dtype) -> (dA, dB)   (re-exported, one GEMM launch)

``G_E[n, j] = gates2d[n, col_adapter[j]] * col_scale[j]`` (docs/DESIGN.md). The chain rule behind
them, for ``y = x W^T + b + (S * G_E) B^T`` with ``S = x A^T``:

    dL/d(S*G_E) = dy @ B           = dS_g
    dL/dS       = dS_g * G_E       = dS      -> dx += dS @ A,   dA = dS^T @ x
    dL/dG_E     = dS_g * S                    -> dg[., k] = s_k * sum_{j in k} dS_g * S  (P)
    dL/dB       = dy^T @ (S * G_E)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS, fused_tma
from .tiles import grouped_tile, rank_tile, two_stretch_tile
from .tuning import (block_r, check_out, choose_variant, dot_precision, fit_stages, n_bucket,
                     on_device, padded_columns, tuned)
from .weight_grad import lora_weight_grads, matmul_tn

__all__ = ["grad_shrink", "fused_dx", "matmul_tn", "lora_weight_grads"]

# ---------------------------------------------------------------------------------------------
# Launch configs (data). Target: H200 (Hopper, sm_90, 132 SMs), bf16, N in {2048, 8192, 16384}
# rows, D_out / D_in in {4096, 14336}, R_act in 16..256. UNTUNED: written without a GPU from the
# Hopper rules of thumb (tiles of >= 64 rows per warpgroup so tl.dot lowers to wgmma, 3-5 stages
# inside 227 KiB of shared memory); autotuning picks among them per shape on first use. The first
# entry of each list is what LITELORA_AUTOTUNE=0 launches (after the shared-memory fit). Lists are
# short on purpose: each config costs a ~1.5 s compile and a timing per shape on the GPU.
# ---------------------------------------------------------------------------------------------

# grad_shrink streams dy (N x D_out) once against a thin lora_B (D_out x R): memory-bound. Small
# row tiles give enough programs to fill 132 SMs at N = 8192 (128 tiles of 64); long K tiles and
# deep pipelines keep HBM busy. BLOCK_R (all R columns, up to 128) comes from the launcher.
GRAD_SHRINK_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=6),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=5),
]
# fp32: the bf16 list spills in fp32 at R_act = 128 (TF32: 688 B per thread for 64x128x128 w4,
# 16 B for 128x128x64 w8: the accumulator plus the gate and S tiles of the epilogue); 64 x 64
# with 8 warps does not (compile report, TF32 and exact).
GRAD_SHRINK_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
]

# fused_dx is the base GEMM N x D_in x D_out (compute-bound) plus R extra K-steps: the classic
# Hopper GEMM tiles of the Triton matmul tutorial. GROUP_M orders tiles so a group of row tiles
# reuses the same weight column tiles from L2.
FUSED_DX_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=5),
]
FUSED_DX_FP32_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
]

# Under the interpreter: one config with small tiles, so test shapes of tens of rows still cover
# several tiles, ragged edges and multi-step reduction loops.
_GRAD_SHRINK_INTERPRET = triton.Config({"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=4, num_stages=1)
_FUSED_DX_INTERPRET = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2},
                                    num_warps=4, num_stages=1)

# All R columns in one tile up to this width (one pass over dy); wider banks take several tiles
# (neighbouring programs, so dy's second read hits L2). 256 spills on sm_90: the fp32
# accumulator plus the gate and S tiles of the epilogue exceed 255 registers per thread.
GRAD_SHRINK_MAX_BLOCK_R = 128
# fused_dx steps through the R adapter columns in tiles of at most this many.
FUSED_DX_MAX_BLOCK_R = 64


# ---------------------------------------------------------------------------------------------
# grad_shrink
# ---------------------------------------------------------------------------------------------

@triton.jit
def _grad_shrink_kernel(
    dy_ptr,           # (N, D_out) upstream gradient
    lora_B_ptr,       # (D_out, R_act) active bank's up-projection, dy's dtype
    S_ptr,            # (N, R_act) saved shrink output, any float dtype (read only if NEED_GATE_GRAD)
    gates_ptr,        # (N, K) gates2d, any float dtype; row stride 0 for per-adapter gates
    col_adapter_ptr,  # (R_act,) int32: adapter index of each column
    col_scale_ptr,    # (R_act,) float32: that adapter's scaling s_k
    dS_ptr,           # (N, R_act) out: dS_g * G_E in dy's dtype
    P_ptr,            # (N, R_act) out: dS_g * S * s in float32 (written only if NEED_GATE_GRAD)
    N, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_dy_n, stride_dy_o, stride_lora_B_o, stride_lora_B_r, stride_S_n, stride_S_r,
    stride_gates_n, stride_gates_k, stride_dS_n, stride_dS_r, stride_P_n, stride_P_r,
    NEED_GATE_GRAD: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    acc, g_e, scale, rows, cols, out_m, out_r, mask = rank_tile(
        tl.program_id(0), N, R_act, D_out, dy_ptr, lora_B_ptr, stride_dy_n, stride_dy_o,
        stride_lora_B_o, stride_lora_B_r, col_adapter_ptr, col_scale_ptr, gates_ptr,
        stride_gates_n, stride_gates_k, 0, DOT_PRECISION, BLOCK_M, BLOCK_K, BLOCK_R, 0.0)
    out_rows = out_m[:, None]
    out_cols = out_r[None, :]
    dS = acc * g_e
    tl.store(dS_ptr + out_rows * stride_dS_n + out_cols * stride_dS_r,
             dS.to(dS_ptr.dtype.element_ty), mask=mask)
    if NEED_GATE_GRAD:
        s = tl.load(S_ptr + rows[:, None] * stride_S_n + cols[None, :] * stride_S_r)
        p = acc * s.to(tl.float32) * scale[None, :]
        tl.store(P_ptr + out_rows * stride_P_n + out_cols * stride_P_r, p, mask=mask)


def grad_shrink_smem_per_stage(config, elem_bytes, block_r_):
    return (config.kwargs["BLOCK_M"] + block_r_) * config.kwargs["BLOCK_K"] * elem_bytes


def _prune_grad_shrink(configs, nargs, BLOCK_R, **_):
    elem = nargs["dy_ptr"].element_size()
    return fit_stages(configs, lambda c: grad_shrink_smem_per_stage(c, elem, BLOCK_R))


_grad_shrink = {
    fp32: tuned(_grad_shrink_kernel, GRAD_SHRINK_FP32_CONFIGS if fp32 else GRAD_SHRINK_CONFIGS,
                _GRAD_SHRINK_INTERPRET, key=["N_BUCKET", "D_out", "R_act", "NEED_GATE_GRAD", "DOT_PRECISION"],
                prune=_prune_grad_shrink)
    for fp32 in (False, True)}


def _check_2d(name, t, rows=None, cols=None):
    if t.dim() != 2 or (rows is not None and t.shape[0] != rows) or (cols is not None and t.shape[1] != cols):
        want = f"({'?' if rows is None else rows}, {'?' if cols is None else cols})"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


def _check_same_dtype(**tensors):
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        raise TypeError(f"matmul operands must share one dtype, got {dtypes}")


def grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad, *, out=None):
    """``(dS, P)`` of the active bank (see the module docstring).

    dy (N, D_out); lora_B (D_out, R_act) in dy's dtype; S (N, R_act); gates2d (N, K) any float
    dtype, any strides (a stride-0 expanded view for per-adapter gates); col_adapter (R_act,)
    int32; col_scale (R_act,) float32. ``P`` is None unless ``need_gate_grad`` (S is then not read).
    ``out``: optional ``(dS, P)`` buffers to write into (P None when not needed); without it
    ``dS`` is a view of a buffer padded to 16 columns (descriptor-legal rows for ``fused_dx``).
    """
    N, D_out = dy.shape
    _check_2d("lora_B", lora_B, rows=D_out)
    R_act = lora_B.shape[1]
    _check_2d("gates2d", gates2d, rows=N)
    if col_adapter.shape != (R_act,) or col_scale.shape != (R_act,):
        raise ValueError(f"col_adapter/col_scale: expected ({R_act},), got "
                         f"{tuple(col_adapter.shape)} and {tuple(col_scale.shape)}")
    if need_gate_grad:
        _check_2d("S", S, rows=N, cols=R_act)
    _check_same_dtype(dy=dy, lora_B=lora_B)
    out_dS, out_P = out if out is not None else (None, None)
    if out_dS is None:
        dS = padded_columns(N, R_act, dy.dtype, dy.device)
    else:
        dS = check_out(out_dS, "out[0] (dS)", (N, R_act), dy.dtype, dy.device)
    P = (check_out(out_P, "out[1] (P)", (N, R_act), torch.float32, dy.device)
         if need_gate_grad else None)
    if N == 0 or R_act == 0:
        if P is not None:
            P.zero_()
        return dS.zero_(), P

    col_adapter = col_adapter.to(device=dy.device, dtype=torch.int32).contiguous()
    col_scale = col_scale.to(device=dy.device, dtype=torch.float32).contiguous()
    tile_r = block_r(R_act, GRAD_SHRINK_MAX_BLOCK_R)
    S_arg, P_arg = (S, P) if need_gate_grad else (dS, dS)   # placeholders: never touched
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(R_act, tile_r),)
    with on_device(dy):
        _grad_shrink[dy.dtype == torch.float32][grid](
            dy, lora_B, S_arg, gates2d, col_adapter, col_scale, dS, P_arg,
            N, D_out, R_act, n_bucket(N),
            dy.stride(0), dy.stride(1), lora_B.stride(0), lora_B.stride(1),
            S_arg.stride(0), S_arg.stride(1), gates2d.stride(0), gates2d.stride(1),
            dS.stride(0), dS.stride(1), P_arg.stride(0), P_arg.stride(1),
            NEED_GATE_GRAD=bool(need_gate_grad), DOT_PRECISION=dot_precision(dy), BLOCK_R=tile_r,
        )
    LAUNCH_COUNTS["grad_shrink"] += 1
    return dS, P


# ---------------------------------------------------------------------------------------------
# fused_dx
# ---------------------------------------------------------------------------------------------

@triton.jit
def _fused_dx_kernel(
    dy_ptr,       # (N, D_out) upstream gradient
    weight_ptr,   # (D_out, D_in) base weight, dy's dtype
    dS_ptr,       # (N, R_act) adapter-column gradient from grad_shrink, dy's dtype
    lora_A_ptr,   # (R_act, D_in) active bank's down-projection, dy's dtype
    dx_ptr,       # (N, D_in) out, dy's dtype
    N, D_in, D_out, R_act,
    N_BUCKET,     # autotune key only
    stride_dy_n, stride_dy_o, stride_weight_o, stride_weight_i, stride_dS_n, stride_dS_r,
    stride_lora_A_r, stride_lora_A_i, stride_dx_n, stride_dx_i,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped tile order: a group of dy row tiles reuses the same weight column tiles from L2.
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    # dy @ weight over D_out, then dS @ lora_A over R_act, one accumulator.
    acc, offs_m, offs_n, _ = two_stretch_tile(
        pid_m, pid_n, N, D_in, D_out, R_act, dy_ptr, weight_ptr, dS_ptr, lora_A_ptr,
        stride_dy_n, stride_dy_o, stride_weight_o, stride_weight_i,
        stride_dS_n, stride_dS_r, stride_lora_A_r, stride_lora_A_i,
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_R)

    out_rows = offs_m.to(tl.int64)[:, None]
    out_cols = offs_n.to(tl.int64)[None, :]
    mask = (offs_m[:, None] < N) & (offs_n[None, :] < D_in)
    tl.store(dx_ptr + out_rows * stride_dx_n + out_cols * stride_dx_i,
             acc.to(dx_ptr.dtype.element_ty), mask=mask)


def fused_dx_smem_per_stage(config, elem_bytes):
    # The adapter loop's tiles (BLOCK_R <= BLOCK_K) never need more than the base loop's.
    return (config.kwargs["BLOCK_M"] + config.kwargs["BLOCK_N"]) * config.kwargs["BLOCK_K"] * elem_bytes


def _prune_fused_dx(configs, nargs, **_):
    elem = nargs["dy_ptr"].element_size()
    return fit_stages(configs, lambda c: fused_dx_smem_per_stage(c, elem))


_fused_dx = {
    fp32: tuned(_fused_dx_kernel, FUSED_DX_FP32_CONFIGS if fp32 else FUSED_DX_CONFIGS,
                _FUSED_DX_INTERPRET, key=["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"],
                prune=_prune_fused_dx)
    for fp32 in (False, True)}


def fused_dx(dy, weight, dS, lora_A, *, out=None, variant=None):
    """``dx = dy @ weight + dS @ lora_A`` (N, D_in) in dy's dtype, one fp32 accumulator.

    dy (N, D_out); weight (D_out, D_in); dS (N, R_act); lora_A (R_act, D_in); R_act may be 0, or
    dS and lora_A both None (no active adapter). All share one dtype; any strides. ``out``:
    optional (N, D_in) buffer to write into. ``variant``: as ``forward.fused_forward`` (the
    descriptor kernels need ``dy``, ``weight``, ``dx`` and ``lora_A`` with unit inner strides and
    16-byte aligned rows; ``dS`` from ``grad_shrink`` is padded for them).
    ``LAUNCH_COUNTS["fused_dx/<variant>"]`` records which one ran.
    """
    N, D_out = dy.shape
    _check_2d("weight", weight, rows=D_out)
    D_in = weight.shape[1]
    if dS is None or lora_A is None:
        if (dS is None) != (lora_A is None):
            raise ValueError("fused_dx: dS and lora_A must be both given or both None")
        dS, lora_A = dy.new_empty((N, 0)), weight.new_empty((0, D_in))
    _check_2d("dS", dS, rows=N)
    R_act = dS.shape[1]
    _check_2d("lora_A", lora_A, rows=R_act, cols=D_in)
    _check_same_dtype(dy=dy, weight=weight, dS=dS, lora_A=lora_A)
    dx = check_out(out, "out (dx)", (N, D_in), dy.dtype, dy.device)
    if N == 0 or D_in == 0:
        return dx

    # lora_A is read along its rows (the reduction runs over R_act): its row stride is D_in's,
    # legal whenever weight's is; it decides with the large operands (a copy would be R x D_in).
    big = (dy, weight, dx) + ((lora_A,) if R_act > 0 else ())
    ws_ok = fused_tma.ws_fits(R_act, dy.dtype == torch.float32, b_kmajor=False)
    precision = dot_precision(dy)
    chosen = choose_variant(variant, dy.device, big, ws_ok, precision)
    if chosen != "pointer":
        fused_tma.launch(dy, weight, dS, lora_A, dx, None, b_kmajor=False, variant=chosen,
                         precision=precision)
    else:
        # With no adapter column the loop over R_act never runs; any valid pointer will do.
        ds_arg, a_arg = (dS, lora_A) if R_act > 0 else (dy, weight)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(D_in, meta["BLOCK_N"]),)
        with on_device(dy):
            _fused_dx[dy.dtype == torch.float32][grid](
                dy, weight, ds_arg, a_arg, dx,
                N, D_in, D_out, R_act, n_bucket(N),
                dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1),
                ds_arg.stride(0), ds_arg.stride(1), a_arg.stride(0), a_arg.stride(1),
                dx.stride(0), dx.stride(1),
                DOT_PRECISION=precision, BLOCK_R=block_r(R_act, FUSED_DX_MAX_BLOCK_R),
            )
    LAUNCH_COUNTS["fused_dx"] += 1
    LAUNCH_COUNTS[f"fused_dx/{chosen}"] += 1
    return dx
