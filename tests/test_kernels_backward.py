"""The backward launchers ``grad_shrink``, ``fused_dx`` and ``matmul_tn`` called directly, run by
Triton's interpreter on CPU tensors, against a float64 reference.

Every output buffer is pre-filled with NaN (passed as ``out=``), so an element the kernel forgets
to write fails the comparison. Shapes cross the interpreter configs' tile edges (16/32-row tiles,
32-wide reduction steps, 16..128-wide adapter tiles) without being multiples of them.
"""
import pytest
import torch

from kernel_helpers import (DTYPES, TMA_VARIANTS, column_tables, expanded_gates_ref, fused_dx_ref,
                            grad_shrink_ref, launches, make_gates, nan_like, strided,
                            variant_launches)
from litelora_fast import kernels
from litelora_fast.kernels import LAUNCH_COUNTS, tuning
from litelora_fast.kernels import weight_grad
from numerics import assert_rel


def run_grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad):
    N, R = dy.shape[0], lora_B.shape[1]
    out = (nan_like((N, R), dy.dtype), nan_like((N, R), torch.float32) if need_gate_grad else None)
    dS, P = kernels.grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad, out=out)
    assert dS is out[0] and P is out[1]
    return dS, P


def run_fused_dx(dy, weight, dS, lora_A, variant="pointer"):
    dx = nan_like((dy.shape[0], weight.shape[1]), dy.dtype)
    assert kernels.fused_dx(dy, weight, dS, lora_A, out=dx, variant=variant) is dx
    return dx


def run_matmul_tn(a, b, out_dtype, split_n=None):
    out = nan_like((a.shape[1], b.shape[1]), out_dtype)
    assert kernels.matmul_tn(a, b, out_dtype, out=out, split_n=split_n) is out
    return out


# --------------------------------------------------------------------------------------------
# grad_shrink
# --------------------------------------------------------------------------------------------
GRAD_SHRINK_CASES = [
    # id: N, D_out, ranks, skipped adapters, gate mode, layout of dy / lora_B
    pytest.param(37, 45, [3, 5, 7], (1,), "per_row", "contiguous", id="N37-D45-ragged-skip1"),
    pytest.param(1, 33, [4, 6], (), "per_row", "contiguous", id="N1"),
    pytest.param(20, 1, [2, 3], (), "per_row", "contiguous", id="Dout1"),
    pytest.param(50, 40, [1], (), "per_adapter", "contiguous", id="K1-R1-per_adapter"),
    pytest.param(33, 70, [8, 8, 4, 1], (), "per_adapter", "transposed", id="K4-stride0-transposed"),
    pytest.param(41, 52, [2, 9, 6], (0,), "zero", "sliced", id="zero-gates-sliced"),
    # R_act = 150 > the 128-column tile: two column blocks per row block.
    pytest.param(19, 24, [64, 86], (), "per_row", "contiguous", id="R150-two-col-blocks"),
]


@pytest.mark.parametrize("need_gate_grad", [True, False], ids=["gate_grad", "no_gate_grad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_out,ranks,skip,gate_mode,layout", GRAD_SHRINK_CASES)
def test_grad_shrink_matches_float64(seed, dtype, N, D_out, ranks, skip, gate_mode, layout,
                                     need_gate_grad):
    K = len(ranks)
    col_adapter, col_scale = column_tables(ranks, (torch.rand(K) * 2 + 0.25).tolist(), skip)
    R_act = col_adapter.numel()
    dy = strided(torch.randn(N, D_out, dtype=dtype), layout)
    lora_B = strided(torch.randn(D_out, R_act, dtype=dtype) / D_out ** 0.5, layout)
    gates2d = make_gates(gate_mode, N, K)
    # Without the gate gradient S is not needed: passing None proves the kernel never reads it.
    S = strided(torch.randn(N, R_act, dtype=dtype), layout) if need_gate_grad else None
    dS, P = run_grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad)
    dS_ref, P_ref = grad_shrink_ref(dy, lora_B, S, gates2d, col_adapter, col_scale)
    assert dS.dtype == dtype and dS.is_contiguous()
    assert_rel("dS", dS, dS_ref, dtype)
    if need_gate_grad:
        # P comes straight from the fp32 accumulator: fp32 accuracy even for fp16 inputs, up to
        # the fp16 rounding of nothing but the inputs themselves (exact in float64).
        assert P.dtype == torch.float32
        assert_rel("P", P, P_ref, torch.float32)
    else:
        assert P is None
    if gate_mode == "zero":
        zero_cols = gates2d[0, col_adapter.long()] == 0
        assert zero_cols.any() and (dS[:, zero_cols] == 0).all()
        if need_gate_grad:   # a zero gate still has a gradient
            assert (P[:, zero_cols] != 0).any()


