"""Tensor-descriptor (TMA) kernels of the two fused GEMMs, and the launch helper both use.

    fused_forward:  y  = x  @ weight^T + SG @ lora_B^T + bias   b operands K-major (rows of W)
    fused_dx:       dx = dy @ weight   + dS @ lora_A            b operands N-major (rows of W)

Both are ``out = a1 @ b1 + a2 @ b2 (+ bias)``: a base stretch of the reduction over ``K1``
(``D_in`` for the forward, ``D_out`` for dx) and an adapter stretch over ``K2 = R_act``, on ONE
fp32 accumulator, with ``out`` written once. ``B_KMAJOR`` says how b1/b2 sit in memory: the
forward reads ``weight`` (D_out, D_in) and ``lora_B`` (D_out, R_act) row by row along the
reduction (tiles ``[BLOCK_N, BLOCK_K]``, transposed in shared memory for the dot); dx reads
``weight`` (D_out, D_in) and ``lora_A`` (R_act, D_in) across it (tiles ``[BLOCK_K, BLOCK_N]``).

Variants (``kernels.tuning.VARIANTS``; one kernel, constexpr switches, so the autotuner can
pick among them as configs of one launch):

- ``tma``: one output tile per program, grouped order (``tiles.grouped_tile``). The K-loop runs
  over ``cdiv(K1, BLOCK_K) + cdiv(K2, BLOCK_K)`` steps and picks the descriptor pair of each
  step (base or adapter) at run time, so the adapter steps continue the base steps' software
  pipeline: no second loop, no second pipeline fill and drain per tile (checked in the sm_90
  compile: multi-stage shared buffers, UTMALDG, HGMMA; loading inside if/else branches instead
  left the loop unpipelined, one buffer per operand). An adapter step is BLOCK_K wide; past
  ``R_act`` the TMA unit fills zeros without reading memory, so R_act = 16 costs one 64-deep
  step (1.6% of a 4096-deep base loop instead of the ideal 0.4%).
- ``tma_persistent``: the same loop inside a loop over tiles strided by the grid, and a grid of
  ``min(tiles, SMs)`` programs; ``flatten=True`` lets the compiler pipeline across tile
  boundaries, so the next tile's loads overlap this tile's epilogue (TMA store).
- ``tma_ws``: warp-specialized (``tl.range(..., warp_specialize=True)``): a producer warp issues
  the TMA loads while the consumer warpgroup runs wgmma. Triton 3.6 specializes on sm_90 only a
  single plain loop of descriptor loads feeding one dot, with ``num_warps=4`` (seen in the
  compiler: a run-time descriptor choice inside the loop, or a second loop after it, leaves the
  loop unspecialized or crashes the compiler; the adapter step placed before the loop fails to
  compile too). So the adapter stretch is ONE step after the loop, with a ``[*, BLOCK_R]`` tile
  holding all R_act columns (R_act <= ``WS_MAX_BLOCK_R``), and the
  epilogue stores through pointers (a descriptor store in a specialized kernel failed to compile).
  ``setmaxnreg`` in the SASS confirms the specialization (``kernels.compile_report``).

Ragged edges need no masks: loads past the tensor edge are zero-filled by the TMA unit, the
descriptor store clips (the pointer store of the WS epilogue is masked). Exact fp32 (torch's TF32
switch off) never runs here: without wgmma these tiles spill (``tuning.choose_variant``). The descriptors are host
``triton.tools.tensor_descriptor.TensorDescriptor`` objects (passed by value, no device-side
descriptor creation, no global scratch allocator); a config's ``pre_hook`` sets their block
shapes, so the autotuner can try tile sizes on the same descriptors.

Nothing here has run on a GPU yet: the configs are untuned, and whether a variant beats the
pointer kernels (or cuBLAS) is for ``benchmarks/gpu_check.sh`` to measure. The interpreter tests
check the numbers, the sm_90 compile report the instructions.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .tiles import grouped_tile
from .tuning import (INTERPRET, block_r, fit_stages, n_bucket, num_sms, on_device, tma_operand,
                     tuned)

# The warp-specialized variant holds the whole adapter bank in one tile of this many columns.
WS_MAX_BLOCK_R = 64


def _set_block_shapes(nargs):
    """Config ``pre_hook``: the descriptors' block shapes for this config and variant."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    # The adapter tile is BLOCK_K wide in the single-loop kernels (same descriptor type as the
    # base operands, so one loop can switch between them), BLOCK_R wide after the WS loop.
    kr = nargs["BLOCK_R"] if nargs["WARP_SPECIALIZE"] else bk
    kmajor = nargs["B_KMAJOR"]
    nargs["a1_desc"].block_shape = [bm, bk]
    nargs["b1_desc"].block_shape = [bn, bk] if kmajor else [bk, bn]
    nargs["a2_desc"].block_shape = [bm, kr]
    nargs["b2_desc"].block_shape = [bn, kr] if kmajor else [kr, bn]
    nargs["out_desc"].block_shape = [bm, bn]


