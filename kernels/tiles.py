"""Device-side pieces shared by the GEMM-shaped kernels (inlined by Triton into each caller).

Letters. Tensors use docs/MATH.md's names everywhere: ``N`` rows (tokens), ``D_in``/``D_out``
the layer's widths, ``K`` adapters, ``R``/``R_act`` (active) rank columns. Tiles use GEMM-local
letters, the same in every kernel: a tile computes ``out[BLOCK_M, BLOCK_N] += a[BLOCK_M, k] @
b[k, BLOCK_N]`` over the reduction in steps of ``BLOCK_K``; ``BLOCK_R`` is a tile's width over the
rank columns (the shrink's output columns, the warp-specialized kernel's adapter step, the weight
gradients' narrow side); ``GROUP_M`` the grouped tile order. So ``BLOCK_N`` is never "rows": the
fused forward's ``BLOCK_N`` runs over D_out, the fused dx's over D_in.

- ``grouped_tile``: the program's output tile in grouped order, for L2 reuse;
  ``grouped_offsets``: that tile's first row and column; ``tile_count``: the output's tiles
  (the persistent kernels' loop bound). The fused GEMMs' prologue.
- ``keep_scale``: the LoRA-dropout keep factor of a tile of ``x`` (``kernels/dropout.py``).
- ``rank_tile``: the shrink's and grad-shrink's tile, ``a @ b`` over all R_act columns;
  ``expanded_gate``: its gate ``G_E``; ``store_rank_tile``: its masked store.
- ``two_stretch_tile``: the pointer kernels' fused tile, ``a1 @ b1 + a2 @ b2`` on one accumulator.
- ``dot_loop``: one stretch of a reduction, ``acc += a_tile @ b_tile`` over ``length`` steps,
  masked at the ragged end. The pointer kernels of the fused GEMMs call it once per stretch (base
  weight, then adapter columns) on the same accumulator: two pipelined loops, the second short.
- ``descriptor_tile``: the descriptor kernels' fused tile, base and adapter steps in ONE loop (the
  "tma" and "tma_persistent" kernels); ``ws_descriptor_tile``: the warp-specialized loop and its
  single adapter step; ``add_bias``: the forward's bias row; ``store_tile``: the TMA-store
  epilogue, whole or split in two column halves; ``store_masked``: the pointer-store epilogue.

Callers pass the optional and the flag arguments by keyword (``P_DROP=P_DROP``,
``B_KMAJOR=True``): Triton binds ``@triton.jit`` callees' keywords as Python does.

Triton inlines ``@triton.jit`` callees before its software pipeliner and its warp-specialization
pass run, so a loop here is pipelined (cp.async or TMA stages feeding wgmma on sm_90) exactly as
if written in the kernel; ``kernels.compile_report`` checks that for every launchable config.
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


@triton.constexpr_function
def keep_threshold(p):
    """The uint32 a Philox output must reach to keep its element: ``round(p * 2**32)``, so an
    element is dropped with probability ``p`` to within ``2**-33``."""
    return min(int(round(float(p) * 2.0**32)), 2**32 - 1)


@triton.jit
def grouped_offsets(tile, rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """``(off_m, off_n)``: the first row and column of output tile ``tile`` (``grouped_tile``)."""
    pid_m, pid_n = grouped_tile(tile, rows, cols, BLOCK_M, BLOCK_N, GROUP_M)
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def tile_count(rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Output tiles of a ``rows x cols`` output: the persistent kernels' tile-loop bound."""
    return tl.cdiv(rows, BLOCK_M) * tl.cdiv(cols, BLOCK_N)