@pytest.mark.parametrize("gate_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_grad_shrink_upcasts_low_precision_gates(seed, gate_dtype):
    N, D_out, ranks = 30, 27, [3, 4]
    col_adapter, col_scale = column_tables(ranks, [0.5, 2.0])
    dy, lora_B, S = torch.randn(N, D_out), torch.randn(D_out, 7), torch.randn(N, 7)
    gates2d = torch.randn(N, 2).to(gate_dtype)
    dS, P = run_grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, True)
    dS_ref, P_ref = grad_shrink_ref(dy, lora_B, S, gates2d, col_adapter, col_scale)
    assert_rel("dS", dS, dS_ref, torch.float32)
    assert_rel("P", P, P_ref, torch.float32)


def test_grad_shrink_rejects_bad_shapes_and_dtypes():
    dy, lora_B = torch.randn(5, 8), torch.randn(8, 3)
    col_adapter, col_scale = column_tables([3], [1.0])
    gates2d = torch.randn(5, 1)
    with pytest.raises(ValueError, match="lora_B"):
        kernels.grad_shrink(dy, torch.randn(9, 3), None, gates2d, col_adapter, col_scale, False)
    with pytest.raises(ValueError, match="gates2d"):
        kernels.grad_shrink(dy, lora_B, None, torch.randn(4, 1), col_adapter, col_scale, False)
    with pytest.raises(ValueError, match="S"):
        kernels.grad_shrink(dy, lora_B, torch.randn(5, 2), gates2d, col_adapter, col_scale, True)
    with pytest.raises(TypeError, match="dtype"):
        kernels.grad_shrink(dy, lora_B.half(), None, gates2d, col_adapter, col_scale, False)
    with pytest.raises(ValueError, match="dS"):
        kernels.grad_shrink(dy, lora_B, None, gates2d, col_adapter, col_scale, False,
                        out=(torch.empty(5, 4), None))