def _config(bm, bn, bk, group, warps, stages, variant):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group,
                          "PERSISTENT": variant == "tma_persistent",
                          "WARP_SPECIALIZE": variant == "tma_ws"},
                         num_warps=warps, num_stages=stages, pre_hook=_set_block_shapes)


# ---------------------------------------------------------------------------------------------
# Launch configs (data). Target: H200 (sm_90, 132 SMs, 227 KiB shared memory per block), bf16,
# N in {2048, 8192, 16384} rows, D_in/D_out in {4096, 14336}, R_act 16..64. UNTUNED (no GPU has
# timed them): the usual Hopper TMA GEMM shapes (128x128 / 128x256 tiles, BLOCK_K 64 = one
# 128-byte swizzled bf16 row, 2 consumer warpgroups, 3-4 stages). Kept short on purpose: every
# config is one ~1.5 s compile and one timing per shape on the GPU. The first entry of each list
# is what LITELORA_AUTOTUNE=0 launches for that variant.
# ---------------------------------------------------------------------------------------------
TMA_CONFIGS = {
    "tma": [_config(128, 128, 64, 8, 8, 4, "tma"), _config(128, 256, 64, 8, 8, 3, "tma")],
    "tma_persistent": [_config(128, 128, 64, 8, 8, 4, "tma_persistent")],
    # Warp specialization needs num_warps=4 on sm_90 (one consumer warpgroup + the producer).
    "tma_ws": [_config(128, 128, 64, 8, 4, 4, "tma_ws")],
}
# fp32 operands (TF32 wgmma) take twice the shared memory per tile; 128x128x32 keeps 3 stages
# and the output tile within budget, and no register spills (compile report). "tma_ws" in fp32
# serves fused_forward only (see ``ws_fits``).
TMA_FP32_CONFIGS = {
    "tma": [_config(128, 128, 32, 8, 8, 3, "tma")],
    "tma_persistent": [_config(128, 128, 32, 8, 8, 3, "tma_persistent")],
    "tma_ws": [_config(128, 128, 32, 8, 4, 3, "tma_ws")],
}
# Under TRITON_INTERPRET=1: small tiles so test shapes of tens of rows cross tile edges in every
# dimension and the reduction runs several base steps, then adapter steps.
TMA_INTERPRETER_CONFIGS = {v: _config(32, 32, 16, 2, 4, 1, v)
                           for v in ("tma", "tma_persistent", "tma_ws")}


