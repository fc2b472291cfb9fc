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
(the forward); ``SWEEP_CONFIGS`` is the wider set ``benchmarks/gpu_check.sh --tune`` times.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .compile_spec import KernelSpec
from .fused_xw_sgb import (WS_MAX_BLOCK_R, _descriptors, _gemm, _persistent_smem, _pointer_smem,
                           _tma_smem, ws_fits, ws_smem)
from .shrink_dyb import _check_2d, _check_same_dtype
from .tiles import descriptor_tile, grouped_tile, store_tile, two_stretch_tile, ws_descriptor_tile
from .tuning import (INTERPRET, TMA_MIN_ARCH, Launcher, block_hook, block_r, buckets, by_dtype,
                     check_out, choose_variant, dot_precision, has_ws, n_bucket, num_sms,
                     on_device, run_variant, tma_operand)

# ---------------------------------------------------------------------------------------------
# Configs (data; ``tuning.STATUS``): the base GEMM N x D_in x D_out is compute-bound, so the
# classic Hopper GEMM tiles (as the forward's); fp32 (TF32) 32-deep tiles; warp specialization
# with num_warps=4, 16-bit only (``fused_xw_sgb.ws_fits``).
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    "pointer": {"16-bit": [_gemm(128, 128, 64, 8, 4), _gemm(128, 256, 64, 8, 3),
                           _gemm(64, 128, 64, 4, 5)],
                "fp32": [_gemm(128, 128, 32, 8, 3)]},
    "tma": {"16-bit": [_gemm(128, 128, 64, 8, 4, split=False), _gemm(128, 256, 64, 8, 3, split=False)],
            "fp32": [_gemm(128, 128, 32, 8, 3, split=False)]},
    "tma_persistent": {"16-bit": [_gemm(128, 128, 64, 8, 4, split=False)],
                       "fp32": [_gemm(128, 128, 32, 8, 3, split=False)]},
    "tma_ws": {"16-bit": [_gemm(128, 128, 64, 4, 4)]},
}
SWEEP_CONFIGS = {
    "pointer": [_gemm(128, 256, 64, 8, 3), _gemm(128, 128, 64, 4, 4)],
    "tma": [_gemm(128, 256, 64, 8, 4, split=True), _gemm(256, 128, 64, 8, 3, split=True),
            _gemm(128, 128, 64, 8, 5, split=True), _gemm(128, 128, 64, 4, 4, split=False)],
    "tma_persistent": [_gemm(128, 256, 64, 8, 3, split=True), _gemm(128, 128, 64, 8, 4, split=True),
                       _gemm(128, 128, 64, 8, 4, group=16, split=False)],
    "tma_ws": [_gemm(128, 128, 64, 4, 3), _gemm(128, 128, 64, 4, 4, group=16)],
}
INTERPRETER_CONFIG = {
    "pointer": _gemm(32, 32, 32, 4, 1, group=2),
    "tma": _gemm(32, 32, 16, 4, 1, group=2, split=True),
    "tma_persistent": _gemm(32, 32, 16, 4, 1, group=2, split=False),
    "tma_ws": _gemm(32, 32, 16, 4, 1, group=2),
}
KEY = ["N_BUCKET", "D_in", "D_out", "R_act", "DOT_PRECISION"]


@triton.jit
def _pointer_kernel(
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
        DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, BLOCK_K)
    mask = (offs_m[:, None] < N) & (offs_n[None, :] < D_in)
    tl.store(dx_ptr + offs_m.to(tl.int64)[:, None] * stride_dx_n + offs_n.to(tl.int64)[None, :] * stride_dx_i,
             acc.to(dx_ptr.dtype.element_ty), mask=mask)


