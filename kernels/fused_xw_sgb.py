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
tuner): ``SWEEP_CONFIGS`` is the wider set ``benchmarks/gpu_check.sh --tune`` times.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from . import LAUNCH_COUNTS
from .compile_spec import TF32_DTYPES, KernelSpec
from .tiles import (add_bias, descriptor_tile, grouped_tile, store_tile, two_stretch_tile,
                    ws_descriptor_tile)
from .tuning import (INTERPRET, TMA_MIN_ARCH, Launcher, block_hook, block_r, buckets, by_dtype,
                     check_launch, check_out, choose_variant, dot_precision, has_ws, n_bucket,
                     num_sms, on_device, run_variant, stage_bytes, tma_operand)

# The warp-specialized kernel holds the whole adapter bank in one tile of at most this many columns.
WS_MAX_BLOCK_R = 64


def _gemm(bm, bn, bk, warps, stages, group=8, split=None):
    kw = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group}
    if split is not None:
        kw["EPILOGUE_SPLIT"] = split
    return triton.Config(kw, num_warps=warps, num_stages=stages)


# ---------------------------------------------------------------------------------------------
# Configs (data; ``tuning.STATUS``). Target: H200 (sm_90, 132 SMs), bf16, N in {2048, 8192,
# 16384} rows, D_in/D_out in {4096, 14336}, R_act 16..64. 128x128 / 128x256 tiles, BLOCK_K 64 (one
# 128-byte swizzled bf16 row), 8 warps = 2 consumer warpgroups, 3-4 stages; warp specialization
# needs num_warps=4 on sm_90 in triton 3.6. fp32 (TF32 wgmma): 32-deep tiles keep 3 stages. The
# prune lowers stages or drops configs that do not fit; the first entry that fits is what
# LITELORA_AUTOTUNE=0 launches. Every config is one compile and one timing per shape on the GPU.
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    "pointer": {
        "16-bit": [_gemm(128, 128, 64, 8, 3), _gemm(128, 256, 64, 8, 3),
                   _gemm(64, 128, 64, 4, 4)],    # narrower tiles so N = 2048 fills the SMs
        "fp32": [_gemm(128, 128, 32, 8, 3)],
    },
    "tma": {"16-bit": [_gemm(128, 128, 64, 8, 4, split=False), _gemm(128, 256, 64, 8, 3, split=False)],
            "fp32": [_gemm(128, 128, 32, 8, 3, split=False)]},
    "tma_persistent": {"16-bit": [_gemm(128, 128, 64, 8, 4, split=False)],
                       "fp32": [_gemm(128, 128, 32, 8, 3, split=False)]},
    "tma_ws": {"16-bit": [_gemm(128, 128, 64, 4, 4)], "fp32": [_gemm(128, 128, 32, 4, 3)]},
}
# The bounded wider set to time at N = 8192, D = 4096 and 4096 x 14336 (bf16), each compiled by
# the compile report (fits, 0 spills): 128x256 with the split epilogue (4 stages plain, 3
# persistent), 256x128, 5 stages, persistent grouped order (GROUP_M 8 and 16), 4- and 8-warp
# variants. Two consumer warpgroups for warp specialization (num_warps=8) are not here: triton
# 3.6 compiles them unspecialized on sm_90 (no SETMAXREG in the SASS, 128x128 and 128x256).
SWEEP_CONFIGS = {
    "pointer": [_gemm(128, 256, 64, 8, 3), _gemm(128, 128, 64, 8, 4), _gemm(128, 128, 64, 4, 4)],
    "tma": [_gemm(128, 256, 64, 8, 4, split=True), _gemm(256, 128, 64, 8, 3, split=True),
            _gemm(128, 128, 64, 8, 5, split=True), _gemm(128, 128, 64, 4, 4, split=False)],
    "tma_persistent": [_gemm(128, 256, 64, 8, 3, split=True), _gemm(128, 128, 64, 8, 4, split=True),
                       _gemm(128, 128, 64, 8, 4, group=16, split=False)],
    "tma_ws": [_gemm(128, 128, 64, 4, 3), _gemm(128, 128, 64, 4, 4, group=16)],
}
# Under TRITON_INTERPRET=1: small tiles so test shapes of tens of rows cross tile edges in every
# dimension, a partial GROUP_M group, and several base steps before the adapter steps.
INTERPRETER_CONFIG = {
    "pointer": _gemm(32, 32, 16, 4, 1, group=2),
    "tma": _gemm(32, 32, 16, 4, 1, group=2, split=True),
    "tma_persistent": _gemm(32, 32, 16, 4, 1, group=2, split=False),
    "tma_ws": _gemm(32, 32, 16, 4, 1, group=2),
}
KEY = ["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"]