# --------------------------------------------------------------------------------------------
# fused_dx
# --------------------------------------------------------------------------------------------
FUSED_DX_CASES = [
    # id: N, D_in, D_out, R_act, layout of dy / weight, layout of dS / lora_A
    pytest.param(37, 45, 53, 10, "contiguous", "contiguous", id="N37-D45x53-R10"),
    pytest.param(29, 40, 35, 0, "contiguous", "contiguous", id="R0-base-only"),
    pytest.param(1, 70, 33, 7, "contiguous", "contiguous", id="N1"),
    pytest.param(66, 1, 17, 3, "contiguous", "contiguous", id="Din1"),
    pytest.param(30, 19, 1, 1, "contiguous", "contiguous", id="Dout1-R1"),
    pytest.param(40, 38, 45, 21, "transposed", "transposed", id="transposed"),
    pytest.param(35, 47, 39, 12, "sliced", "sliced", id="sliced"),
    # R_act = 70 > the 64-column adapter tile: two adapter K-steps, the second ragged.
    pytest.param(18, 34, 20, 70, "contiguous", "contiguous", id="R70-two-adapter-steps"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,D_out,R_act,layout,adapter_layout", FUSED_DX_CASES)
def test_fused_dx_matches_float64(seed, dtype, N, D_in, D_out, R_act, layout, adapter_layout):
    dy = strided(torch.randn(N, D_out, dtype=dtype), layout)
    weight = strided(torch.randn(D_out, D_in, dtype=dtype) / D_out ** 0.5, layout)
    if R_act:
        dS = strided(torch.randn(N, R_act, dtype=dtype), adapter_layout)
        lora_A = strided(torch.randn(R_act, D_in, dtype=dtype) / R_act ** 0.5, adapter_layout)
    else:
        dS, lora_A = torch.randn(N, 0, dtype=dtype), torch.randn(0, D_in, dtype=dtype)
    dx = run_fused_dx(dy, weight, dS, lora_A)
    ref = dy.double() @ weight.double() + dS.double() @ lora_A.double()
    assert dx.dtype == dtype and dx.is_contiguous()
    assert_rel("dx", dx, ref, dtype)


def test_fused_dx_without_adapters_is_the_base_gemm(seed):
    dy, weight = torch.randn(21, 34), torch.randn(34, 25)
    dx = run_fused_dx(dy, weight, None, None)
    assert_rel("dx", dx, dy.double() @ weight.double(), torch.float32)
    with pytest.raises(ValueError, match="both"):
        kernels.fused_dx(dy, weight, torch.randn(21, 2), None)


def test_fused_dx_rejects_bad_shapes_and_dtypes():
    dy, weight, dS, lora_A = torch.randn(5, 8), torch.randn(8, 6), torch.randn(5, 3), torch.randn(3, 6)
    with pytest.raises(ValueError, match="weight"):
        kernels.fused_dx(dy, torch.randn(7, 6), dS, lora_A)
    with pytest.raises(ValueError, match="lora_A"):
        kernels.fused_dx(dy, weight, dS, torch.randn(3, 5))
    with pytest.raises(TypeError, match="dtype"):
        kernels.fused_dx(dy, weight.half(), dS, lora_A)
    with pytest.raises(ValueError, match="dx"):
        kernels.fused_dx(dy, weight, dS, lora_A, out=torch.empty(5, 6, dtype=torch.float16))


# --------------------------------------------------------------------------------------------
# matmul_tn
# --------------------------------------------------------------------------------------------
MATMUL_TN_CASES = [
    # id: N, M, P, layout of a / b
    pytest.param(100, 45, 13, "contiguous", id="dB-like-M45-P13"),
    pytest.param(100, 13, 45, "contiguous", id="dA-like-M13-P45-swapped"),
    pytest.param(70, 75, 90, "contiguous", id="dW-like-wide-P90"),
    pytest.param(1, 37, 20, "contiguous", id="N1"),
    pytest.param(64, 1, 1, "contiguous", id="M1-P1"),
    pytest.param(90, 33, 41, "transposed", id="transposed"),
    pytest.param(81, 50, 70, "sliced", id="sliced"),
]


@pytest.mark.parametrize("split_n", [None, 3], ids=["auto", "split3"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,M,P,layout", MATMUL_TN_CASES)
def test_matmul_tn_matches_float64(seed, dtype, N, M, P, layout, split_n):
    a = strided(torch.randn(N, M, dtype=dtype), layout)
    b = strided(torch.randn(N, P, dtype=dtype), layout)
    out = run_matmul_tn(a, b, dtype, split_n)
    assert out.dtype == dtype and out.is_contiguous()
    # Each output is an inner product over N terms of random sign; its rounding is relative to
    # sum |terms|, not to the (possibly cancelled) result: M1-P1 is a single such sum.
    a64, b64 = a.double(), b.double()
    assert_rel("a^T b", out, a64.t() @ b64, dtype, scale=a64.abs().t() @ b64.abs())


def test_matmul_tn_fp16_inputs_fp32_output(seed):
    a, b = torch.randn(97, 40, dtype=torch.float16), torch.randn(97, 9, dtype=torch.float16)
    out = run_matmul_tn(a, b, torch.float32, split_n=4)
    # fp32 output of exact fp16 inputs: only fp32 accumulation error remains.
    assert_rel("out", out, a.double().t() @ b.double(), torch.float32)


@pytest.mark.parametrize("M,P", [(45, 13), (13, 45), (75, 90)], ids=["narrow", "swapped", "wide"])
def test_matmul_tn_split_is_deterministic(seed, M, P):
    """The split-N path (fp32 partials summed in a fixed order, no atomics) is bitwise
    reproducible, and agrees with the unsplit kernel to fp32 rounding."""
    N = 300   # chunks of 96 rows under the interpreter: 96, 96, 96, 12
    a, b = torch.randn(N, M), torch.randn(N, P)
    before = LAUNCH_COUNTS.copy()
    first = run_matmul_tn(a, b, torch.float32, split_n=4)
    second = run_matmul_tn(a, b, torch.float32, split_n=4)
    assert LAUNCH_COUNTS["matmul_tn_sum_partials"] - before["matmul_tn_sum_partials"] == 2
    assert torch.equal(first, second)
    unsplit = run_matmul_tn(a, b, torch.float32, split_n=1)
    assert_rel("first", first, unsplit.double(), torch.float32)
    assert_rel("first", first, a.double().t() @ b.double(), torch.float32)


def test_matmul_tn_more_splits_than_chunks(seed):
    """A split count above what N allows collapses to whole chunks (no empty chunk is summed)."""
    a, b = torch.randn(40, 20), torch.randn(40, 18)
    out = run_matmul_tn(a, b, torch.float32, split_n=16)
    assert_rel("out", out, a.double().t() @ b.double(), torch.float32)


def test_split_count_heuristic():
    sms = 132   # H200
    # dB at the benchmark shape: 32 output tiles cannot fill 132 SMs -> split N.
    assert weight_grad.split_count(8192, 4096, 16, sms) == 5
    # Too few rows to amortise a split's partial write.
    assert weight_grad.split_count(1500, 4096, 16, sms) == 1
    assert weight_grad.split_count(2048, 4096, 16, sms) == 2
    # dW: thousands of output tiles fill the GPU on their own.
    assert weight_grad.split_count(8192, 4096, 14336, sms) == 1


def test_matmul_tn_rejects_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="matmul_tn"):
        kernels.matmul_tn(torch.randn(5, 3), torch.randn(6, 2), torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        kernels.matmul_tn(torch.randn(5, 3), torch.randn(5, 2).half(), torch.float32)
    with pytest.raises(ValueError, match="out"):
        kernels.matmul_tn(torch.randn(5, 3), torch.randn(5, 2), torch.float32, out=torch.empty(2, 3))
    with pytest.raises(ValueError, match="split_n"):
        kernels.matmul_tn(torch.randn(5, 3), torch.randn(5, 2), torch.float32, split_n=0)


# --------------------------------------------------------------------------------------------
# The three launchers chained into the layer's backward, as the op runs them.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate_mode", ["per_row", "per_adapter"])
def test_layer_backward_matches_float64_autograd(seed, dtype, gate_mode):
    """Random (seeded) shapes, a strided 3-D input flattened to rows, ragged ranks with one
    adapter inactive: dx, dA, dB and the gate gradient from the kernels against float64 autograd
    of ``y = x W^T + (S * G_E) B^T``."""
    g = torch.Generator().manual_seed(seed)
    B, T = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
    D_in, D_out = (int(v) for v in torch.randint(17, 70, (2,), generator=g))
    ranks = [int(v) for v in torch.randint(1, 9, (3,), generator=g)]
    scaling = [0.5, 1.0, 2.0]
    col_adapter, col_scale = column_tables(ranks, scaling, skip=(1,))
    R_act = col_adapter.numel()
    x2d = torch.randn(B, T, D_in + 3, dtype=dtype)[..., :D_in].reshape(-1, D_in)
    N = x2d.shape[0]
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_in ** 0.5
    lora_A = torch.randn(R_act, D_in, dtype=dtype) / D_in ** 0.5
    lora_B = torch.randn(D_out, R_act, dtype=dtype)
    gates = torch.randn(N, 3) if gate_mode == "per_row" else torch.randn(3)
    gates2d = gates if gate_mode == "per_row" else gates.unsqueeze(0).expand(N, 3)
    dy = torch.randn(N, D_out, dtype=dtype)

    # float64 autograd of the layer.
    leaves = [t.detach().double().requires_grad_() for t in (x2d, lora_A, lora_B, gates)]
    x64, A64, B64, g64 = leaves
    g2 = g64 if gate_mode == "per_row" else g64.unsqueeze(0).expand(N, 3)
    G_E = g2[:, col_adapter.long()] * col_scale.double()
    y = x64 @ weight.double().t() + ((x64 @ A64.t()) * G_E) @ B64.t()
    y.backward(dy.double())

    # The kernels (S and SG as the forward saves them, in the input dtype).
    S = (x2d.double() @ lora_A.double().t()).to(dtype)
    SG = (S.double() * gates2d.double()[:, col_adapter.long()] * col_scale.double()).to(dtype)
    dS, P = run_grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, True)
    dx = run_fused_dx(dy, weight, dS, lora_A)
    dA = run_matmul_tn(dS, x2d, dtype)
    dB = run_matmul_tn(dy, SG, dtype, split_n=2)
    dg_rows = torch.zeros(N, 3, dtype=torch.float64).index_add_(1, col_adapter.long(), P.double())
    dg = dg_rows if gate_mode == "per_row" else dg_rows.sum(0)

    # fp16 also rounds S, SG and dS to fp16 before they feed the next GEMM (~1e-3 relative).
    assert_rel("dx", dx, x64.grad, dtype)
    assert_rel("dA", dA, A64.grad, dtype)
    assert_rel("dB", dB, B64.grad, dtype)
    # The gate gradient sums terms of random sign: bound its error by the sum of |terms| (the
    # scale its rounding is relative to, see op_cases.gate_grad_scale), not by |dg|.
    terms = ((x64 @ A64.t()) * (dy.double() @ B64) * col_scale.double()).abs().detach()
    scale = torch.zeros(N, 3, dtype=torch.float64).index_add_(1, col_adapter.long(), terms)
    scale = scale if gate_mode == "per_row" else scale.sum(0)
    assert_rel("dg", dg, g64.grad, dtype, scale=scale)


def test_launch_counts_prove_the_kernels_ran():
    dy, lora_B, S = torch.randn(6, 16), torch.randn(16, 3), torch.randn(6, 3)
    col_adapter, col_scale = column_tables([3], [1.0])
    before = LAUNCH_COUNTS.copy()
    dS, _ = kernels.grad_shrink(dy, lora_B, S, torch.randn(6, 1), col_adapter, col_scale, True)
    kernels.fused_dx(dy, torch.randn(16, 9), dS, torch.randn(3, 9))
    kernels.matmul_tn(dS, torch.randn(6, 9), torch.float32, split_n=1)
    kernels.matmul_tn(dy, dS, torch.float32, split_n=1)
    delta = {k: LAUNCH_COUNTS[k] - before[k] for k in
             ("grad_shrink", "fused_dx", "matmul_tn", "matmul_tn_sum_partials")}
    assert delta == {"grad_shrink": 1, "fused_dx": 1, "matmul_tn": 2, "matmul_tn_sum_partials": 0}


@pytest.mark.skipif(tuning.INTERPRET or not torch.cuda.is_available(),
                    reason="bf16 needs a GPU: under TRITON_INTERPRET=1 tl.dot on bfloat16 operands "
                    "is wrong (triton issue 11584)")
@pytest.mark.parametrize("variant", ["pointer"] + TMA_VARIANTS)
def test_bf16_on_gpu(seed, variant):
    dev, dtype = "cuda", torch.bfloat16
    # The descriptor kernels need 16-byte rows (D_in, D_out multiples of 8).
    N, D_in, D_out = (1000, 257, 190) if variant == "pointer" else (1000, 264, 200)
    col_adapter, col_scale = column_tables([16, 5], [2.0, 0.5])
    col_adapter, col_scale = col_adapter.to(dev), col_scale.to(dev)
    dy = torch.randn(N, D_out, device=dev, dtype=dtype)
    weight = torch.randn(D_out, D_in, device=dev, dtype=dtype) / D_out ** 0.5
    lora_A = torch.randn(21, D_in, device=dev, dtype=dtype) / 21 ** 0.5
    lora_B = torch.randn(D_out, 21, device=dev, dtype=dtype) / D_out ** 0.5
    S = torch.randn(N, 21, device=dev, dtype=dtype)
    gates2d = torch.randn(N, 2, device=dev)
    dS, P = kernels.grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, True)
    dS_ref, P_ref = grad_shrink_ref(dy, lora_B, S, gates2d, col_adapter, col_scale)
    dx = kernels.fused_dx(dy, weight, dS, lora_A, variant=variant)
    dB = kernels.matmul_tn(dy, S, dtype, split_n=3)
    x2d = torch.randn(N, D_in, device=dev, dtype=dtype)
    dA2, dB2 = kernels.lora_weight_grads(x2d, dy, dS, S, dtype, split_n=3)
    assert_rel("dA (lora_weight_grads)", dA2, dS.double().t() @ x2d.double(), dtype)
    assert_rel("dB (lora_weight_grads)", dB2, dy.double().t() @ S.double(), dtype)
    assert_rel("dS", dS, dS_ref, dtype)
    assert_rel("P", P, P_ref, dtype)
    assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), dtype)
    assert_rel("dB", dB, dy.double().t() @ S.double(), dtype)