@triton.jit
def keep_scale(seed, n_idx, d_idx, P_DROP: tl.constexpr, D_ALONG_ROWS: tl.constexpr = False):
    """``keep / (1 - p)`` (fp32) at the positions ``(n_idx, d_idx)`` of ``x``.

    ``seed``: int scalar; ``n_idx`` (R, 1) and ``d_idx`` (1, C): the tile's absolute row and
    column indices in ``x``; with ``D_ALONG_ROWS``, ``d_idx`` (C, 1) and ``n_idx`` (1, R), a tile
    of ``x^T`` (the result is then (C, R)). ``P_DROP`` is a compile-time constant, so callers
    compile this away entirely when ``p = 0``.

    Element ``(n, d)`` is kept iff output ``d % 4`` of ``philox(seed; d // 4, n, 0, 0)`` is at
    least ``keep_threshold(p)``: one Philox call per 4 columns, all four outputs used, compared as
    integers (``litelora_fast.op.lora_dropout.keep_mask`` computes the same bits in PyTorch).
    The tile's column groups of 4 start at multiples of 4 (every tile start and width along
    ``d`` is one), and a group's counter comes from its largest column, so a group whose last
    columns were wrapped back into range (``d % D_in`` at a ragged edge) still draws its valid
    columns' bits.
    """
    if D_ALONG_ROWS:
        keep = tl.trans(_keep_scale_cols(seed, tl.trans(n_idx), tl.trans(d_idx), P_DROP))
    else:
        keep = _keep_scale_cols(seed, n_idx, d_idx, P_DROP)
    return keep


