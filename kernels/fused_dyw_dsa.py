"""The fused input-gradient GEMM ``dx = dy @ W + dS @ A``: its four kernels side by side
(pointer, TMA, persistent TMA, warp-specialized TMA), their configs and compile specs, and the
launcher ``fused_dx``.

    fused_dx(dy, weight, dS, lora_A, *, out=None, variant=None, config=None) -> dx
        dx = dy @ weight + dS @ lora_A                        (N, D_in)  dy.dtype

ONE fp32 accumulator over D_out (dy, weight tiles) then R_act (dS, lora_A tiles). The tile
letters are ``tiles.py``'s: BLOCK_M over N, BLOCK_N over D_in, BLOCK_K over D_out and R_act. The
b operands (weight (D_out, D_in), lora_A (R_act, D_in)) are read across the reduction: descriptor
blocks ``[BLOCK_K, BLOCK_N]`` (``B_KMAJOR=False`` in ``tiles.descriptor_tile``). With LoRA
dropout the op runs this base-only and adds the masked adapter term with
``dropout.masked_addmm_``. Variants, their choice and ``config=`` as in ``fused_xw_sgb``
(the forward); ``SWEEP_CONFIGS`` is the wider set ``benchmarks/gpu_check.sh`` times (its sweep step).
Each variant is one ``fused_launch.Variant`` record in ``VARIANTS``; the kernels are named
``fused_dyw_dsa_<variant>_kernel`` and carry ``launch_metadata`` (``fused_launch``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fused_launch import (WS_MAX_BLOCK_R, FusedGemm, Variant, descriptors, gemm_config,
                           gemm_launch_metadata, persistent_smem, pointer_smem, tma_smem,
                           ws_fits, ws_smem)
from .tiles import (descriptor_tile, grouped_offsets, grouped_tile, store_masked, store_tile,
                    tile_count, two_stretch_tile, ws_descriptor_tile)
from .tuning import (TMA_MIN_ARCH, block_r, buckets, check_2d, check_out, check_same_dtype,
                     dot_precision, has_ws, n_bucket, tma_operand)

# Each launch's name with N, D_in, D_out, R_act, its FLOPs and bytes, for profilers.
launch_metadata = gemm_launch_metadata(cols="D_in", depth="D_out")


@triton.jit(launch_metadata=launch_metadata)
def fused_dyw_dsa_pointer_kernel(
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
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    # dy @ weight over D_out, then dS @ lora_A over R_act, one accumulator.
    acc, offs_m, offs_n, _ = two_stretch_tile(
        pid_m, pid_n, N, D_in, D_out, R_act, dy_ptr, weight_ptr, dS_ptr, lora_A_ptr,
        stride_dy_n, stride_dy_o, stride_weight_o, stride_weight_i,
        stride_dS_n, stride_dS_r, stride_lora_A_r, stride_lora_A_i,
        DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        BLOCK_R=BLOCK_K)
    store_masked(dx_ptr, acc, offs_m, offs_n, N, D_in, stride_dx_n, stride_dx_i)


def _tma_blocks(meta):
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    return {"dy_desc": [bm, bk], "weight_desc": [bk, bn], "dS_desc": [bm, bk],
            "lora_A_desc": [bk, bn], "dx_desc": [bm, bn // 2 if meta["EPILOGUE_SPLIT"] else bn]}


@triton.jit
def _descriptor_output_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, dx_desc, off_m, off_n,
                            D_out, R_act, HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            EPILOGUE_SPLIT: tl.constexpr):
    # One output tile of the tma kernels: the single loop (b operands N-major), the TMA store.
    acc = descriptor_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, off_m, off_n, D_out, R_act,
                          DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                          BLOCK_K=BLOCK_K, B_KMAJOR=False, HAS_ADAPTER=HAS_ADAPTER)
    store_tile(dx_desc, acc, off_m, off_n, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT=EPILOGUE_SPLIT)


@triton.jit(launch_metadata=launch_metadata)
def fused_dyw_dsa_tma_kernel(
    dy_desc,          # (N, D_out)      block [BLOCK_M, BLOCK_K]
    weight_desc,      # (D_out, D_in)   block [BLOCK_K, BLOCK_N]
    dS_desc,          # (N, R_act)      block [BLOCK_M, BLOCK_K]
    lora_A_desc,      # (R_act, D_in)   block [BLOCK_K, BLOCK_N]
    dx_desc,          # (N, D_in)       block [BLOCK_M, BLOCK_N (/ 2 with EPILOGUE_SPLIT)]
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    off_m, off_n = grouped_offsets(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    _descriptor_output_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, dx_desc, off_m, off_n,
                            D_out, R_act, HAS_ADAPTER=HAS_ADAPTER, DOT_PRECISION=DOT_PRECISION,
                            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                            EPILOGUE_SPLIT=EPILOGUE_SPLIT)


@triton.jit(launch_metadata=launch_metadata)
def fused_dyw_dsa_tma_persistent_kernel(
    dy_desc, weight_desc, dS_desc, lora_A_desc, dx_desc,   # as fused_dyw_dsa_tma_kernel
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    for tile in tl.range(tl.program_id(0), tile_count(N, D_in, BLOCK_M, BLOCK_N),
                         tl.num_programs(0), flatten=True):
        off_m, off_n = grouped_offsets(tile, N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
        _descriptor_output_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, dx_desc, off_m,
                                off_n, D_out, R_act, HAS_ADAPTER=HAS_ADAPTER,
                                DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                BLOCK_K=BLOCK_K, EPILOGUE_SPLIT=EPILOGUE_SPLIT)


def _ws_blocks(meta):
    bm, bn, bk, br = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"], meta["BLOCK_R"]
    return {"dy_desc": [bm, bk], "weight_desc": [bk, bn], "dS_desc": [bm, br],
            "lora_A_desc": [br, bn]}


@triton.jit(launch_metadata=launch_metadata)
def fused_dyw_dsa_tma_ws_kernel(
    dy_desc,          # (N, D_out)      block [BLOCK_M, BLOCK_K]
    weight_desc,      # (D_out, D_in)   block [BLOCK_K, BLOCK_N]
    dS_desc,          # (N, R_act)      block [BLOCK_M, BLOCK_R]: every adapter column at once
    lora_A_desc,      # (R_act, D_in)   block [BLOCK_R, BLOCK_N]
    dx_ptr,           # (N, D_in) out, unit column stride
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_dx_n,
    HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    off_m, off_n = grouped_offsets(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    acc = ws_descriptor_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, off_m, off_n, D_out,
                             DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                             BLOCK_K=BLOCK_K, B_KMAJOR=False, HAS_ADAPTER=HAS_ADAPTER)
    store_masked(dx_ptr, acc, off_m + tl.arange(0, BLOCK_M), off_n + tl.arange(0, BLOCK_N),
                 N, D_in, stride_dx_n, 1)


# ---------------------------------------------------------------------------------------------
# The variants. Configs (data; ``tuning.STATUS``): the base GEMM N x D_in x D_out is
# compute-bound, so the classic Hopper GEMM tiles (as the forward's); fp32 (TF32) 32-deep tiles;
# warp specialization with num_warps=4, 16-bit only (``fused_launch.ws_fits``). ``sweep`` and
# ``interpreter`` as in ``fused_xw_sgb``.
# ---------------------------------------------------------------------------------------------
def _pointer_spills(c, elem, consts, arch):
    # mma.sync compiles (no wgmma): a 128 x 128 16-bit tile on 4 warps spills 48 B on sm_89
    # (255 registers: the fp32 accumulator alone is 128 per thread), 128 x 256 on 8 warps 16 B
    # on sm_80; wgmma on sm_90 does neither.
    k = c.kwargs
    tile = k["BLOCK_M"] * k["BLOCK_N"]
    return arch < TMA_MIN_ARCH and (tile >= 128 * 256 or (c.num_warps == 4 and tile >= 128 * 128))


_DESCRIPTOR_SPEC = dict(dtypes=("bf16", "fp16", "fp32"), consts={"HAS_ADAPTER": True})
KEY = ["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"]
DX = FusedGemm("fused_dx", KEY, [
    Variant("pointer", fused_dyw_dsa_pointer_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 4), gemm_config(128, 256, 64, 8, 3),
                                gemm_config(64, 128, 64, 4, 5)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3)]},
            sweep=(gemm_config(128, 256, 64, 8, 3), gemm_config(128, 128, 64, 4, 4)),
            interpreter=gemm_config(32, 32, 32, 4, 1, group=2),
            smem=pointer_smem, spills=_pointer_spills,
            spec=dict(unit_strides=("stride_dy_o", "stride_weight_i", "stride_dS_r",
                                    "stride_lora_A_i", "stride_dx_i"))),
    Variant("tma", fused_dyw_dsa_tma_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 4, split=False),
                                gemm_config(128, 256, 64, 8, 3, split=False)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3, split=False)]},
            sweep=(gemm_config(128, 256, 64, 8, 4, split=True),
                   gemm_config(256, 128, 64, 8, 3, split=True),
                   gemm_config(128, 128, 64, 8, 5, split=True),
                   gemm_config(128, 128, 64, 4, 4, split=False)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2, split=True),
            smem=tma_smem, blocks=_tma_blocks, spec=_DESCRIPTOR_SPEC),
    Variant("tma_persistent", fused_dyw_dsa_tma_persistent_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 4, split=False)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3, split=False)]},
            sweep=(gemm_config(128, 256, 64, 8, 3, split=True),
                   gemm_config(128, 128, 64, 8, 4, split=True),
                   gemm_config(128, 128, 64, 8, 4, group=16, split=False)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2, split=False),
            smem=persistent_smem, blocks=_tma_blocks, spec=_DESCRIPTOR_SPEC),
    # fp32 fused_dx never takes tma_ws (``ws_fits``): one 16-bit list serves both keys.
    Variant("tma_ws", fused_dyw_dsa_tma_ws_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 4, 4)]},
            sweep=(gemm_config(128, 128, 64, 4, 3), gemm_config(128, 128, 64, 4, 4, group=16)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2),
            smem=ws_smem, blocks=_ws_blocks,
            spec=dict(_DESCRIPTOR_SPEC, dtypes=("bf16", "fp16"),
                      buckets=lambda dt, flags: {"BLOCK_R": buckets(WS_MAX_BLOCK_R)})),
])
VARIANTS = DX.variants
# Read off the records, by variant (as in ``fused_xw_sgb``).
CONFIGS = {name: v.configs for name, v in VARIANTS.items()}
SWEEP_CONFIGS = {name: list(v.sweep) for name, v in VARIANTS.items()}
_LAUNCH = {name: v.launchers for name, v in VARIANTS.items()}
SPECS = DX.specs


def fused_dx(dy, weight, dS, lora_A, *, out=None, variant=None, config=None):
    """``dx = dy @ weight + dS @ lora_A`` (N, D_in) in dy's dtype, one fp32 accumulator.

    dy (N, D_out); weight (D_out, D_in); dS (N, R_act); lora_A (R_act, D_in); R_act may be 0, or
    dS and lora_A both None (no active adapter). All share one dtype; any strides. ``out``:
    optional (N, D_in) buffer to write into. ``variant``/``config``: as ``fused_forward`` (the
    descriptor kernels need ``dy``, ``weight``, ``dx`` and ``lora_A`` with unit inner strides and
    16-byte aligned rows; ``dS`` from ``grad_shrink`` is padded for them).
    ``LAUNCH_COUNTS["fused_dx/<variant>"]`` records which one ran.
    """
    N, D_out = dy.shape
    check_2d("weight", weight, rows=D_out)
    D_in = weight.shape[1]
    if dS is None or lora_A is None:
        if (dS is None) != (lora_A is None):
            raise ValueError("fused_dx: dS and lora_A must be both given or both None")
        dS, lora_A = dy.new_empty((N, 0)), weight.new_empty((0, D_in))
    check_2d("dS", dS, rows=N)
    R_act = dS.shape[1]
    check_2d("lora_A", lora_A, rows=R_act, cols=D_in)
    check_same_dtype(dy=dy, weight=weight, dS=dS, lora_A=lora_A)
    dx = check_out(out, "out (dx)", (N, D_in), dy.dtype, dy.device)
    if N == 0 or D_in == 0:
        return dx

    fp32 = dy.dtype == torch.float32
    has_adapter = R_act > 0
    # lora_A is read along its rows (the reduction runs over R_act): its row stride is D_in's,
    # legal whenever weight's is; it decides with the large operands (a copy would be R x D_in).
    big = (dy, weight, dx) + ((lora_A,) if has_adapter else ())
    ws_ok = ws_fits(R_act, fp32, b_kmajor=False) and has_ws(dy.device)
    precision = dot_precision(dy)
    chosen = DX.choose(variant, dy.device, big, ws_ok, precision, fp32, N, D_in)
    ds_arg, a_arg = (dS, lora_A) if has_adapter else (dy, weight)   # placeholders: never read

    def run(v, cfg):
        consts = dict(DOT_PRECISION=precision)
        if v == "pointer":
            args = (dy, weight, ds_arg, a_arg, dx, N, D_in, D_out, R_act, n_bucket(N),
                    dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1),
                    ds_arg.stride(0), ds_arg.stride(1), a_arg.stride(0), a_arg.stride(1),
                    dx.stride(0), dx.stride(1))
        else:
            descs = descriptors(dy, weight, tma_operand(ds_arg) if has_adapter else ds_arg, a_arg)
            consts["HAS_ADAPTER"] = has_adapter
            if v == "tma_ws":
                args = (*descs, dx, N, D_in, D_out, R_act, n_bucket(N), dx.stride(0))
                consts["BLOCK_R"] = block_r(R_act, WS_MAX_BLOCK_R)
            else:
                args = (*descs, *descriptors(dx), N, D_in, D_out, R_act, n_bucket(N))
        DX.launch(v, cfg, fp32, N, D_in, dy, args, consts)

    key = (n_bucket(N), D_in, D_out, R_act, precision, str(dy.dtype))
    DX.dispatch(variant, chosen, config, key, ws_ok, run)
    return dx