# --------------------------------------------------------------------------------------------
# The tensor-descriptor (TMA) variants of fused_dx.
# --------------------------------------------------------------------------------------------
# Descriptor-legal: rows of dy, weight, lora_A and dx a multiple of 16 bytes; no dimension a
# multiple of the interpreter's 32-wide tiles; R_act below, above and not a multiple of 16.
TMA_DX_CASES = [
    # id: N, D_in, D_out, R_act
    pytest.param(37, 56, 40, 10, id="N37-D56x40-R10"),
    pytest.param(1, 72, 24, 5, id="N1-R5"),
    pytest.param(70, 72, 48, 21, id="N70-9-tiles-R21"),   # 9 tiles > 4 "SMs": persistent loops
    pytest.param(29, 40, 32, 0, id="R0-base-only"),
]


# fp32 fused_dx has no warp-specialized kernel (test_fused_dx_ws_fp32_refused).
DX_DTYPE_VARIANTS = [pytest.param(d.values[0], v, id=f"{d.id}-{v}", marks=d.marks)
                     for d in DTYPES for v in TMA_VARIANTS if not (v == "tma_ws" and d.id == "fp32")]


@pytest.mark.parametrize("dtype,variant", DX_DTYPE_VARIANTS)
@pytest.mark.parametrize("N,D_in,D_out,R_act", TMA_DX_CASES)
def test_fused_dx_tma_variants_match_float64(seed, dtype, variant, N, D_in, D_out, R_act):
    dy = torch.randn(N, D_out, dtype=dtype)
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_out ** 0.5
    dS = torch.randn(N, R_act, dtype=dtype)
    lora_A = torch.randn(R_act, D_in, dtype=dtype) / max(R_act, 1) ** 0.5
    before = LAUNCH_COUNTS.copy()
    dx = run_fused_dx(dy, weight, dS, lora_A, variant=variant)
    assert launches(LAUNCH_COUNTS, before, f"fused_dx/{variant}") == {f"fused_dx/{variant}": 1}
    assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), dtype)