@triton.jit
def _load_b(desc, off_n, k, B_KMAJOR: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) b tile at reduction offset ``k``, from a K-major or N-major operand."""
    if B_KMAJOR:
        tile = desc.load([off_n, k]).T
    else:
        tile = desc.load([k, off_n])
    return tile


@triton.jit
def _fused_gemm_tma_kernel(
    a1_desc,       # (M, K1)      x (forward) / dy (dx); block [BLOCK_M, BLOCK_K]
    b1_desc,       # weight: (N_out, K1) if B_KMAJOR else (K1, N_out)
    a2_desc,       # (M, K2)      SG / dS, K2 = R_act; block [BLOCK_M, BLOCK_K or BLOCK_R]
    b2_desc,       # lora_B (N_out, K2) if B_KMAJOR else lora_A (K2, N_out)
    out_desc,      # (M, N_out)   y / dx; block [BLOCK_M, BLOCK_N] (single-loop variants)
    out_ptr,       # the same output, for the pointer epilogue of the WS variant
    bias_ptr,      # (N_out,) or a placeholder when HAS_BIAS is False
    M, N_out, K1, K2,
    stride_out_m, stride_bias,
    N_BUCKET,      # autotune key only
    HAS_BIAS: tl.constexpr, HAS_ADAPTER: tl.constexpr, B_KMAJOR: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    k1_steps = tl.cdiv(K1, BLOCK_K)
    if WARP_SPECIALIZE:
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N_out, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(k1_steps, warp_specialize=True):
            a = a1_desc.load([off_m, ki * BLOCK_K])
            b = _load_b(b1_desc, off_n, ki * BLOCK_K, B_KMAJOR)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if HAS_ADAPTER:
            # All R_act adapter columns in one BLOCK_R-deep step (see the module docstring).
            a = a2_desc.load([off_m, 0])
            b = _load_b(b2_desc, off_n, 0, B_KMAJOR)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n * stride_bias, mask=offs_n < N_out, other=0.0)
            acc += bias.to(tl.float32)[None, :]
        mask = (offs_m < M)[:, None] & (offs_n < N_out)[None, :]
        tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_out_m + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N_out, BLOCK_N)
        k_steps = k1_steps
        if HAS_ADAPTER:
            k_steps += tl.cdiv(K2, BLOCK_K)
        # Non-persistent: the grid has one program per tile and this loop runs once.
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=PERSISTENT):
            pid_m, pid_n = grouped_tile(tile, M, N_out, BLOCK_M, BLOCK_N, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_steps):
                # One loop over base steps then adapter steps: only the descriptor pair and the
                # offset change, so the pipeliner keeps loads of later steps in flight across
                # the switch.
                a_desc = a1_desc
                b_desc = b1_desc
                k = ki * BLOCK_K
                if HAS_ADAPTER:
                    if ki >= k1_steps:
                        a_desc = a2_desc
                        b_desc = b2_desc
                        k = (ki - k1_steps) * BLOCK_K
                a = a_desc.load([off_m, k])
                b = _load_b(b_desc, off_n, k, B_KMAJOR)
                acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
            if HAS_BIAS:
                offs_n = off_n + tl.arange(0, BLOCK_N)
                bias = tl.load(bias_ptr + offs_n * stride_bias, mask=offs_n < N_out, other=0.0)
                acc += bias.to(tl.float32)[None, :]
            out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


def _smem_per_stage(c, elem):
    k = c.kwargs
    return (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * elem


def _smem_fixed(c, elem):
    # The single-loop variants stage the output tile in shared memory for the TMA store.
    k = c.kwargs
    return 0 if k["WARP_SPECIALIZE"] else k["BLOCK_M"] * k["BLOCK_N"] * elem


def _prune(configs, nargs, **kwargs):
    elem = nargs["out_ptr"].element_size()
    ws_ok = ws_fits(nargs["K2"], elem == 4, kwargs["B_KMAJOR"])
    configs = [c for c in configs if ws_ok or not c.kwargs["WARP_SPECIALIZE"]]
    return fit_stages(configs, lambda c: _smem_per_stage(c, elem), lambda c: _smem_fixed(c, elem))


# DOT_PRECISION: fp32 retunes when torch's TF32 setting changes (different instructions).
_KEY = ["N_BUCKET", "K1", "N_out", "K2", "B_KMAJOR", "DOT_PRECISION"]


def _launchers(fp32: bool):
    table = TMA_FP32_CONFIGS if fp32 else TMA_CONFIGS
    out = {v: tuned(_fused_gemm_tma_kernel, table[v], TMA_INTERPRETER_CONFIGS[v], key=_KEY,
                    prune=_prune) for v in table}
    # "auto": the autotuner times every variant's configs (the WS ones only where they fit).
    every = [c for v in table for c in table[v]]
    out["tma_auto"] = tuned(_fused_gemm_tma_kernel, every, TMA_INTERPRETER_CONFIGS["tma"],
                            key=_KEY, prune=_prune)
    return out


_LAUNCH = {False: _launchers(False), True: _launchers(True)}


def ws_fits(r_act: int, fp32: bool, b_kmajor: bool) -> bool:
    """The warp-specialized kernel fits this call: the whole adapter bank in one tile, and not
    fp32 with N-major b operands (fused_dx): triton 3.6 fails to lower that TF32 wgmma in a
    specialized loop (ConvertNVGPUToLLVM error at compile time)."""
    return r_act <= WS_MAX_BLOCK_R and not (fp32 and not b_kmajor)


def launch(a1, b1, a2, b2, out, bias, *, b_kmajor: bool, variant: str, precision: str):
    """``out = a1 @ b1' + a2 @ b2' (+ bias)`` through descriptors (see the module docstring).

    ``a1`` (M, K1), ``out`` (M, N_out) and ``b1`` must be ``tuning.tma_legal`` (the caller
    checked). ``a2``/``b2`` (K2 = R_act, may be 0) are copied into aligned buffers only if they
    are not legal (the shrink launchers already return padded, legal ``SG``/``dS``).
    ``variant``: "tma", "tma_persistent", "tma_ws", or "tma_auto" (autotuned among them; the
    interpreter runs the "tma" config).
    """
    import torch

    M, K1 = a1.shape
    N_out = out.shape[1]
    K2 = a2.shape[1] if a2 is not None else 0
    has_adapter = K2 > 0
    if has_adapter:
        a2, b2 = tma_operand(a2), tma_operand(b2)
    else:
        a2, b2 = a1, b1          # placeholders: the adapter steps never run
    # Block shapes are placeholders here; the config's pre_hook sets them before the launch.
    descs = [TensorDescriptor.from_tensor(t, [16, 16]) for t in (a1, b1, a2, b2, out)]
    bias_arg = bias if bias is not None else out
    fp32 = a1.dtype == torch.float32
    key = variant
    if INTERPRET and key == "tma_auto":
        key = "tma"
    sms = num_sms(a1.device)
    # BLOCK_R only shapes the WS kernel's adapter tile; the others get one fixed value, so a new
    # R_act bucket does not recompile them.
    ws_possible = key in ("tma_ws", "tma_auto") and ws_fits(K2, fp32, b_kmajor)
    block_r_arg = block_r(K2, WS_MAX_BLOCK_R) if ws_possible else 16

    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N_out, meta["BLOCK_N"])
        return (min(tiles, sms) if meta["PERSISTENT"] else tiles,)

    with on_device(a1):
        _LAUNCH[fp32][key][grid](
            *descs, out, bias_arg,
            M, N_out, K1, K2,
            out.stride(0), bias.stride(0) if bias is not None else 0,
            n_bucket(M),
            HAS_BIAS=bias is not None, HAS_ADAPTER=has_adapter, B_KMAJOR=b_kmajor,
            DOT_PRECISION=precision, BLOCK_R=block_r_arg,
        )
    return out