# ---------------------------------------------------------------------------------------------
# pointer
# ---------------------------------------------------------------------------------------------
@triton.jit
def _pointer_kernel(
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
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_K)
    acc = add_bias(acc, bias_ptr, cols, D_out, stride_bias_o, HAS_BIAS)
    mask = (offs_m < N)[:, None] & (offs_n < D_out)[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_y_n + offs_n.to(tl.int64)[None, :] * stride_y_o,
             acc.to(y_ptr.dtype.element_ty), mask=mask)


def _pointer_smem(c, elem, consts):
    # Both stretches' loops have the same BLOCK_K-deep tiles; only one is live at a time.
    return stage_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], elem), 0


# ---------------------------------------------------------------------------------------------
# tma and tma_persistent
# ---------------------------------------------------------------------------------------------
def _tma_blocks(meta):
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    return {"x_desc": [bm, bk], "weight_desc": [bn, bk], "SG_desc": [bm, bk],
            "lora_B_desc": [bn, bk], "y_desc": [bm, bn // 2 if meta["EPILOGUE_SPLIT"] else bn]}


@triton.jit
def _tma_kernel(
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
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = descriptor_tile(x_desc, weight_desc, SG_desc, lora_B_desc, off_m, off_n, D_in, R_act,
                          DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, True, HAS_ADAPTER)
    acc = add_bias(acc, bias_ptr, off_n + tl.arange(0, BLOCK_N), D_out, stride_bias, HAS_BIAS)
    store_tile(y_desc, acc, off_m, off_n, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT)


@triton.jit
def _tma_persistent_kernel(
    x_desc, weight_desc, SG_desc, lora_B_desc, y_desc,   # as _tma_kernel
    bias_ptr,
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_bias,
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    # Grid = min(tiles, SMs): each program walks the grouped tile order with a stride of the grid.
    num_tiles = tl.cdiv(N, BLOCK_M) * tl.cdiv(D_out, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=True):
        pid_m, pid_n = grouped_tile(tile, N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = descriptor_tile(x_desc, weight_desc, SG_desc, lora_B_desc, off_m, off_n, D_in,
                              R_act, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, True, HAS_ADAPTER)
        acc = add_bias(acc, bias_ptr, off_n + tl.arange(0, BLOCK_N), D_out, stride_bias, HAS_BIAS)
        store_tile(y_desc, acc, off_m, off_n, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT)


def _tma_smem(c, elem, consts):
    # The pipelined x/weight tiles (SG/lora_B steps reuse them). The TMA store's staging tile
    # reuses the dead pipeline buffers after the loop (sm_90 compile: 128x128x64 bf16 4 stages
    # take 132,128 B, the 4 x 32 KiB stages and barriers).
    k = c.kwargs
    return stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem), 0


def _persistent_smem(c, elem, consts):
    # As _tma_smem, plus the staging tile held apart: the flattened tile loop overlaps the next
    # tile's loads with this tile's store (sm_90 compile: 164,896 B at 128x128x64 bf16 4 stages).
    k = c.kwargs
    out_cols = k["BLOCK_N"] // 2 if k["EPILOGUE_SPLIT"] else k["BLOCK_N"]
    return stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem), k["BLOCK_M"] * out_cols * elem


# ---------------------------------------------------------------------------------------------
# tma_ws
# ---------------------------------------------------------------------------------------------
def _ws_blocks(meta):
    bm, bn, bk, br = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"], meta["BLOCK_R"]
    return {"x_desc": [bm, bk], "weight_desc": [bn, bk], "SG_desc": [bm, br],
            "lora_B_desc": [bn, br]}


@triton.jit
def _tma_ws_kernel(
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
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_out, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = ws_descriptor_tile(x_desc, weight_desc, SG_desc, lora_B_desc, off_m, off_n, D_in,
                             DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, True, HAS_ADAPTER)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    acc = add_bias(acc, bias_ptr, offs_n, D_out, stride_bias, HAS_BIAS)
    mask = (offs_m < N)[:, None] & (offs_n < D_out)[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * stride_y_n + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask)


def ws_smem(c, elem, consts):
    """The warp-specialized kernels' shared memory: the pipelined base tiles, plus the adapter
    step's (BLOCK_M + BLOCK_N) x BLOCK_R tiles, plus an output-sized tile for the epilogue's
    layout conversion (sm_90 compile, 128x128 tiles: 17,792 B beyond the operand tiles in bf16,
    66,944-75,136 B in fp32, where leaving it out launched 238,976 B at BLOCK_R = 64)."""
    k = c.kwargs
    fixed = stage_bytes(k["BLOCK_M"], k["BLOCK_N"], consts["BLOCK_R"], elem)
    return (stage_bytes(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"], elem),
            fixed + k["BLOCK_M"] * k["BLOCK_N"] * elem)


def ws_fits(r_act: int, fp32: bool, b_kmajor: bool) -> bool:
    """The warp-specialized kernel fits this call: the whole adapter bank in one tile, and not
    fp32 with N-major b operands (fused_dx): triton 3.6 fails to lower that TF32 wgmma in a
    specialized loop (ConvertNVGPUToLLVM error at compile time)."""
    return r_act <= WS_MAX_BLOCK_R and not (fp32 and not b_kmajor)


# ---------------------------------------------------------------------------------------------
# Launchers, compile specs.
# ---------------------------------------------------------------------------------------------
_KERNELS = {"pointer": _pointer_kernel, "tma": _tma_kernel,
            "tma_persistent": _tma_persistent_kernel, "tma_ws": _tma_ws_kernel}
_SMEM = {"pointer": _pointer_smem, "tma": _tma_smem, "tma_persistent": _persistent_smem,
         "tma_ws": ws_smem}
_HOOK = {"tma": block_hook(_tma_blocks), "tma_persistent": block_hook(_tma_blocks),
         "tma_ws": block_hook(_ws_blocks)}


def _pointer_spills(c, elem, consts, arch):
    # sm_80 compile (mma.sync): 128 x 256 16-bit tiles spill 8 B at the 2 stages that fit (255
    # registers: the fp32 accumulator is 128 per thread on 8 warps); wgmma on sm_90 does not.
    k = c.kwargs
    return arch < TMA_MIN_ARCH and k["BLOCK_M"] * k["BLOCK_N"] >= 128 * 256


_LAUNCH = {v: {fp32: Launcher("fused_forward", _KERNELS[v], configs, INTERPRETER_CONFIG[v], KEY,
                              _SMEM[v], v, pre_hook=_HOOK.get(v),
                              spills=_pointer_spills if v == "pointer" else None)
               for fp32, configs in by_dtype(CONFIGS[v]).items()}
           for v in _KERNELS}

_DESCRIPTOR_SPEC = dict(unit_strides=("stride_bias",), consts={"HAS_BIAS": True, "HAS_ADAPTER": True})
SPECS = [
    KernelSpec("fused_forward", "pointer", _pointer_kernel, _LAUNCH["pointer"],
               unit_strides=("stride_x_i", "stride_weight_i", "stride_bias_o", "stride_SG_r",
                             "stride_lora_B_r", "stride_y_o"),
               consts={"HAS_BIAS": True}, sweep=tuple(SWEEP_CONFIGS["pointer"])),
    KernelSpec("fused_forward", "tma", _tma_kernel, _LAUNCH["tma"], dtypes=TF32_DTYPES,
               blocks=_tma_blocks, sweep=tuple(SWEEP_CONFIGS["tma"]), **_DESCRIPTOR_SPEC),
    KernelSpec("fused_forward", "tma_persistent", _tma_persistent_kernel,
               _LAUNCH["tma_persistent"], dtypes=TF32_DTYPES, blocks=_tma_blocks,
               sweep=tuple(SWEEP_CONFIGS["tma_persistent"]), **_DESCRIPTOR_SPEC),
    KernelSpec("fused_forward", "tma_ws", _tma_ws_kernel, _LAUNCH["tma_ws"], dtypes=TF32_DTYPES,
               blocks=_ws_blocks, buckets=lambda dt, flags: {"BLOCK_R": buckets(WS_MAX_BLOCK_R)},
               sweep=tuple(SWEEP_CONFIGS["tma_ws"]), **_DESCRIPTOR_SPEC),
]


def _descriptors(*tensors):
    # Block shapes are placeholders here; the config's pre_hook sets them before the launch.
    return [TensorDescriptor.from_tensor(t, [16, 16]) for t in tensors]


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
    first = INTERPRETER_CONFIG["tma"] if INTERPRET else by_dtype(CONFIGS["tma"])[fp32][0]
    tiles = triton.cdiv(N, first.kwargs["BLOCK_M"]) * triton.cdiv(D_out, first.kwargs["BLOCK_N"])
    sms = num_sms(x2d.device)
    chosen = choose_variant(variant, x2d.device, (x2d, weight, y), ws_ok, precision,
                            tiles=tiles, sms=sms)
    has_adapter = R_act > 0
    bias_arg = bias if bias is not None else y
    stride_bias = bias.stride(0) if bias is not None else 0
    sg_arg, b_arg = (SG, lora_B) if has_adapter else (x2d, weight)   # placeholders: never read

    def run(v, cfg):
        launcher = _LAUNCH[v][fp32]
        launch = launcher.with_config(cfg) if cfg is not None else launcher
        if v == "pointer":
            grid = lambda m: (triton.cdiv(N, m["BLOCK_M"]) * triton.cdiv(D_out, m["BLOCK_N"]),)
            args = (x2d, weight, bias_arg, sg_arg, b_arg, y, N, D_in, D_out, R_act, n_bucket(N),
                    x2d.stride(0), x2d.stride(1), weight.stride(0), weight.stride(1),
                    stride_bias, sg_arg.stride(0), sg_arg.stride(1), b_arg.stride(0),
                    b_arg.stride(1), y.stride(0), y.stride(1))
            consts = dict(HAS_BIAS=bias is not None, DOT_PRECISION=precision)
        else:
            a2, b2 = (tma_operand(SG), tma_operand(lora_B)) if has_adapter else (x2d, weight)
            persistent = v == "tma_persistent"
            grid = lambda m: (min(triton.cdiv(N, m["BLOCK_M"]) * triton.cdiv(D_out, m["BLOCK_N"]),
                                  sms) if persistent else
                              triton.cdiv(N, m["BLOCK_M"]) * triton.cdiv(D_out, m["BLOCK_N"]),)
            descs = _descriptors(x2d, weight, a2, b2)
            if v == "tma_ws":
                args = (*descs, y, bias_arg, N, D_in, D_out, R_act, n_bucket(N), y.stride(0),
                        stride_bias)
                consts = dict(BLOCK_R=block_r(R_act, WS_MAX_BLOCK_R))
            else:
                args = (*descs, *_descriptors(y), bias_arg, N, D_in, D_out, R_act, n_bucket(N),
                        stride_bias)
                consts = {}
            consts.update(HAS_BIAS=bias is not None, HAS_ADAPTER=has_adapter,
                          DOT_PRECISION=precision)
        with on_device(x2d):
            launch[grid](*args, **consts)

    key = (n_bucket(N), D_in, D_out, R_act, precision, str(x2d.dtype))
    chosen = run_variant("fused_forward", variant, chosen, config, key,
                         ["tma", "tma_persistent"] + (["tma_ws"] if ws_ok else []), run)
    LAUNCH_COUNTS["fused_forward"] += 1
    LAUNCH_COUNTS[f"fused_forward/{chosen}"] += 1
    return y