def test_fused_dx_ws_fp32_refused():
    dy, weight, dS, lora_A = torch.randn(9, 16), torch.randn(16, 8), torch.randn(9, 2), torch.randn(2, 8)
    with pytest.raises(ValueError, match="tma_ws"):
        kernels.fused_dx(dy, weight, dS, lora_A, variant="tma_ws")


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_dx_tma_after_grad_shrink_reads_the_padded_dS(seed, dtype):
    """grad_shrink's dS (a view of a 16-column-padded buffer) is descriptor-legal at R_act = 7,
    and the pad columns (poisoned here) are never read."""
    N, D_in, D_out = 45, 48, 40
    col_adapter, col_scale = column_tables([3, 4], [0.5, 2.0])
    dy = torch.randn(N, D_out, dtype=dtype)
    lora_B = torch.randn(D_out, 7, dtype=dtype) / D_out ** 0.5
    dS, _ = kernels.grad_shrink(dy, lora_B, None, make_gates("per_row", N, 2), col_adapter, col_scale,
                            False)
    assert dS.shape == (N, 7) and tuning.tma_legal(dS)
    dS.as_strided((N, 16), (dS.stride(0), 1))[:, 7:] = float("nan")
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_out ** 0.5
    lora_A = torch.randn(7, D_in, dtype=dtype)
    dx = run_fused_dx(dy, weight, dS, lora_A, variant="tma")
    assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), dtype)