def _tma_blocks(meta):
    bm, bn, bk = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
    return {"dy_desc": [bm, bk], "weight_desc": [bk, bn], "dS_desc": [bm, bk],
            "lora_A_desc": [bk, bn], "dx_desc": [bm, bn // 2 if meta["EPILOGUE_SPLIT"] else bn]}


@triton.jit
def _tma_kernel(
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
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    acc = descriptor_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, pid_m * BLOCK_M,
                          pid_n * BLOCK_N, D_out, R_act, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                          False, HAS_ADAPTER)
    store_tile(dx_desc, acc, pid_m * BLOCK_M, pid_n * BLOCK_N, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT)


@triton.jit
def _tma_persistent_kernel(
    dy_desc, weight_desc, dS_desc, lora_A_desc, dx_desc,   # as _tma_kernel
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    HAS_ADAPTER: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
):
    num_tiles = tl.cdiv(N, BLOCK_M) * tl.cdiv(D_in, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=True):
        pid_m, pid_n = grouped_tile(tile, N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
        acc = descriptor_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, pid_m * BLOCK_M,
                              pid_n * BLOCK_N, D_out, R_act, DOT_PRECISION, BLOCK_M, BLOCK_N,
                              BLOCK_K, False, HAS_ADAPTER)
        store_tile(dx_desc, acc, pid_m * BLOCK_M, pid_n * BLOCK_N, BLOCK_M, BLOCK_N, EPILOGUE_SPLIT)


def _ws_blocks(meta):
    bm, bn, bk, br = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"], meta["BLOCK_R"]
    return {"dy_desc": [bm, bk], "weight_desc": [bk, bn], "dS_desc": [bm, br],
            "lora_A_desc": [br, bn]}


@triton.jit
def _tma_ws_kernel(
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
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, D_in, BLOCK_M, BLOCK_N, GROUP_M)
    acc = ws_descriptor_tile(dy_desc, weight_desc, dS_desc, lora_A_desc, pid_m * BLOCK_M,
                             pid_n * BLOCK_N, D_out, DOT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
                             False, HAS_ADAPTER)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < N)[:, None] & (offs_n < D_in)[None, :]
    tl.store(dx_ptr + offs_m.to(tl.int64)[:, None] * stride_dx_n + offs_n[None, :],
             acc.to(dx_ptr.dtype.element_ty), mask=mask)


_KERNELS = {"pointer": _pointer_kernel, "tma": _tma_kernel,
            "tma_persistent": _tma_persistent_kernel, "tma_ws": _tma_ws_kernel}
_SMEM = {"pointer": _pointer_smem, "tma": _tma_smem, "tma_persistent": _persistent_smem,
         "tma_ws": ws_smem}
_BLOCKS = {"tma": _tma_blocks, "tma_persistent": _tma_blocks, "tma_ws": _ws_blocks}


def _pointer_spills(c, elem, consts, arch):
    # mma.sync compiles (no wgmma): a 128 x 128 16-bit tile on 4 warps spills 48 B on sm_89
    # (255 registers: the fp32 accumulator alone is 128 per thread), 128 x 256 on 8 warps 16 B
    # on sm_80; wgmma on sm_90 does neither.
    k = c.kwargs
    tile = k["BLOCK_M"] * k["BLOCK_N"]
    return arch < TMA_MIN_ARCH and (tile >= 128 * 256 or (c.num_warps == 4 and tile >= 128 * 128))


_LAUNCH = {v: {fp32: Launcher("fused_dx", _KERNELS[v], configs, INTERPRETER_CONFIG[v], KEY,
                              _SMEM[v], v, pre_hook=block_hook(_BLOCKS[v]) if v in _BLOCKS else None,
                              spills=_pointer_spills if v == "pointer" else None)
               for fp32, configs in by_dtype(CONFIGS[v]).items()}
           for v in _KERNELS}

SPECS = [
    KernelSpec("fused_dx", "pointer", _pointer_kernel, _LAUNCH["pointer"],
               unit_strides=("stride_dy_o", "stride_weight_i", "stride_dS_r", "stride_lora_A_i",
                             "stride_dx_i"), sweep=tuple(SWEEP_CONFIGS["pointer"])),
    *[KernelSpec("fused_dx", v, _KERNELS[v], _LAUNCH[v], dtypes=("bf16", "fp16", "fp32"),
                 blocks=_BLOCKS[v], consts={"HAS_ADAPTER": True}, sweep=tuple(SWEEP_CONFIGS[v]))
      for v in ("tma", "tma_persistent")],
    # fp32 fused_dx never takes tma_ws (``ws_fits``).
    KernelSpec("fused_dx", "tma_ws", _tma_ws_kernel, _LAUNCH["tma_ws"], dtypes=("bf16", "fp16"),
               blocks=_ws_blocks, consts={"HAS_ADAPTER": True},
               buckets=lambda dt, flags: {"BLOCK_R": buckets(WS_MAX_BLOCK_R)},
               sweep=tuple(SWEEP_CONFIGS["tma_ws"])),
]


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

    fp32 = dy.dtype == torch.float32
    has_adapter = R_act > 0
    # lora_A is read along its rows (the reduction runs over R_act): its row stride is D_in's,
    # legal whenever weight's is; it decides with the large operands (a copy would be R x D_in).
    big = (dy, weight, dx) + ((lora_A,) if has_adapter else ())
    ws_ok = ws_fits(R_act, fp32, b_kmajor=False) and has_ws(dy.device)
    precision = dot_precision(dy)
    first = INTERPRETER_CONFIG["tma"] if INTERPRET else by_dtype(CONFIGS["tma"])[fp32][0]
    tiles = triton.cdiv(N, first.kwargs["BLOCK_M"]) * triton.cdiv(D_in, first.kwargs["BLOCK_N"])
    sms = num_sms(dy.device)
    chosen = choose_variant(variant, dy.device, big, ws_ok, precision, tiles=tiles, sms=sms)
    ds_arg, a_arg = (dS, lora_A) if has_adapter else (dy, weight)   # placeholders: never read

    def run(v, cfg):
        launcher = _LAUNCH[v][fp32]
        launch = launcher.with_config(cfg) if cfg is not None else launcher
        count = lambda m: triton.cdiv(N, m["BLOCK_M"]) * triton.cdiv(D_in, m["BLOCK_N"])
        consts = dict(DOT_PRECISION=precision)
        if v == "pointer":
            args = (dy, weight, ds_arg, a_arg, dx, N, D_in, D_out, R_act, n_bucket(N),
                    dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1),
                    ds_arg.stride(0), ds_arg.stride(1), a_arg.stride(0), a_arg.stride(1),
                    dx.stride(0), dx.stride(1))
        else:
            descs = _descriptors(dy, weight, tma_operand(ds_arg) if has_adapter else ds_arg, a_arg)
            consts["HAS_ADAPTER"] = has_adapter
            if v == "tma_ws":
                args = (*descs, dx, N, D_in, D_out, R_act, n_bucket(N), dx.stride(0))
                consts["BLOCK_R"] = block_r(R_act, WS_MAX_BLOCK_R)
            else:
                args = (*descs, *_descriptors(dx), N, D_in, D_out, R_act, n_bucket(N))
        grid = (lambda m: (min(count(m), sms),)) if v == "tma_persistent" else (lambda m: (count(m),))
        with on_device(dy):
            launch[grid](*args, **consts)

    key = (n_bucket(N), D_in, D_out, R_act, precision, str(dy.dtype))
    chosen = run_variant("fused_dx", variant, chosen, config, key,
                         ["tma", "tma_persistent"] + (["tma_ws"] if ws_ok else []), run)
    LAUNCH_COUNTS["fused_dx"] += 1
    LAUNCH_COUNTS[f"fused_dx/{chosen}"] += 1
    return dx
