"""Device-side pieces shared by the GEMM-shaped kernels (inlined by Triton into each caller).

- ``grouped_tile``: the program's output tile in grouped order, for L2 reuse.
- ``keep_scale``: the LoRA-dropout keep factor of a tile of ``x`` (``kernels/dropout.py``).
- ``dot_loop``: one stretch of a reduction, ``acc += a_tile @ b_tile`` over ``length`` steps,
  masked at the ragged end. The pointer kernels of the fused GEMMs call it once per stretch (base
  weight, then adapter columns) on the same accumulator: two pipelined loops, the second short.
  (The descriptor kernels in ``fused_tma`` run both stretches in one loop instead; with pointer
  loads that would mean choosing between two tile-sized pointer tensors at every step.)

Triton inlines ``@triton.jit`` callees before its software pipeliner runs, so a loop here is
pipelined (cp.async stages feeding wgmma on sm_90) exactly as if written in the kernel;
``kernels.compile_report`` checks that for every shipped config.
"""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of program ``pid`` over a ``rows x cols`` output.

    GROUP_M consecutive programs take GROUP_M row tiles of one column tile before moving to the
    next column tile, so a wave of programs shares a few row panels of the left operand and a
    few column panels of the right one in L2 instead of streaming the right operand once per row
    tile.
    """
    num_m = (rows + BLOCK_M - 1) // BLOCK_M
    num_n = (cols + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % per_group) % group_size)
    pid_n = (pid % per_group) // group_size
    return pid_m, pid_n


@triton.jit
def keep_scale(seed, n_idx, d_idx, P_DROP: tl.constexpr):
    """``keep / (1 - p)`` (fp32) at the positions ``(n_idx, d_idx)`` of ``x``.

    ``seed``: int scalar; ``n_idx``/``d_idx``: int tiles of absolute row and column indices that
    broadcast to the tile's shape (``rows[:, None]`` and ``cols[None, :]``, or transposed for a
    tile of ``x^T``); their low 32 bits are the Philox counters. ``P_DROP`` is a compile-time
    constant, so callers compile this away entirely when ``p = 0``.
    """
    n = n_idx.to(tl.uint32) + tl.zeros_like(d_idx).to(tl.uint32)
    d = d_idx.to(tl.uint32) + tl.zeros_like(n_idx).to(tl.uint32)
    z = tl.zeros_like(n)
    bits, _, _, _ = tl.philox(seed, d, n, z, z)
    u = tl.uint_to_uniform_float(bits)
    return tl.where(u >= P_DROP, 1.0 / (1.0 - P_DROP), 0.0)


@triton.jit
def dot_loop(acc, a_ptrs, b_ptrs, length, step_a, step_b, BLOCK_K: tl.constexpr,
             DOT_PRECISION: tl.constexpr,
             drop_seed=0, drop_n=0, drop_d=0, drop_on=1,
             DROP_ALONG_N: tl.constexpr = False, P_DROP: tl.constexpr = 0.0,
             g_ptrs=0, g_scale=1.0, use_gate=False, step_g=0, GATE_B: tl.constexpr = False):
    """``acc + sum_k a[:, k] b[k, :]`` over ``length`` reduction steps, BLOCK_K at a time.

    ``a_ptrs`` (BM, BLOCK_K) and ``b_ptrs`` (BLOCK_K, BN) point at the first step; ``step_a`` /
    ``step_b`` are the element strides of one reduction step in each operand. Only the reduction
    edge is masked: callers wrap out-of-range rows/columns onto valid ones and mask the store.

    Two optional transforms of the loaded tiles, each compiled out when off:

    - LoRA dropout on ``a`` (``P_DROP > 0``): ``a`` is an ``x`` tile, and each element is
      multiplied by ``keep_scale`` of its ``(n, d)`` position in ``x``. ``drop_n`` /
      ``drop_d`` are the tile's row and column indices at the first step (broadcastable to the
      tile); the reduction walks along ``d`` (the shrink reads ``x`` row-major) or, with
      ``DROP_ALONG_N``, along ``n`` (``dA`` reads ``x`` transposed). ``drop_on == 0`` at run time
      leaves the tile alone (the ``dB`` programs of ``lora_weight_grads``).
    - Gate on ``b`` (``GATE_B``): ``b[k, p] * (gates[k, col_adapter[p]] * col_scale[p])`` in fp32,
      rounded back to b's dtype, as the op forms ``SG`` from the saved ``S``; ``g_ptrs``
      (BLOCK_K, BN) walk by ``step_g``, ``g_scale`` is the (BN,) scaling row. Where ``use_gate``
      is False the gate loads are masked off (no memory traffic) and read as 1.
    """
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, length, BLOCK_K):
        mask_k = offs_k < length - k0
        a = tl.load(a_ptrs, mask=mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
        if P_DROP > 0.0:
            if DROP_ALONG_N:
                keep = keep_scale(drop_seed, drop_n + k0, drop_d, P_DROP)
            else:
                keep = keep_scale(drop_seed, drop_n, drop_d + k0, P_DROP)
            keep = tl.where(drop_on != 0, keep, 1.0)
            a = (a.to(tl.float32) * keep).to(a.dtype)
        if GATE_B:
            g = tl.load(g_ptrs, mask=mask_k[:, None] & use_gate, other=1.0)
            b = (b.to(tl.float32) * (g.to(tl.float32) * g_scale[None, :])).to(b.dtype)
            g_ptrs += BLOCK_K * step_g
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * step_a
        b_ptrs += BLOCK_K * step_b
    return acc