def test_fused_dx_auto_falls_back_to_pointers_for_strided_inputs(seed, monkeypatch):
    monkeypatch.delenv(tuning.VARIANT_ENV, raising=False)
    dS, lora_A = torch.randn(20, 3), torch.randn(3, 16)
    # fp32 fused_dx has no warp-specialized kernel: one tile takes "tma".
    for expected, dy, weight in [("tma", torch.randn(20, 24), torch.randn(24, 16)),
                                 ("pointer", strided(torch.randn(20, 24), "transposed"), torch.randn(24, 16)),
                                 ("pointer", torch.randn(20, 24), torch.randn(24, 17)[:, 1:])]:
        before = LAUNCH_COUNTS.copy()
        dx = kernels.fused_dx(dy, weight, dS, lora_A, out=nan_like((20, 16), torch.float32))
        assert launches(LAUNCH_COUNTS, before, f"fused_dx/{expected}") == {f"fused_dx/{expected}": 1}
        assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), torch.float32)


@pytest.mark.parametrize("dtype,N,D_in,D_out,R_act,expected", [
    pytest.param(torch.float32, 70, 72, 40, 10, "tma_persistent", id="fp32-9-tiles-persistent"),
    pytest.param(torch.float16, 37, 56, 40, 21, "tma_ws", id="fp16-4-tiles-ws"),
    pytest.param(torch.float32, 37, 56, 40, 21, "tma", id="fp32-4-tiles-tma"),
])
def test_fused_dx_auto_reaches_every_descriptor_variant(seed, monkeypatch, dtype, N, D_in, D_out,
                                                        R_act, expected):
    """Untimed "auto" (tuning.untuned_variant): every variant without forcing one."""
    monkeypatch.delenv(tuning.VARIANT_ENV, raising=False)
    dy, weight = torch.randn(N, D_out, dtype=dtype), torch.randn(D_out, D_in, dtype=dtype) / D_out ** 0.5
    dS, lora_A = torch.randn(N, R_act, dtype=dtype), torch.randn(R_act, D_in, dtype=dtype) / R_act ** 0.5
    before = LAUNCH_COUNTS.copy()
    dx = kernels.fused_dx(dy, weight, dS, lora_A, out=nan_like((N, D_in), dtype))
    assert variant_launches(LAUNCH_COUNTS, before, "fused_dx") == {f"fused_dx/{expected}": 1}
    assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), dtype)


