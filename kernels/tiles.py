"""Device-side pieces shared by the GEMM-shaped kernels (inlined by Triton into each caller).

- ``grouped_tile``: the program's output tile in grouped order, for L2 reuse.
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
def dot_loop(acc, a_ptrs, b_ptrs, length, step_a, step_b, BLOCK_K: tl.constexpr,
             DOT_PRECISION: tl.constexpr):
    """``acc + sum_k a[:, k] b[k, :]`` over ``length`` reduction steps, BLOCK_K at a time.

    ``a_ptrs`` (BM, BLOCK_K) and ``b_ptrs`` (BLOCK_K, BN) point at the first step; ``step_a`` /
    ``step_b`` are the element strides of one reduction step in each operand. Only the reduction
    edge is masked: callers wrap out-of-range rows/columns onto valid ones and mask the store.
    """
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, length, BLOCK_K):
        mask_k = offs_k < length - k0
        a = tl.load(a_ptrs, mask=mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K * step_a
        b_ptrs += BLOCK_K * step_b
    return acc
