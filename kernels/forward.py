"""Triton forward kernels: the gated shrink and the fused base-plus-adapter GEMM, with launchers.

    shrink(x2d, lora_A, gates2d, col_adapter, col_scale) -> (S, SG)
        S  = x2d @ lora_A^T                                  (N, R_act)  x.dtype
        SG = S * gates2d[n, col_adapter[j]] * col_scale[j]   (N, R_act)  x.dtype, from the fp32 acc

    fused_forward(x2d, weight, bias, SG, lora_B) -> y
        y = x2d @ weight^T + bias + SG @ lora_B^T            (N, D_out)  x.dtype
        ONE fp32 accumulator: the K-loop runs over D_in (x, W tiles), then carries on over R_act
        (SG, lora_B tiles) as extra K-steps; the bias is added and y is written once.

The launchers follow docs/DESIGN.md: inputs are already validated upstream (any strides, same
dtype and device), outputs are freshly allocated and contiguous unless the caller passes ``out=``
(tests pre-fill it with NaN to prove every element is written).

Precision: fp32 accumulation everywhere. fp16/bf16 operands use the tensor cores directly; fp32
operands use TF32 tensor cores on the GPU (``input_precision="tf32"``, ~1e-3 relative error) and
exact fp32 ("ieee") under ``TRITON_INTERPRET=1``, so CPU tests match a float64 reference to ~1e-5.
Kernels take no Python float scalars (the gate scalings arrive as the fp32 table ``col_scale``),
so nothing arrives as fp64.

Why pointer arithmetic and not Hopper TMA descriptors or a persistent grid: triton 3.6 TMA
(``tl.make_tensor_descriptor`` / host ``TensorDescriptor``) needs a unit inner stride and 16-byte
aligned outer strides. Our contract allows any strides (transposed or sliced ``x`` and ``weight``)
and any ``R_act`` (the packed ``SG`` row of R_act=5 bf16 values is 10 bytes), so TMA would need a
second code path whose speed nobody here can measure (no GPU in this session). Plain masked loads
still compile to cp.async pipelines feeding HGMMA (wgmma) on sm_90, which
``kernels.inspect.compile_report`` checks for every shipped config. A persistent grid pays off
mainly together with TMA and epilogue overlap; it is left for when it can be timed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import LAUNCH_COUNTS
from .tuning import block_r, check_out, dot_precision, fit_stages, n_bucket, on_device, tuned

# ---------------------------------------------------------------------------------------------
# Launch configs (data). Target: H200 (sm_90, 227 KiB shared memory per block, 132 SMs), bf16,
# N in {2048, 8192, 16384} tokens, D_in/D_out in {4096, 14336}, R_act 16..256.
# UNTUNED: chosen from the Triton matmul tutorial's CUDA list and common Hopper practice
# (128x128/128x256 tiles, BLOCK_K 64, 8 warps = 2 warpgroups for wgmma, 3-4 stages); nobody has
# timed them on an H200 yet. ``tuning.fit_stages`` lowers the stages (fp32 inputs) or drops a
# config whose pipelined tiles would not fit in shared memory.
# ---------------------------------------------------------------------------------------------
FUSED_FORWARD_CONFIGS = [
    # The first entry is also the LITELORA_AUTOTUNE=0 choice: a safe middle for every shape.
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_SIZE_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_SIZE_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_SIZE_M": 8}, num_warps=4, num_stages=4),
    # Fewer, narrower tiles for N = 2048 rows so every SM still gets work.
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_SIZE_M": 8}, num_warps=4, num_stages=4),
]
# The shrink reads x once and writes N x R_act: memory-bound. Row tiles of 64 or 128 trade parallel
# programs (N = 2048 gives 16..32 of them) against re-reading lora_A's tile per program; 64 rows is
# the floor, as wgmma needs 64 rows per warpgroup (32-row tiles compile to the older mma.sync).
SHRINK_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_K": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]
# Under TRITON_INTERPRET=1: small tiles so that test shapes of tens of rows still cross several
# tile edges in every dimension (and a partial GROUP_SIZE_M group), and one config, so the
# interpreter never benchmarks.
FUSED_FORWARD_INTERPRETER_CONFIG = triton.Config(
    {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_SIZE_M": 2}, num_warps=4, num_stages=1)
SHRINK_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 32, "BLOCK_K": 16}, num_warps=4, num_stages=1)

# The adapter stretch of the fused K-loop steps over R_act in BLOCK_R columns; the shrink holds
# BLOCK_R columns of S per program (a power of two >= 16, ``tuning.block_r``).
FUSED_MAX_BLOCK_R = 64
SHRINK_MAX_BLOCK_R = 128


# ---------------------------------------------------------------------------------------------
# Kernels. Self-contained on purpose (no @triton.jit helpers and no tl.cdiv / tl.zeros-like
# library jit functions called from a helper), so ``kernels.inspect`` can compile them ahead of
# time exactly as they are.
# ---------------------------------------------------------------------------------------------
@triton.jit
def _shrink_kernel(
    x_ptr,            # (N, D_in)      x.dtype, any strides
    lora_a_ptr,       # (R_act, D_in)  x.dtype, any strides
    gates_ptr,        # (N, K)         fp32/fp16/bf16, row stride may be 0 (per-adapter gates)
    col_adapter_ptr,  # (R_act,)       int32, contiguous: adapter index of each column
    col_scale_ptr,    # (R_act,)       fp32, contiguous: that adapter's scaling s_k
    s_ptr,            # (N, R_act)     x.dtype out: S
    sg_ptr,           # (N, R_act)     x.dtype out: S * G_E
    N, D_in, R_act,
    N_BUCKET,         # autotune key only
    stride_xn, stride_xk,
    stride_ar, stride_ak,
    stride_gn, stride_gk,
    stride_sn, stride_sr,
    stride_sgn, stride_sgr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_r = (R_act + BLOCK_R - 1) // BLOCK_R
    # The R blocks of one row block are neighbouring programs, so when R_act > BLOCK_R the second
    # read of that x tile comes from L2, not HBM.
    pid_m = pid // num_pid_r
    pid_r = pid % num_pid_r

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge wrap back into range, so only the K edge needs a load mask; the
    # stores are masked. int64: row * stride reaches 2**31 at realistic N * D_in.
    rows = (offs_m % N).to(tl.int64)
    cols = (offs_r % R_act).to(tl.int64)

    x_ptrs = x_ptr + rows[:, None] * stride_xn + offs_k[None, :] * stride_xk
    a_ptrs = lora_a_ptr + cols[None, :] * stride_ar + offs_k[:, None] * stride_ak  # (BK, BR) of A^T
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(0, D_in, BLOCK_K):
        k_mask = offs_k < D_in - k
        x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
        a = tl.load(a_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(x, a, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        a_ptrs += BLOCK_K * stride_ak

    # Expanded gate G_E[n, j] = gates[n, col_adapter[j]] * col_scale[j], upcast to fp32.
    adapter = tl.load(col_adapter_ptr + cols).to(tl.int64)
    scale = tl.load(col_scale_ptr + cols).to(tl.float32)
    gate = tl.load(gates_ptr + rows[:, None] * stride_gn + adapter[None, :] * stride_gk)
    sg = acc * (gate.to(tl.float32) * scale[None, :])

    out_m = offs_m.to(tl.int64)
    out_r = offs_r.to(tl.int64)
    mask = (offs_m < N)[:, None] & (offs_r < R_act)[None, :]
    tl.store(s_ptr + out_m[:, None] * stride_sn + out_r[None, :] * stride_sr,
             acc.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(sg_ptr + out_m[:, None] * stride_sgn + out_r[None, :] * stride_sgr,
             sg.to(sg_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_forward_kernel(
    x_ptr,            # (N, D_in)      any strides
    w_ptr,            # (D_out, D_in)  any strides
    bias_ptr,         # (D_out,)       or a dummy pointer when HAS_BIAS is False
    sg_ptr,           # (N, R_act)     S * G_E from the shrink; dummy when R_act == 0
    lora_b_ptr,       # (D_out, R_act) active columns of B_cat; dummy when R_act == 0
    y_ptr,            # (N, D_out)     out
    N, D_in, D_out, R_act,
    N_BUCKET,         # autotune key only
    stride_xn, stride_xk,
    stride_wo, stride_wk,
    stride_bias,
    stride_sgn, stride_sgr,
    stride_bo, stride_br,
    stride_yn, stride_yo,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    # Grouped tile order: consecutive programs sweep GROUP_SIZE_M row blocks for one column block
    # before moving to the next column block, so a wave of programs shares a few x row panels and
    # a few W column panels in L2 instead of streaming all of W once per row block.
    pid = tl.program_id(0)
    num_pid_m = (N + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (D_out + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Edge rows/columns wrap back into range (loads need only the K mask; stores are masked);
    # int64 because row * stride passes 2**31 at N * D_in beyond ~2.1e9 elements.
    rows = (offs_m % N).to(tl.int64)
    cols = (offs_n % D_out).to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    # Base stretch of the K-loop: x @ W^T over D_in.
    x_ptrs = x_ptr + rows[:, None] * stride_xn + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wo + offs_k[:, None] * stride_wk  # (BK, BN) of W^T
    for k in range(0, D_in, BLOCK_K):
        k_mask = offs_k < D_in - k
        x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Adapter stretch, same accumulator: SG @ lora_B^T over the R_act active columns (no
    # iterations when every adapter is inactive).
    offs_r = tl.arange(0, BLOCK_R)
    sg_ptrs = sg_ptr + rows[:, None] * stride_sgn + offs_r[None, :] * stride_sgr
    b_ptrs = lora_b_ptr + cols[None, :] * stride_bo + offs_r[:, None] * stride_br  # (BR, BN) of B^T
    for r in range(0, R_act, BLOCK_R):
        r_mask = offs_r < R_act - r
        sg = tl.load(sg_ptrs, mask=r_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=r_mask[:, None], other=0.0)
        acc = tl.dot(sg, b, acc, input_precision=DOT_PRECISION)
        sg_ptrs += BLOCK_R * stride_sgr
        b_ptrs += BLOCK_R * stride_br

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]

    out_m = offs_m.to(tl.int64)
    out_n = offs_n.to(tl.int64)
    mask = (offs_m < N)[:, None] & (offs_n < D_out)[None, :]
    tl.store(y_ptr + out_m[:, None] * stride_yn + out_n[None, :] * stride_yo,
             acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------
def _shrink_smem_per_stage(config, elem_bytes, block_r):
    return (config.kwargs["BLOCK_M"] + block_r) * config.kwargs["BLOCK_K"] * elem_bytes


def _fused_smem_per_stage(config, elem_bytes):
    c = config.kwargs
    return (c["BLOCK_M"] + c["BLOCK_N"]) * c["BLOCK_K"] * elem_bytes


def _prune_shrink(configs, named_args, **kwargs):
    elem = named_args["x_ptr"].element_size()
    return fit_stages(configs, lambda c: _shrink_smem_per_stage(c, elem, kwargs["BLOCK_R"]))


def _prune_fused(configs, named_args, **kwargs):
    elem = named_args["x_ptr"].element_size()
    return fit_stages(configs, lambda c: _fused_smem_per_stage(c, elem))


_shrink_launch = tuned(_shrink_kernel, SHRINK_CONFIGS, SHRINK_INTERPRETER_CONFIG,
                       key=["N_BUCKET", "D_in", "R_act"], prune=_prune_shrink)
_fused_forward_launch = tuned(_fused_forward_kernel, FUSED_FORWARD_CONFIGS,
                              FUSED_FORWARD_INTERPRETER_CONFIG,
                              key=["N_BUCKET", "D_in", "D_out", "R_act"], prune=_prune_fused)


def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, *, out=None):
    """``(S, SG)``: ``S = x2d @ lora_A^T`` and ``SG = S * G_E``, both ``(N, R_act)`` in x's dtype.

    ``gates2d`` ``(N, K)`` may be a row-stride-0 expanded view; ``col_adapter`` ``(R_act,)`` int32
    and ``col_scale`` ``(R_act,)`` float are the plan's per-column tables. ``out``: optional
    ``(S, SG)`` buffers to write into (tests pass NaN-filled ones).
    """
    N, D_in = x2d.shape
    R_act = lora_A.shape[0]
    assert lora_A.shape[1] == D_in and gates2d.shape[0] == N, "shrink: shape mismatch"
    assert col_adapter.shape == (R_act,) and col_scale.shape == (R_act,), "shrink: column tables"
    S_out, SG_out = out if out is not None else (None, None)
    S = check_out(S_out, "S", (N, R_act), x2d.dtype, x2d.device)
    SG = check_out(SG_out, "SG", (N, R_act), x2d.dtype, x2d.device)
    if N == 0 or R_act == 0:
        return S, SG
    col_adapter = col_adapter.to(device=x2d.device, dtype=torch.int32).contiguous()
    col_scale = col_scale.to(device=x2d.device, dtype=torch.float32).contiguous()
    br = block_r(R_act, SHRINK_MAX_BLOCK_R)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(R_act, br),)

    with on_device(x2d):
        _shrink_launch[grid](
            x2d, lora_A, gates2d, col_adapter, col_scale, S, SG,
            N, D_in, R_act, n_bucket(N),
            x2d.stride(0), x2d.stride(1),
            lora_A.stride(0), lora_A.stride(1),
            gates2d.stride(0), gates2d.stride(1),
            S.stride(0), S.stride(1),
            SG.stride(0), SG.stride(1),
            DOT_PRECISION=dot_precision(x2d), BLOCK_R=br,
        )
    LAUNCH_COUNTS["shrink"] += 1
    return S, SG


def fused_forward(x2d, weight, bias, SG, lora_B, *, out=None):
    """``y = x2d @ weight^T + bias + SG @ lora_B^T`` ``(N, D_out)`` in x's dtype, one accumulator.

    ``bias`` may be ``None``; ``SG`` ``(N, R_act)`` and ``lora_B`` ``(D_out, R_act)`` may have
    ``R_act == 0`` (no active adapter: the adapter loop is skipped). ``out``: optional ``y`` buffer.
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
    # Unused pointers still need a valid tensor argument; the constexpr/loop bounds keep them unread.
    bias_arg = bias if bias is not None else x2d
    sg_arg, b_arg = (SG, lora_B) if R_act > 0 else (x2d, weight)
    br = block_r(R_act, FUSED_MAX_BLOCK_R)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(D_out, meta["BLOCK_N"]),)

    with on_device(x2d):
        _fused_forward_launch[grid](
            x2d, weight, bias_arg, sg_arg, b_arg, y,
            N, D_in, D_out, R_act, n_bucket(N),
            x2d.stride(0), x2d.stride(1),
            weight.stride(0), weight.stride(1),
            bias.stride(0) if bias is not None else 0,
            SG.stride(0), SG.stride(1),
            lora_B.stride(0), lora_B.stride(1),
            y.stride(0), y.stride(1),
            HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(x2d), BLOCK_R=br,
        )
    LAUNCH_COUNTS["fused_forward"] += 1
    return y


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compile specs for ``kernels.inspect.compile_report``: every shipped config in the
# benchmark dtype (bf16) at the BLOCK_R values the launchers pick for R_act = 16 (K = 1) and the
# largest tile (R_act >= 64 or 128), with the stages ``fit_stages`` would launch, plus one fp16
# and one fp32 variant. Arguments are specialised as the JIT would see them at the benchmark shapes: unit inner
# strides are constants, every other size/stride a multiple of 16.
# ---------------------------------------------------------------------------------------------
def _aot_specs():
    from .inspect import make_spec

    def aligned(fn, constexprs, unaligned=()):
        return [a for a in fn.arg_names if a not in constexprs and a not in unaligned]

    specs = []
    variants = [("bf16", br, c) for br in (16, FUSED_MAX_BLOCK_R)
                for c in fit_stages(FUSED_FORWARD_CONFIGS, lambda c: _fused_smem_per_stage(c, 2))]
    variants.append(("fp16", 16, fit_stages(FUSED_FORWARD_CONFIGS[:1],
                                            lambda c: _fused_smem_per_stage(c, 2))[0]))
    # fp32 (TF32 wgmma) with the widest tile, whose stages fit_stages lowers to fit.
    variants.append(("fp32", FUSED_MAX_BLOCK_R, fit_stages(
        FUSED_FORWARD_CONFIGS[1:2], lambda c: _fused_smem_per_stage(c, 4))[0]))
    for dtype, br, c in variants:
        consts = dict(c.kwargs, HAS_BIAS=True, DOT_PRECISION="tf32", BLOCK_R=br, stride_xk=1,
                      stride_wk=1, stride_bias=1, stride_sgr=1, stride_br=1, stride_yo=1)
        ptrs = {p: f"*{dtype}" for p in ("x_ptr", "w_ptr", "bias_ptr", "sg_ptr", "lora_b_ptr", "y_ptr")}
        k = c.kwargs
        label = (f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} G{k['GROUP_SIZE_M']} R{br} "
                 f"w{c.num_warps} s{c.num_stages} {dtype}")
        specs.append(make_spec("fused_forward", _fused_forward_kernel, ptrs, consts, c.num_warps,
                               c.num_stages, aligned=aligned(_fused_forward_kernel, consts),
                               config=label))

    variants = [("bf16", br, c) for br in (16, SHRINK_MAX_BLOCK_R)
                for c in fit_stages(SHRINK_CONFIGS, lambda c, br=br: _shrink_smem_per_stage(c, 2, br))]
    variants.append(("fp16", 16, fit_stages(SHRINK_CONFIGS[:1],
                                            lambda c: _shrink_smem_per_stage(c, 2, 16))[0]))
    variants.append(("fp32", SHRINK_MAX_BLOCK_R, fit_stages(
        SHRINK_CONFIGS[:1], lambda c: _shrink_smem_per_stage(c, 4, SHRINK_MAX_BLOCK_R))[0]))
    for dtype, br, c in variants:
        consts = dict(c.kwargs, DOT_PRECISION="tf32", BLOCK_R=br, stride_xk=1, stride_ak=1,
                      stride_gk=1, stride_sr=1, stride_sgr=1)
        ptrs = {p: f"*{dtype}" for p in ("x_ptr", "lora_a_ptr", "gates_ptr", "s_ptr", "sg_ptr")}
        ptrs.update(col_adapter_ptr="*i32", col_scale_ptr="*fp32")
        k = c.kwargs
        label = f"{k['BLOCK_M']}x{br}x{k['BLOCK_K']} w{c.num_warps} s{c.num_stages} {dtype}"
        # Per-row gates (N, K) with K = 8 adapters: the gates' row stride is not a multiple of 16.
        specs.append(make_spec("shrink", _shrink_kernel, ptrs, consts, c.num_warps, c.num_stages,
                               aligned=aligned(_shrink_kernel, consts, ("stride_gn",)),
                               config=label))
    return specs


AOT_SPECS = _aot_specs()