@pytest.mark.parametrize("variant", ["pointer", "tma", "tma_persistent", "tma_ws"])
def test_fused_dx_explicit_config(seed, variant):
    from litelora_fast.kernels import fused_dyw_dsa

    config = fused_dyw_dsa.SWEEP_CONFIGS[variant][0]
    N, D_in, D_out, R_act = 70, 72, 40, 10
    dtype = torch.float16      # the sweep configs are sized for 16-bit operands
    dy, weight = torch.randn(N, D_out, dtype=dtype), torch.randn(D_out, D_in, dtype=dtype) / D_out ** 0.5
    dS, lora_A = torch.randn(N, R_act, dtype=dtype), torch.randn(R_act, D_in, dtype=dtype) / R_act ** 0.5
    dx = kernels.fused_dx(dy, weight, dS, lora_A, out=nan_like((N, D_in), dtype), variant=variant,
                          config=config)
    assert_rel("dx", dx, fused_dx_ref(dy, weight, dS, lora_A), dtype)


# --------------------------------------------------------------------------------------------
# lora_weight_grads: dA and dB from one GEMM launch.
# --------------------------------------------------------------------------------------------
LORA_GRAD_CASES = [
    # id: N, D_in, D_out, R, layout of every operand
    pytest.param(100, 45, 37, 13, "contiguous", id="N100-D45x37-R13"),
    pytest.param(1, 33, 20, 4, "contiguous", id="N1"),
    pytest.param(70, 20, 75, 1, "contiguous", id="R1"),
    pytest.param(64, 40, 50, 70, "contiguous", id="R70-two-col-tiles"),
    pytest.param(90, 33, 41, 9, "transposed", id="transposed"),
    pytest.param(81, 50, 30, 12, "sliced", id="sliced"),
]