@triton.jit
def _keep_scale_cols(seed, n_idx, d_idx, P_DROP: tl.constexpr):
    C: tl.constexpr = d_idx.shape[1]
    group = (tl.max(tl.reshape(d_idx, (1, C // 4, 4)), axis=2) >> 2).to(tl.uint32)
    n = n_idx.to(tl.uint32)
    z = tl.zeros_like(n)
    b0, b1, b2, b3 = tl.philox(seed, group, n, z, z)      # tl.randint4x with two counters
    threshold: tl.constexpr = keep_threshold(P_DROP)
    scale: tl.constexpr = 1.0 / (1.0 - P_DROP)
    k0 = tl.where(b0 >= threshold, scale, 0.0)
    k1 = tl.where(b1 >= threshold, scale, 0.0)
    k2 = tl.where(b2 >= threshold, scale, 0.0)
    k3 = tl.where(b3 >= threshold, scale, 0.0)
    # join stacks along a new last axis: [.., a, b] = (k0, k2)[a] if b == 0 else (k1, k3)[a],
    # i.e. k_{2a+b}, so the row-major reshape puts k_j at column 4 * group + j.
    keep = tl.join(tl.join(k0, k2), tl.join(k1, k3))
    return tl.reshape(keep, (n_idx.shape[0], C))


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
                keep = keep_scale(drop_seed, drop_n + k0, drop_d, P_DROP, D_ALONG_ROWS=True)
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


@triton.jit
def two_stretch_tile(pid_m, pid_n, rows_total, cols_total, K1, K2,
                     a1_ptr, b1_ptr, a2_ptr, b2_ptr,
                     stride_a1_n, stride_a1_k, stride_b1_k, stride_b1_n,
                     stride_a2_n, stride_a2_k, stride_b2_k, stride_b2_n,
                     DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    """The pointer kernels' fused tile: ``a1 @ b1 + a2 @ b2`` on ONE fp32 accumulator.

    The base stretch runs over ``K1`` in BLOCK_K steps (``x @ W^T``, ``dy @ W``), the adapter
    stretch over ``K2 = R_act`` in BLOCK_R steps (``SG @ lora_B^T``, ``dS @ lora_A``; no steps when
    no adapter is active). Operands are addressed as ``a[n, k]`` and ``b[k, n]`` through their
    strides, so a transposed read is just swapped strides. Edge rows/columns wrap back into range
    (loads need only the K mask; the caller masks the store), with int64 offsets because
    ``row * stride`` passes 2**31 at realistic sizes. Returns ``(acc, offs_m, offs_n, cols)``.
    """
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % rows_total).to(tl.int64)
    cols = (offs_n % cols_total).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    a1 = a1_ptr + rows[:, None] * stride_a1_n + offs_k[None, :] * stride_a1_k
    b1 = b1_ptr + offs_k[:, None] * stride_b1_k + cols[None, :] * stride_b1_n
    acc = dot_loop(acc, a1, b1, K1, stride_a1_k, stride_b1_k, BLOCK_K, DOT_PRECISION)
    offs_r = tl.arange(0, BLOCK_R)
    a2 = a2_ptr + rows[:, None] * stride_a2_n + offs_r[None, :] * stride_a2_k
    b2 = b2_ptr + offs_r[:, None] * stride_b2_k + cols[None, :] * stride_b2_n
    acc = dot_loop(acc, a2, b2, K2, stride_a2_k, stride_b2_k, BLOCK_R, DOT_PRECISION)
    return acc, offs_m, offs_n, cols


@triton.jit
def rank_offsets(pid, R_act, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    """``(offs_m, offs_r)``: the rows and the adapter columns of the rank-side tile of program
    ``pid``. The R_act blocks of one row block are neighbouring programs, so when R_act > BLOCK_R
    the second read of the same ``a`` rows comes from L2, not HBM."""
    num_r = (R_act + BLOCK_R - 1) // BLOCK_R
    return ((pid // num_r) * BLOCK_M + tl.arange(0, BLOCK_M),
            (pid % num_r) * BLOCK_R + tl.arange(0, BLOCK_R))


@triton.jit
def rank_tile(pid, N, R_act, K, a_ptr, b_ptr, stride_a_n, stride_a_k, stride_b_k, stride_b_r,
              DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_R: tl.constexpr, drop_seed=0, P_DROP: tl.constexpr = 0.0):
    """The rank-side kernels' tile (shrink: ``x @ lora_A^T``; grad-shrink: ``dy @ lora_B``):
    ``acc = a[rows] @ b[:, cols]`` over ``K`` for the BLOCK_M rows and BLOCK_R of the R_act
    adapter columns of program ``pid`` (``rank_offsets``).

    Rows and columns past the edge wrap back into range (only the K edge needs a load mask;
    ``store_rank_tile`` masks the stores), with int64 offsets. ``P_DROP > 0``: ``a`` is ``x`` and
    gets the call's dropout mask from ``drop_seed`` (``dot_loop``). Returns ``(acc, rows, cols)``,
    the wrapped row and column indices for the epilogue's loads (``expanded_gate``, ``S``).
    """
    offs_m, offs_r = rank_offsets(pid, R_act, BLOCK_M, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    rows = (offs_m % N).to(tl.int64)
    cols = (offs_r % R_act).to(tl.int64)
    a_ptrs = a_ptr + rows[:, None] * stride_a_n + offs_k[None, :] * stride_a_k
    b_ptrs = b_ptr + offs_k[:, None] * stride_b_k + cols[None, :] * stride_b_r
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    acc = dot_loop(acc, a_ptrs, b_ptrs, K, stride_a_k, stride_b_k, BLOCK_K, DOT_PRECISION,
                   drop_seed=drop_seed, drop_n=rows[:, None], drop_d=offs_k[None, :],
                   P_DROP=P_DROP)
    return acc, rows, cols


@triton.jit
def expanded_gate(rows, cols, col_adapter_ptr, col_scale_ptr, gates_ptr, stride_gates_n,
                  stride_gates_k):
    """``(g_e, scale)`` of a rank-side tile: the expanded gate ``G_E[n, j] = gates[n,
    col_adapter[j]] * col_scale[j]`` (fp32, ``(rows, cols)``) and the ``(cols,)`` scalings."""
    adapter = tl.load(col_adapter_ptr + cols).to(tl.int64)
    scale = tl.load(col_scale_ptr + cols).to(tl.float32)
    gate = tl.load(gates_ptr + rows[:, None] * stride_gates_n + adapter[None, :] * stride_gates_k)
    return gate.to(tl.float32) * scale[None, :], scale


@triton.jit
def store_rank_tile(ptr, value, pid, N, R_act, stride_n, stride_r, BLOCK_M: tl.constexpr,
                    BLOCK_R: tl.constexpr):
    """Store ``value`` (program ``pid``'s rank-side tile) into the ``(N, R_act)`` output at
    ``ptr``, in its dtype, masked at the edges."""
    offs_m, offs_r = rank_offsets(pid, R_act, BLOCK_M, BLOCK_R)
    mask = (offs_m < N)[:, None] & (offs_r < R_act)[None, :]
    tl.store(ptr + offs_m.to(tl.int64)[:, None] * stride_n + offs_r.to(tl.int64)[None, :] * stride_r,
             value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_b(desc, off_n, k, B_KMAJOR: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) b tile at reduction offset ``k`` from a descriptor over a K-major
    operand (rows along the reduction, read transposed: the forward's weight and lora_B) or an
    N-major one (the dx's weight and lora_A)."""
    if B_KMAJOR:
        tile = desc.load([off_n, k]).T
    else:
        tile = desc.load([k, off_n])
    return tile


@triton.jit
def descriptor_tile(a1_desc, b1_desc, a2_desc, b2_desc, off_m, off_n, K1, K2,
                    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, B_KMAJOR: tl.constexpr, HAS_ADAPTER: tl.constexpr):
    """``a1 @ b1 + a2 @ b2`` for the tile at ``(off_m, off_n)``, base steps over ``K1`` then
    adapter steps over ``K2 = R_act``, all BLOCK_K deep, in ONE loop: only the descriptor pair and
    the offset change at the switch, so the pipeliner keeps later loads in flight across it (no
    second pipeline fill and drain; loading inside if/else branches instead left the loop
    unpipelined in the sm_90 compile). Past ``K2`` the TMA unit fills zeros without reading
    memory, so R_act = 16 costs one BLOCK_K-deep step. Edges need no masks (zero fill)."""
    k1_steps = tl.cdiv(K1, BLOCK_K)
    k_steps = k1_steps
    if HAS_ADAPTER:
        k_steps += tl.cdiv(K2, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in range(k_steps):
        a_desc = a1_desc
        b_desc = b1_desc
        k = ki * BLOCK_K
        if HAS_ADAPTER:
            if ki >= k1_steps:
                a_desc = a2_desc
                b_desc = b2_desc
                k = (ki - k1_steps) * BLOCK_K
        a = a_desc.load([off_m, k])
        b = load_b(b_desc, off_n, k, B_KMAJOR)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def ws_descriptor_tile(a1_desc, b1_desc, a2_desc, b2_desc, off_m, off_n, K1,
                       DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, B_KMAJOR: tl.constexpr,
                       HAS_ADAPTER: tl.constexpr):
    """The warp-specialized form of ``descriptor_tile``: a producer warp issues the base loop's
    TMA loads while the consumer warpgroup runs wgmma. Triton 3.6 specializes on sm_90 only a
    single plain loop of descriptor loads feeding one dot (a run-time descriptor choice inside
    the loop, or a second loop after it, leaves the loop unspecialized or crashes the compiler),
    so the adapter stretch is ONE step after the loop, on descriptors whose block holds all
    R_act columns (BLOCK_R wide, set by the launcher)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ki in tl.range(tl.cdiv(K1, BLOCK_K), warp_specialize=True):
        a = a1_desc.load([off_m, ki * BLOCK_K])
        b = load_b(b1_desc, off_n, ki * BLOCK_K, B_KMAJOR)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    if HAS_ADAPTER:
        acc = tl.dot(a2_desc.load([off_m, 0]), load_b(b2_desc, off_n, 0, B_KMAJOR), acc,
                     input_precision=DOT_PRECISION)
    return acc


@triton.jit
def add_bias(acc, bias_ptr, offs_n, cols, stride_bias, HAS_BIAS: tl.constexpr):
    """``acc + bias[offs_n]`` (fp32) where ``HAS_BIAS``; columns past ``cols`` read 0."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=offs_n < cols, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    return acc


@triton.jit
def store_tile(out_desc, acc, off_m, off_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               EPILOGUE_SPLIT: tl.constexpr):
    """The TMA-store epilogue, whole or in two column halves (one half-size staging buffer)."""
    if EPILOGUE_SPLIT:
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        left, right = tl.split(halves)
        out_desc.store([off_m, off_n], left.to(out_desc.dtype))
        out_desc.store([off_m, off_n + BLOCK_N // 2], right.to(out_desc.dtype))
    else:
        out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


@triton.jit
def store_masked(ptr, acc, offs_m, offs_n, rows, cols, stride_m, stride_n):
    """The pointer-store epilogue: ``acc`` at ``(offs_m, offs_n)`` of the ``rows x cols`` output
    at ``ptr`` (int64 offsets), in its dtype, masked at the edges."""
    mask = (offs_m < rows)[:, None] & (offs_n < cols)[None, :]
    tl.store(ptr + offs_m.to(tl.int64)[:, None] * stride_m + offs_n.to(tl.int64)[None, :] * stride_n,
             acc.to(ptr.dtype.element_ty), mask=mask)
