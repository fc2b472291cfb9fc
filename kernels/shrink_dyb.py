"""The grad-shrink ``dS_g = dy @ lora_B`` with its two epilogues, ``dS = dS_g * G_E`` and the
gate-gradient partials ``P = dS_g * S * s``: kernel, configs, compile spec and the launcher
``grad_shrink``.

    grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad) -> (dS, P)

``G_E[n, j] = gates2d[n, col_adapter[j]] * col_scale[j]`` (docs/DESIGN.md). The chain rule behind
it, for ``y = x W^T + b + (S * G_E) B^T`` with ``S = x A^T``:

    dL/d(S*G_E) = dy @ B           = dS_g    (fp32 accumulator, never stored)
    dL/dS       = dS_g * G_E       = dS      -> dx += dS @ A,   dA = dS^T @ x
    dL/dG_E     = dS_g * S                    -> dg[., k] = s_k * sum_{j in k} dS_g * S  (P)

Memory-bound: it streams dy (N x D_out) once against the thin lora_B. The tile is the shrink's
(``tiles.rank_tile``, BLOCK_R buckets 16..128); ``dS`` comes back as a view of a 16-column-padded
buffer (descriptor-legal rows for ``fused_dx``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .compile_spec import KernelSpec
from .shrink_xa import rank_smem
from .tiles import expanded_gate, rank_tile, store_rank_tile
from .tuning import (TCGEN05_ARCH, Launcher, block_r, buckets, by_dtype, check_2d, check_launch,
                     check_out, check_same_dtype, dot_precision, n_bucket, on_device,
                     padded_columns)

# ---------------------------------------------------------------------------------------------
# Configs (data; ``tuning.STATUS``). Small row tiles give enough programs to fill 132 SMs at
# N = 8192 (128 tiles of 64); long K tiles and deep pipelines keep HBM busy. fp32: the 16-bit
# list spills at R_act = 128 (688 B per thread for 64x128x128 w4: the accumulator plus the gate
# and S tiles of the epilogue); 64 x 64 with 8 warps does not.
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    "16-bit": [
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=6),
        triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=5),
    ],
    "fp32": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3)],
}
# Where the list leaves nothing (fp32 at BLOCK_R = 128 on a 101,376 B GPU, exact fp32 with the
# gate gradient from BLOCK_R = 64 on sm_100): 32-deep tiles.
FALLBACK = {"16-bit": [], "fp32": [triton.Config({"BLOCK_M": 64, "BLOCK_K": 32}, num_warps=8,
                                                 num_stages=3)]}
INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_K": 32}, num_warps=4, num_stages=1)
# All R columns in one tile up to this width (one pass over dy). 256 spills on sm_90: the fp32
# accumulator plus the gate and S tiles of the epilogue exceed 255 registers per thread.
MAX_BLOCK_R = 128


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
    pid = tl.program_id(0)
    acc, rows, cols = rank_tile(pid, N, R_act, D_out, dy_ptr, lora_B_ptr, stride_dy_n,
                                stride_dy_o, stride_lora_B_o, stride_lora_B_r, DOT_PRECISION,
                                BLOCK_M, BLOCK_K, BLOCK_R)
    g_e, scale = expanded_gate(rows, cols, col_adapter_ptr, col_scale_ptr, gates_ptr,
                               stride_gates_n, stride_gates_k)
    store_rank_tile(dS_ptr, acc * g_e, pid, N, R_act, stride_dS_n, stride_dS_r, BLOCK_M, BLOCK_R)
    if NEED_GATE_GRAD:
        s = tl.load(S_ptr + rows[:, None] * stride_S_n + cols[None, :] * stride_S_r)
        p = acc * s.to(tl.float32) * scale[None, :]
        store_rank_tile(P_ptr, p, pid, N, R_act, stride_P_n, stride_P_r, BLOCK_M, BLOCK_R)


def _spills(c, elem, consts, arch):
    # sm_100 compile, with the gate gradient: 128-row 16-bit tiles at BLOCK_R = 128 (8 B), exact
    # fp32 64-deep tiles from BLOCK_R = 64 (256-760 B). sm_90 and sm_80/sm_89: none.
    if arch != TCGEN05_ARCH or not consts.get("NEED_GATE_GRAD", False):
        return False
    k = c.kwargs
    if consts.get("DOT_PRECISION") == "ieee":
        return consts["BLOCK_R"] >= 64 and k["BLOCK_K"] >= 64
    return elem == 2 and consts["BLOCK_R"] >= 128 and k["BLOCK_M"] >= 128


_LAUNCH = {fp32: Launcher("grad_shrink", _grad_shrink_kernel, configs, INTERPRETER_CONFIG,
                          ["N_BUCKET", "D_out", "R_act", "NEED_GATE_GRAD", "DOT_PRECISION"],
                          rank_smem, spills=_spills, fallback=by_dtype(FALLBACK)[fp32])
           for fp32, configs in by_dtype(CONFIGS).items()}

SPECS = [KernelSpec(
    "grad_shrink", "pointer", _grad_shrink_kernel, _LAUNCH,
    types={"gates_ptr": "*fp32", "col_adapter_ptr": "*i32", "col_scale_ptr": "*fp32",
           "P_ptr": "*fp32"},
    unit_strides=("stride_dy_o", "stride_lora_B_r", "stride_S_r", "stride_gates_k",
                  "stride_dS_r", "stride_P_r"),
    unaligned=("stride_gates_n",),
    buckets=lambda dt, flags: {"BLOCK_R": buckets(MAX_BLOCK_R)},
    flags=({"NEED_GATE_GRAD": True},))]     # the heavier epilogue (S read, P written)


def grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad, *, out=None):
    """``(dS, P)`` of the active bank (see the module docstring).

    dy (N, D_out); lora_B (D_out, R_act) in dy's dtype; S (N, R_act); gates2d (N, K) any float
    dtype, any strides (a stride-0 expanded view for per-adapter gates); col_adapter (R_act,)
    int32; col_scale (R_act,) float32. ``P`` is None unless ``need_gate_grad`` (S is then not read).
    ``out``: optional ``(dS, P)`` buffers to write into (P None when not needed); without it
    ``dS`` is a view of a buffer padded to 16 columns (descriptor-legal rows for ``fused_dx``).
    """
    N, D_out = dy.shape
    check_2d("lora_B", lora_B, rows=D_out)
    R_act = lora_B.shape[1]
    check_2d("gates2d", gates2d, rows=N)
    check_launch(col_adapter.shape == (R_act,) and col_scale.shape == (R_act,),
                 f"col_adapter/col_scale: expected ({R_act},), got "
                 f"{tuple(col_adapter.shape)} and {tuple(col_scale.shape)}")
    if need_gate_grad:
        check_2d("S", S, rows=N, cols=R_act)
    check_same_dtype(dy=dy, lora_B=lora_B)
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
    tile_r = block_r(R_act, MAX_BLOCK_R)
    S_arg, P_arg = (S, P) if need_gate_grad else (dS, dS)   # placeholders: never touched
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(R_act, tile_r),)
    with on_device(dy):
        _LAUNCH[dy.dtype == torch.float32][grid](
            dy, lora_B, S_arg, gates2d, col_adapter, col_scale, dS, P_arg,
            N, D_out, R_act, n_bucket(N),
            dy.stride(0), dy.stride(1), lora_B.stride(0), lora_B.stride(1),
            S_arg.stride(0), S_arg.stride(1), gates2d.stride(0), gates2d.stride(1),
            dS.stride(0), dS.stride(1), P_arg.stride(0), P_arg.stride(1),
            NEED_GATE_GRAD=bool(need_gate_grad), DOT_PRECISION=dot_precision(dy), BLOCK_R=tile_r,
        )
    LAUNCH_COUNTS["grad_shrink"] += 1
    return dS, P