@pytest.mark.parametrize("split_n", [None, 3], ids=["auto", "split3"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,D_out,R,layout", LORA_GRAD_CASES)
def test_lora_weight_grads_match_float64(seed, dtype, N, D_in, D_out, R, layout, split_n):
    x2d = strided(torch.randn(N, D_in, dtype=dtype), layout)
    dy = strided(torch.randn(N, D_out, dtype=dtype), layout)
    dS = strided(torch.randn(N, R, dtype=dtype), layout)
    SG = strided(torch.randn(N, R, dtype=dtype), layout)
    out = (nan_like((R, D_in), dtype), nan_like((D_out, R), dtype))
    before = LAUNCH_COUNTS.copy()
    dA, dB = kernels.lora_weight_grads(x2d, dy, dS, SG, dtype, out=out, split_n=split_n)
    assert dA is out[0] and dB is out[1]
    counts = launches(LAUNCH_COUNTS, before, "lora_weight_grads", "matmul_tn_sum_partials", "matmul_tn")
    assert counts["lora_weight_grads"] == 1 and counts["matmul_tn"] == 0
    assert counts["matmul_tn_sum_partials"] == (1 if split_n and N > 32 else 0)
    # Inner products over N terms of random sign: rounding is relative to sum |terms|.
    x64, dy64, dS64, SG64 = (t.double() for t in (x2d, dy, dS, SG))
    assert_rel("dA", dA, dS64.t() @ x64, dtype, scale=dS64.abs().t() @ x64.abs())
    assert_rel("dB", dB, dy64.t() @ SG64, dtype, scale=dy64.abs().t() @ SG64.abs())


@pytest.mark.parametrize("split_n", [1, 3], ids=["unsplit", "split3"])
@pytest.mark.parametrize("gate_mode", ["per_row", "per_adapter"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_weight_grads_forms_SG_from_S_and_gates(seed, dtype, gate_mode, split_n):
    """With ``gates=`` the fourth operand is S and dB = dy^T @ (S * G_E) with G_E formed in the
    kernel; ragged ranks, one adapter skipped, gate ids with gaps; dA is untouched by the gates."""
    N, D_in, D_out = 83, 37, 45
    col_adapter, col_scale = column_tables([3, 5, 6], [0.5, 1.0, 2.0], skip=(1,))
    R = col_adapter.numel()
    x2d, dy = torch.randn(N, D_in, dtype=dtype), torch.randn(N, D_out, dtype=dtype)
    dS, S = torch.randn(N, R, dtype=dtype), torch.randn(N, R, dtype=dtype)
    gates2d = make_gates(gate_mode, N, 3)
    out = (nan_like((R, D_in), dtype), nan_like((D_out, R), dtype))
    dA, dB = kernels.lora_weight_grads(x2d, dy, dS, S, dtype, out=out, split_n=split_n,
                                   gates=(gates2d, col_adapter, col_scale))
    SG64 = S.double() * expanded_gates_ref(gates2d, col_adapter, col_scale)
    x64, dy64, dS64 = x2d.double(), dy.double(), dS.double()
    assert_rel("dA", dA, dS64.t() @ x64, dtype, scale=dS64.abs().t() @ x64.abs())
    assert_rel("dB", dB, dy64.t() @ SG64, dtype, scale=dy64.abs().t() @ SG64.abs())
    with pytest.raises(ValueError, match="gates"):
        kernels.lora_weight_grads(x2d, dy, dS, S, dtype, gates=(gates2d[:5], col_adapter, col_scale))


def test_lora_weight_grads_split_is_deterministic(seed):
    x2d, dy, dS, SG = torch.randn(300, 45), torch.randn(300, 38), torch.randn(300, 11), torch.randn(300, 11)
    first = kernels.lora_weight_grads(x2d, dy, dS, SG, torch.float32, split_n=4)
    second = kernels.lora_weight_grads(x2d, dy, dS, SG, torch.float32, split_n=4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    unsplit = kernels.lora_weight_grads(x2d, dy, dS, SG, torch.float32, split_n=1)
    for got, ref in zip(first, unsplit):
        assert_rel("split vs unsplit", got, ref.double(), torch.float32)


def test_lora_weight_grads_edges_and_errors():
    x2d, dy = torch.randn(6, 8), torch.randn(6, 5)
    dA, dB = kernels.lora_weight_grads(x2d, dy, torch.randn(6, 0), torch.randn(6, 0), torch.float32)
    assert dA.shape == (0, 8) and dB.shape == (5, 0)
    dA, dB = kernels.lora_weight_grads(x2d[:0], dy[:0], torch.randn(0, 3), torch.randn(0, 3), torch.float32)
    assert (dA == 0).all() and (dB == 0).all() and dA.shape == (3, 8)
    with pytest.raises(ValueError, match="dS"):
        kernels.lora_weight_grads(x2d, dy, torch.randn(5, 3), torch.randn(6, 3), torch.float32)
    with pytest.raises(ValueError, match="same columns"):
        kernels.lora_weight_grads(x2d, dy, torch.randn(6, 3), torch.randn(6, 2), torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        kernels.lora_weight_grads(x2d, dy.half(), torch.randn(6, 3), torch.randn(6, 3), torch.float32)
    with pytest.raises(ValueError, match="split_n"):
        kernels.lora_weight_grads(x2d, dy, torch.randn(6, 3), torch.randn(6, 3), torch.float32, split_n=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backends_agree_on_lora_weight_grads(seed, dtype):
    """TritonBackend and TorchBackend compute the same (dA, dB)."""
    from litelora_fast.op.backends import TorchBackend, TritonBackend

    x2d, dy = torch.randn(50, 24, dtype=dtype), torch.randn(50, 40, dtype=dtype)
    dS, SG = torch.randn(50, 6, dtype=dtype), torch.randn(50, 6, dtype=dtype)
    for got, ref in zip(TritonBackend.lora_weight_grads(x2d, dy, dS, SG, dtype),
                        TorchBackend.lora_weight_grads(x2d.double(), dy.double(), dS.double(),
                                                       SG.double(), torch.float64)):
        assert got.dtype == dtype
        assert_rel("grad", got, ref, dtype)
