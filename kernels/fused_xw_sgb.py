"""The fused forward GEMM ``y = x @ W^T + SG @ B^T (+ bias)``: its four kernels side by side
(pointer, TMA, persistent TMA, warp-specialized TMA), their configs and compile specs, and the
launcher ``fused_forward``.

    fused_forward(x2d, weight, bias, SG, lora_B, *, out=None, variant=None, config=None) -> y
        y = x2d @ weight^T + bias + SG @ lora_B^T            (N, D_out)  x.dtype

ONE fp32 accumulator: the reduction runs over D_in (x, weight tiles), then carries on over R_act
(SG, lora_B tiles) as extra K-steps; the bias is added and y is written once. The tile letters
are ``tiles.py``'s: BLOCK_M over N, BLOCK_N over D_out, BLOCK_K over D_in and R_act.

Variants (``tuning.VARIANTS``), each its own ``@triton.jit`` kernel, chosen by the launcher
(``variant=``, else ``LITELORA_KERNEL_VARIANT``, else "auto": the descriptor kernels when ``x``,
``weight`` and ``y`` are descriptor-legal on sm_90+ or the interpreter, timed against each other
on a GPU, ``tuning.untuned_variant`` untimed):

- ``pointer``: masked pointer loads, any strides (transposed or sliced x and weight); two
  pipelined loops on one accumulator (``tiles.two_stretch_tile``), the adapter one BLOCK_K deep.
- ``tma``: host tensor descriptors, one output tile per program in grouped order; base and
  adapter steps in ONE pipelined loop (``tiles.descriptor_tile``); TMA-store epilogue, optionally
  split in two column halves (``EPILOGUE_SPLIT``: half the output tile's shared memory, so
  128x256 tiles keep a third stage).
- ``tma_persistent``: the same tile in a loop over tiles strided by a grid of one program per SM;
  ``flatten=True`` lets the next tile's loads overlap this tile's epilogue.
- ``tma_ws``: warp-specialized (``tiles.ws_descriptor_tile``), the adapter stretch ONE BLOCK_R-deep
  step after the loop (all R_act <= ``WS_MAX_BLOCK_R`` columns), pointer-store epilogue (a
  descriptor store in a specialized kernel failed to compile in triton 3.6).

Exact fp32 (torch's TF32 switch off) takes the pointer kernel only (``tuning.choose_variant``).
``config=`` launches one explicit ``triton.Config`` of a concrete ``variant=`` (bypassing the
tuner): ``SWEEP_CONFIGS`` is the wider set ``benchmarks/gpu_check.sh`` times (its sweep step).

Each variant is one ``fused_launch.Variant`` record in ``VARIANTS`` (kernel, configs, sweep and
interpreter configs, shared-memory model, descriptor blocks, compile spec, launchers);
``CONFIGS``, ``SWEEP_CONFIGS`` and ``SPECS`` are read off them. The kernels are named
``fused_xw_sgb_<variant>_kernel`` and carry ``launch_metadata`` (``fused_launch``), so a profile
tells them from the dx GEMM's ``fused_dyw_dsa_*``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .compile_spec import TF32_DTYPES
from .fused_launch import (WS_MAX_BLOCK_R, FusedGemm, Variant, descriptors, gemm_config,
                           gemm_launch_metadata, persistent_smem, pointer_smem, tma_smem,
                           ws_fits, ws_smem)
from .tiles import (add_bias, descriptor_tile, grouped_offsets, grouped_tile, store_masked,
                    store_tile, tile_count, two_stretch_tile, ws_descriptor_tile)
from .tuning import (TMA_MIN_ARCH, block_r, buckets, check_launch, check_out, dot_precision,
                     has_ws, n_bucket, tma_operand)

__all__ = ["fused_forward", "ws_fits", "WS_MAX_BLOCK_R", "ws_smem", "VARIANTS", "CONFIGS",
           "SWEEP_CONFIGS", "SPECS"]

# Each launch's name with N, D_out, D_in, R_act, its FLOPs and bytes, for profilers.
launch_metadata = gemm_launch_metadata(cols="D_out", depth="D_in")


# ---------------------------------------------------------------------------------------------
# pointer
# ---------------------------------------------------------------------------------------------
@triton.jit(launch_metadata=launch_metadata)
def fused_xw_sgb_pointer_kernel(
    x_ptr,            # (N, D_in)      any strides
    weight_ptr,       # (D_out, D_in)  any strides
    bias_ptr,         # (D_out,)       or a placeholder when HAS_BIAS is False
    SG_ptr,           # (N, R_act)     S * G_E from the shrink; placeholder when R_act == 0
    lora_B_ptr,       # (D_out, R_act) active columns of B_cat; placeholder when R_act == 0
    y_ptr,            # (N, D_out)     out
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_x_n, stride_x_i, stride_weight_o, stride_weight_i, stride_bias_o,
    stride_SG_n, stride_SG_r, stride_lora_B_o, stride_lora_B_r, stride_y_n, stride_y_o,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    # x @ weight^T over D_in, then SG @ lora_B^T over R_act, one accumulator (weight and lora_B
    # are read transposed: their (k, n) strides are (i, o) and (r, o)).
    acc, offs_m, offs_n, cols = two_stretch_tile(
        pid_m, pid_n, N, D_out, D_in, R_act, x_ptr, weight_ptr, SG_ptr, lora_B_ptr,
        stride_x_n, stride_x_i, stride_weight_i, stride_weight_o,
        stride_SG_n, stride_SG_r, stride_lora_B_r, stride_lora_B_o,
        DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        BLOCK_R=BLOCK_K)
    acc = add_bias(acc, bias_ptr, cols, D_out, stride_bias_o, HAS_BIAS=HAS_BIAS)
    store_masked(y_ptr, acc, offs_m, offs_n, N, D_out, stride_y_n, stride_y_o)


# ---------------------------------------------------------------------------------------------
# tma and tma_persistent
# ---------------------------------------------------------------------------------------------
def _tma_blocks(meta):
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    return {"x_desc": [bm, bk], "weight_desc": [bn, bk], "SG_desc": [bm, bk],
            "lora_B_desc": [bn, bk], "y_desc": [bm, bn // 2 if meta["EPILOGUE_SPLIT"] else bn]}


@triton.jit
def _descriptor_output_tile(x_desc, weight_desc, SG_desc, lora_B_desc, y_desc, bias_ptr,
                            off_m, off_n, D_in, D_out, R_act, stride_bias,
                            HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr,
                            DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            EPILOGUE_SPLIT: tl.constexpr):
    # One output tile of the tma kernels: the single loop, the bias, the TMA store.
    acc = descriptor_tile(x_desc, weight_desc, SG_desc, lora_B_desc, off_m, off_n, D_in, R_act,
                          DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                          BLOCK_K=BLOCK_K, B_KMAJOR=True, HAS_ADAPTER=HAS_ADAPTER)
    acc = add_bias(acc, bias_ptr, off_n + tl.arange(0, BLOCK_N), D_out, stride_bias,
                   HAS_BIAS=HAS_BIAS)
    store_tile(y_desc, acc, off_m, off_n, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT=EPILOGUE_SPLIT)


@triton.jit(launch_metadata=launch_metadata)
def fused_xw_sgb_tma_kernel(
    x_desc,           # (N, D_in)       block [BLOCK_M, BLOCK_K]
    weight_desc,      # (D_out, D_in)   block [BLOCK_N, BLOCK_K]
    SG_desc,          # (N, R_act)      block [BLOCK_M, BLOCK_K]
    lora_B_desc,      # (D_out, R_act)  block [BLOCK_N, BLOCK_K]
    y_desc,           # (N, D_out)      block [BLOCK_M, BLOCK_N (/ 2 with EPILOGUE_SPLIT)]
    bias_ptr,         # (D_out,) or a placeholder when HAS_BIAS is False
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_bias,
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    off_m, off_n = grouped_offsets(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    _descriptor_output_tile(x_desc, weight_desc, SG_desc, lora_B_desc, y_desc, bias_ptr,
                            off_m, off_n, D_in, D_out, R_act, stride_bias,
                            HAS_BIAS=HAS_BIAS, HAS_ADAPTER=HAS_ADAPTER,
                            DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                            BLOCK_K=BLOCK_K, EPILOGUE_SPLIT=EPILOGUE_SPLIT)


@triton.jit(launch_metadata=launch_metadata)
def fused_xw_sgb_tma_persistent_kernel(
    x_desc, weight_desc, SG_desc, lora_B_desc, y_desc,   # as fused_xw_sgb_tma_kernel
    bias_ptr,
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_bias,
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    # Grid = min(tiles, SMs): each program walks the grouped tile order with a stride of the grid.
    for tile in tl.range(tl.program_id(0), tile_count(N, D_out, BLOCK_M, BLOCK_N),
                         tl.num_programs(0), flatten=True):
        off_m, off_n = grouped_offsets(tile, N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
        _descriptor_output_tile(x_desc, weight_desc, SG_desc, lora_B_desc, y_desc, bias_ptr,
                                off_m, off_n, D_in, D_out, R_act, stride_bias,
                                HAS_BIAS=HAS_BIAS, HAS_ADAPTER=HAS_ADAPTER,
                                DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                BLOCK_K=BLOCK_K, EPILOGUE_SPLIT=EPILOGUE_SPLIT)


# ---------------------------------------------------------------------------------------------
# tma_ws
# ---------------------------------------------------------------------------------------------
def _ws_blocks(meta):
    bm, bn, bk, br = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"], meta["BLOCK_R"]
    return {"x_desc": [bm, bk], "weight_desc": [bn, bk], "SG_desc": [bm, br],
            "lora_B_desc": [bn, br]}


@triton.jit(launch_metadata=launch_metadata)
def fused_xw_sgb_tma_ws_kernel(
    x_desc,           # (N, D_in)       block [BLOCK_M, BLOCK_K]
    weight_desc,      # (D_out, D_in)   block [BLOCK_N, BLOCK_K]
    SG_desc,          # (N, R_act)      block [BLOCK_M, BLOCK_R]: every adapter column at once
    lora_B_desc,      # (D_out, R_act)  block [BLOCK_N, BLOCK_R]
    y_ptr,            # (N, D_out) out, unit column stride
    bias_ptr,
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_y_n, stride_bias,
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    off_m, off_n = grouped_offsets(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    acc = ws_descriptor_tile(x_desc, weight_desc, SG_desc, lora_B_desc, off_m, off_n, D_in,
                             DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                             BLOCK_K=BLOCK_K, B_KMAJOR=True, HAS_ADAPTER=HAS_ADAPTER)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    acc = add_bias(acc, bias_ptr, offs_n, D_out, stride_bias, HAS_BIAS=HAS_BIAS)
    store_masked(y_ptr, acc, offs_m, offs_n, N, D_out, stride_y_n, 1)


# ---------------------------------------------------------------------------------------------
# The variants. Configs (data; ``tuning.STATUS``). Target: H200 (sm_90, 132 SMs), bf16, N in
# {2048, 8192, 16384} rows, D_in/D_out in {4096, 14336}, R_act 16..64. 128x128 / 128x256 tiles,
# BLOCK_K 64 (one 128-byte swizzled bf16 row), 8 warps = 2 consumer warpgroups, 3-4 stages; warp
# specialization needs num_warps=4 on sm_90 in triton 3.6. fp32 (TF32 wgmma): 32-deep tiles keep
# 3 stages. The prune lowers stages or drops configs that do not fit; the first entry that fits
# is what LITELORA_AUTOTUNE=0 launches. Every config is one compile and one timing per shape on
# the GPU.
# ``sweep``: the bounded wider set to time at N = 8192, D = 4096 and 4096 x 14336 (bf16), each
# compiled by the compile report (fits, 0 spills): 128x256 with the split epilogue (4 stages
# plain, 3 persistent), 256x128, 5 stages, persistent grouped order (GROUP_M 8 and 16), 4- and
# 8-warp variants. Two consumer warpgroups for warp specialization (num_warps=8) are not there:
# triton 3.6 compiles them unspecialized on sm_90 (no SETMAXREG in the SASS, 128x128 and 128x256).
# ``interpreter`` (TRITON_INTERPRET=1): small tiles so test shapes of tens of rows cross tile
# edges in every dimension, a partial GROUP_M group, and several base steps before the adapter
# steps.
# ---------------------------------------------------------------------------------------------
def _pointer_spills(c, elem, consts, arch):
    # sm_80 compile (mma.sync): 128 x 256 16-bit tiles spill 8 B at the 2 stages that fit (255
    # registers: the fp32 accumulator is 128 per thread on 8 warps); wgmma on sm_90 does not.
    k = c.kwargs
    return arch < TMA_MIN_ARCH and k["BLOCK_M"] * k["BLOCK_N"] >= 128 * 256


_DESCRIPTOR_SPEC = dict(unit_strides=("stride_bias",), dtypes=TF32_DTYPES,
                        consts={"HAS_BIAS": True, "HAS_ADAPTER": True})
KEY = ["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"]
FORWARD = FusedGemm("fused_forward", KEY, [
    Variant("pointer", fused_xw_sgb_pointer_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 3), gemm_config(128, 256, 64, 8, 3),
                                # narrower tiles so N = 2048 fills the SMs
                                gemm_config(64, 128, 64, 4, 4)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3)]},
            sweep=(gemm_config(128, 256, 64, 8, 3), gemm_config(128, 128, 64, 8, 4),
                   gemm_config(128, 128, 64, 4, 4)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2),
            smem=pointer_smem, spills=_pointer_spills,
            spec=dict(unit_strides=("stride_x_i", "stride_weight_i", "stride_bias_o",
                                    "stride_SG_r", "stride_lora_B_r", "stride_y_o"),
                      consts={"HAS_BIAS": True})),
    Variant("tma", fused_xw_sgb_tma_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 4, split=False),
                                gemm_config(128, 256, 64, 8, 3, split=False)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3, split=False)]},
            sweep=(gemm_config(128, 256, 64, 8, 4, split=True),
                   gemm_config(256, 128, 64, 8, 3, split=True),
                   gemm_config(128, 128, 64, 8, 5, split=True),
                   gemm_config(128, 128, 64, 4, 4, split=False)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2, split=True),
            smem=tma_smem, blocks=_tma_blocks, spec=_DESCRIPTOR_SPEC),
    Variant("tma_persistent", fused_xw_sgb_tma_persistent_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 8, 4, split=False)],
                     "fp32": [gemm_config(128, 128, 32, 8, 3, split=False)]},
            sweep=(gemm_config(128, 256, 64, 8, 3, split=True),
                   gemm_config(128, 128, 64, 8, 4, split=True),
                   gemm_config(128, 128, 64, 8, 4, group=16, split=False)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2, split=False),
            smem=persistent_smem, blocks=_tma_blocks, spec=_DESCRIPTOR_SPEC),
    Variant("tma_ws", fused_xw_sgb_tma_ws_kernel,
            configs={"16-bit": [gemm_config(128, 128, 64, 4, 4)],
                     "fp32": [gemm_config(128, 128, 32, 4, 3)]},
            sweep=(gemm_config(128, 128, 64, 4, 3), gemm_config(128, 128, 64, 4, 4, group=16)),
            interpreter=gemm_config(32, 32, 16, 4, 1, group=2),
            smem=ws_smem, blocks=_ws_blocks,
            spec=dict(_DESCRIPTOR_SPEC, buckets=lambda dt, flags: {"BLOCK_R": buckets(WS_MAX_BLOCK_R)})),
])
VARIANTS = FORWARD.variants
# Read off the records, by variant: the config lists (tests, docs), the sweep (benchmarks'
# --tune), the launchers and the compile specs (kernels.compile_report).
CONFIGS = {name: v.configs for name, v in VARIANTS.items()}
SWEEP_CONFIGS = {name: list(v.sweep) for name, v in VARIANTS.items()}
_LAUNCH = {name: v.launchers for name, v in VARIANTS.items()}
SPECS = FORWARD.specs


def fused_forward(x2d, weight, bias, SG, lora_B, *, out=None, variant=None, config=None):
    """``y = x2d @ weight^T + bias + SG @ lora_B^T`` ``(N, D_out)`` in x's dtype, one accumulator.

    ``bias`` may be ``None``; ``SG`` ``(N, R_act)`` and ``lora_B`` ``(D_out, R_act)`` may have
    ``R_act == 0`` (no active adapter: the adapter steps are skipped). ``out``: optional ``y``
    buffer. ``variant``: "pointer", "tma", "tma_persistent", "tma_ws" or None (see the module
    docstring); a forced variant the operands cannot take raises ``ValueError``. ``config``: one
    ``triton.Config`` (e.g. from ``SWEEP_CONFIGS[variant]``) to launch as is, with a concrete
    ``variant``. ``LAUNCH_COUNTS["fused_forward/<variant>"]`` records which one ran.
    """
    N, D_in = x2d.shape
    D_out = weight.shape[0]
    R_act = SG.shape[1]
    check_launch(weight.dim() == 2 and weight.shape[1] == D_in and SG.dim() == 2 and SG.shape[0] == N,
                 f"fused_forward: x2d {tuple(x2d.shape)}, weight {tuple(weight.shape)} and SG "
                 f"{tuple(SG.shape)} do not chain as (N, D_in), (D_out, D_in), (N, R_act)")
    check_launch(tuple(lora_B.shape) == (D_out, R_act),
                 f"fused_forward: lora_B must be (D_out, R_act) = {(D_out, R_act)}, got "
                 f"{tuple(lora_B.shape)}")
    check_launch(bias is None or tuple(bias.shape) == (D_out,),
                 f"fused_forward: bias must be ({D_out},), got {tuple(getattr(bias, 'shape', ()))}")
    y = check_out(out, "y", (N, D_out), x2d.dtype, x2d.device)
    if N == 0 or D_out == 0:
        return y
    fp32 = x2d.dtype == torch.float32
    ws_ok = ws_fits(R_act, fp32, b_kmajor=True) and has_ws(x2d.device)
    precision = dot_precision(x2d)
    chosen = FORWARD.choose(variant, x2d.device, (x2d, weight, y), ws_ok, precision, fp32, N, D_out)
    has_adapter = R_act > 0
    bias_arg = bias if bias is not None else y
    stride_bias = bias.stride(0) if bias is not None else 0
    sg_arg, b_arg = (SG, lora_B) if has_adapter else (x2d, weight)   # placeholders: never read

    def run(v, cfg):
        consts = dict(HAS_BIAS=bias is not None, DOT_PRECISION=precision)
        if v == "pointer":
            args = (x2d, weight, bias_arg, sg_arg, b_arg, y, N, D_in, D_out, R_act, n_bucket(N),
                    x2d.stride(0), x2d.stride(1), weight.stride(0), weight.stride(1),
                    stride_bias, sg_arg.stride(0), sg_arg.stride(1), b_arg.stride(0),
                    b_arg.stride(1), y.stride(0), y.stride(1))
        else:
            a2, b2 = (tma_operand(SG), tma_operand(lora_B)) if has_adapter else (x2d, weight)
            descs = descriptors(x2d, weight, a2, b2)
            consts["HAS_ADAPTER"] = has_adapter
            if v == "tma_ws":
                args = (*descs, y, bias_arg, N, D_in, D_out, R_act, n_bucket(N), y.stride(0),
                        stride_bias)
                consts["BLOCK_R"] = block_r(R_act, WS_MAX_BLOCK_R)
            else:
                args = (*descs, *descriptors(y), bias_arg, N, D_in, D_out, R_act, n_bucket(N),
                        stride_bias)
        FORWARD.launch(v, cfg, fp32, N, D_out, x2d, args, consts)

    key = (n_bucket(N), D_in, D_out, R_act, precision, str(x2d.dtype))
    FORWARD.dispatch(variant, chosen, config, key, ws_ok, run)
    return y
