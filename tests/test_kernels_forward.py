"""The forward launchers ``shrink`` and ``fused_forward`` called directly, run by Triton's
interpreter on CPU tensors, against a float64 reference.

Every output buffer is pre-filled with NaN (passed as ``out=``), so an element the kernel forgets
to write fails the comparison. Shapes are chosen to cross the interpreter config's tile edges
(32-row/32-column tiles, 16-wide K steps) without being multiples of them.
"""
import pytest
import torch

from litelora_fast.kernels import LAUNCH_COUNTS, tuning
from litelora_fast.kernels import forward as fwd

# Relative-error bounds ||out - ref|| / ||ref||, by input dtype:
# - fp32: exact fp32 products ("ieee" under the interpreter) with fp32 accumulation over at most
#   a few hundred terms: ~1e-7 observed, 1e-5 leaves room for longer sums.
# - fp16: operands exact in fp16, fp32 accumulation, but every output is rounded to fp16 (unit
#   roundoff 4.9e-4) and SG is rounded to fp16 before it feeds the second GEMM: ~3e-4 observed.
TOL = {torch.float32: 1e-5, torch.float16: 5e-3}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def rel_err(out, ref):
    assert not torch.isnan(out).any(), "an output element was never written (still NaN)"
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


def column_tables(ranks, scaling, skip=()):
    """The plan's per-column tables for adapters of ``ranks``, leaving out adapters in ``skip``
    (inactive ones), so the active columns are ragged and their adapter ids have gaps."""
    adapter, scale = [], []
    for k, (r, s) in enumerate(zip(ranks, scaling)):
        if k not in skip:
            adapter += [k] * r
            scale += [s] * r
    return torch.tensor(adapter, dtype=torch.int32), torch.tensor(scale, dtype=torch.float32)


def shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale):
    S = x2d.double() @ lora_A.double().t()
    G_E = gates2d.double()[:, col_adapter.long()] * col_scale.double()
    return S, S * G_E


def fused_ref(x2d, weight, bias, SG, lora_B):
    y = x2d.double() @ weight.double().t() + SG.double() @ lora_B.double().t()
    return y + bias.double() if bias is not None else y


def strided(t, how):
    """The same values as ``t`` (2-D) in a non-contiguous layout."""
    if how == "transposed":
        return t.t().contiguous().t()
    if how == "sliced":
        wide = torch.randn(t.shape[0], t.shape[1] + 5, dtype=t.dtype)
        wide[:, 2:2 + t.shape[1]] = t
        return wide[:, 2:2 + t.shape[1]]
    return t


def run_shrink(x2d, lora_A, gates2d, col_adapter, col_scale):
    N, R = x2d.shape[0], lora_A.shape[0]
    out = (nan_like((N, R), x2d.dtype), nan_like((N, R), x2d.dtype))
    S, SG = fwd.shrink(x2d, lora_A, gates2d, col_adapter, col_scale, out=out)
    assert S is out[0] and SG is out[1]
    return S, SG


def run_fused(x2d, weight, bias, SG, lora_B):
    y = nan_like((x2d.shape[0], weight.shape[0]), x2d.dtype)
    out = fwd.fused_forward(x2d, weight, bias, SG, lora_B, out=y)
    assert out is y
    return y


# --------------------------------------------------------------------------------------------
# shrink
# --------------------------------------------------------------------------------------------
SHRINK_CASES = [
    # id: N, D_in, ranks, skipped adapters, gate mode, layout of x / lora_A
    pytest.param(37, 45, [3, 5, 7], (1,), "per_row", "contiguous", id="N37-D45-ragged-skip1"),
    pytest.param(1, 33, [4, 6], (), "per_row", "contiguous", id="N1"),
    pytest.param(20, 1, [2, 3], (), "per_row", "contiguous", id="Din1"),
    pytest.param(50, 40, [5], (), "per_adapter", "contiguous", id="K1-r5-per_adapter"),
    pytest.param(33, 29, [8, 8, 4, 1], (), "per_adapter", "transposed", id="K4-stride0-xT"),
    pytest.param(41, 52, [2, 9, 6], (0,), "zero", "sliced", id="zero-gate-sliced"),
    # R_act = 130 > the 128-column shrink tile: two column blocks per row block.
    pytest.param(19, 24, [64, 66], (), "per_row", "contiguous", id="R130-two-col-blocks"),
]


def make_gates(mode, N, K, dtype=torch.float32):
    if mode == "per_row":
        return torch.randn(N, K).to(dtype)
    g = torch.randn(K)
    if mode == "zero":
        g[0] = 0.0
        g[-1] = 0.0
    return g.to(dtype).unsqueeze(0).expand(N, K)  # row stride 0, as the op passes it


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,ranks,skip,gate_mode,layout", SHRINK_CASES)
def test_shrink_matches_float64(seed, dtype, N, D_in, ranks, skip, gate_mode, layout):
    K = len(ranks)
    scaling = (torch.rand(K) * 2 + 0.25).tolist()
    col_adapter, col_scale = column_tables(ranks, scaling, skip)
    R_act = col_adapter.numel()
    x2d = strided(torch.randn(N, D_in, dtype=dtype), layout)
    lora_A = strided(torch.randn(R_act, D_in, dtype=dtype) / D_in ** 0.5, layout)
    gates2d = make_gates(gate_mode, N, K)
    S, SG = run_shrink(x2d, lora_A, gates2d, col_adapter, col_scale)
    S_ref, SG_ref = shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale)
    assert S.dtype == SG.dtype == dtype
    assert rel_err(S, S_ref) < TOL[dtype]
    assert rel_err(SG, SG_ref) < TOL[dtype]
    if gate_mode == "zero":
        zero_cols = (gates2d[0, col_adapter.long()] == 0)
        assert zero_cols.any() and (SG[:, zero_cols] == 0).all()


@pytest.mark.parametrize("gate_dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_shrink_upcasts_low_precision_gates(seed, gate_dtype):
    N, D_in, ranks = 30, 27, [3, 4]
    col_adapter, col_scale = column_tables(ranks, [0.5, 2.0])
    x2d = torch.randn(N, D_in)
    lora_A = torch.randn(sum(ranks), D_in)
    gates2d = torch.randn(N, 2).to(gate_dtype)
    S, SG = run_shrink(x2d, lora_A, gates2d, col_adapter, col_scale)
    _, SG_ref = shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale)
    assert rel_err(SG, SG_ref) < TOL[torch.float32]


def test_shrink_with_no_active_column_launches_nothing():
    x2d = torch.randn(5, 8)
    before = LAUNCH_COUNTS["shrink"]
    S, SG = fwd.shrink(x2d, torch.randn(0, 8), torch.randn(5, 1),
                       torch.zeros(0, dtype=torch.int32), torch.zeros(0))
    assert S.shape == SG.shape == (5, 0) and LAUNCH_COUNTS["shrink"] == before


# --------------------------------------------------------------------------------------------
# fused_forward
# --------------------------------------------------------------------------------------------
FUSED_CASES = [
    # id: N, D_in, D_out, R_act, bias, layout of x / weight, layout of SG / lora_B
    pytest.param(37, 45, 53, 10, True, "contiguous", "contiguous", id="N37-D45x53-R10-bias"),
    pytest.param(37, 45, 53, 10, False, "contiguous", "contiguous", id="no-bias"),
    pytest.param(29, 40, 35, 0, True, "contiguous", "contiguous", id="R0-base-only"),
    pytest.param(1, 33, 70, 7, True, "contiguous", "contiguous", id="N1"),
    pytest.param(66, 17, 1, 3, True, "contiguous", "contiguous", id="Dout1"),
    pytest.param(40, 38, 45, 21, True, "transposed", "transposed", id="transposed"),
    pytest.param(35, 47, 39, 12, False, "sliced", "sliced", id="sliced"),
    # R_act = 70 > the 64-column adapter tile: two adapter K-steps, the second ragged.
    pytest.param(18, 20, 34, 70, True, "contiguous", "contiguous", id="R70-two-adapter-steps"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,D_out,R_act,has_bias,layout,adapter_layout", FUSED_CASES)
def test_fused_forward_matches_float64(seed, dtype, N, D_in, D_out, R_act, has_bias, layout,
                                       adapter_layout):
    x2d = strided(torch.randn(N, D_in, dtype=dtype), layout)
    weight = strided(torch.randn(D_out, D_in, dtype=dtype) / D_in ** 0.5, layout)
    bias = torch.randn(D_out, dtype=dtype) if has_bias else None
    SG = strided(torch.randn(N, R_act, dtype=dtype), adapter_layout) if R_act else \
        torch.randn(N, 0, dtype=dtype)
    lora_B = strided(torch.randn(D_out, R_act, dtype=dtype), adapter_layout) if R_act else \
        torch.randn(D_out, 0, dtype=dtype)
    y = run_fused(x2d, weight, bias, SG, lora_B)
    assert y.dtype == dtype and y.is_contiguous()
    assert rel_err(y, fused_ref(x2d, weight, bias, SG, lora_B)) < TOL[dtype]


def test_fused_forward_bias_strided_view(seed):
    """A bias that is a strided view (every other element of a buffer) is read through its stride."""
    x2d, weight = torch.randn(9, 21), torch.randn(23, 21)
    bias = torch.randn(46)[::2]
    SG, lora_B = torch.randn(9, 4), torch.randn(23, 4)
    y = run_fused(x2d, weight, bias, SG, lora_B)
    assert rel_err(y, fused_ref(x2d, weight, bias, SG, lora_B)) < TOL[torch.float32]


# --------------------------------------------------------------------------------------------
# The two launchers chained, as the op runs them.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate_mode", ["per_row", "per_adapter"])
def test_shrink_then_fused_3d_input_random_shapes(seed, dtype, gate_mode):
    """Random (seeded) shapes, a strided 3-D input flattened to rows the way the op does it, and
    ragged ranks with one adapter skipped; y against the float64 model of the whole layer."""
    g = torch.Generator().manual_seed(seed)
    B, T = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
    D_in, D_out = (int(v) for v in torch.randint(17, 70, (2,), generator=g))
    ranks = [int(v) for v in torch.randint(1, 9, (3,), generator=g)]
    col_adapter, col_scale = column_tables(ranks, [0.5, 1.0, 2.0], skip=(1,))
    R_act = col_adapter.numel()
    x3 = torch.randn(B, T, D_in + 3, dtype=dtype)[..., :D_in]  # 3-D view, rows of stride D_in+3
    x2d = x3.reshape(-1, D_in)
    N = x2d.shape[0]
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_in ** 0.5
    bias = torch.randn(D_out, dtype=dtype)
    lora_A = torch.randn(R_act, D_in, dtype=dtype) / D_in ** 0.5
    lora_B = torch.randn(D_out, R_act, dtype=dtype)
    gates2d = (torch.randn(B, T, 3).reshape(N, 3) if gate_mode == "per_row"
               else torch.randn(3).unsqueeze(0).expand(N, 3))
    _, SG = run_shrink(x2d, lora_A, gates2d, col_adapter, col_scale)
    y = run_fused(x2d, weight, bias, SG, lora_B)
    _, SG_ref = shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale)
    y_ref = fused_ref(x2d, weight, bias, SG_ref, lora_B)
    assert rel_err(y, y_ref) < TOL[dtype]


def test_launch_counts_prove_the_kernels_ran():
    x2d, lora_A = torch.randn(4, 16), torch.randn(3, 16)
    col_adapter, col_scale = column_tables([3], [1.0])
    before = LAUNCH_COUNTS.copy()
    _, SG = fwd.shrink(x2d, lora_A, torch.randn(4, 1), col_adapter, col_scale)
    fwd.fused_forward(x2d, torch.randn(5, 16), None, SG, torch.randn(5, 3))
    fwd.fused_forward(x2d, torch.randn(5, 16), None, SG[:, :0], torch.randn(5, 0))
    assert LAUNCH_COUNTS["shrink"] - before["shrink"] == 1
    assert LAUNCH_COUNTS["fused_forward"] - before["fused_forward"] == 2


@pytest.mark.skipif(tuning.INTERPRET or not torch.cuda.is_available(),
                    reason="bf16 needs a GPU: under TRITON_INTERPRET=1 tl.dot on bfloat16 operands "
                    "is wrong (triton issue 11584)")
def test_bf16_on_gpu(seed):
    dev, dtype = "cuda", torch.bfloat16
    N, D_in, D_out = 300, 257, 190
    col_adapter, col_scale = column_tables([16, 5], [2.0, 0.5])
    x2d = torch.randn(N, D_in, device=dev, dtype=dtype)
    weight = torch.randn(D_out, D_in, device=dev, dtype=dtype) / D_in ** 0.5
    lora_A = torch.randn(21, D_in, device=dev, dtype=dtype) / D_in ** 0.5
    lora_B = torch.randn(D_out, 21, device=dev, dtype=dtype)
    gates2d = torch.randn(N, 2, device=dev)
    S, SG = fwd.shrink(x2d, lora_A, gates2d, col_adapter.to(dev), col_scale.to(dev))
    y = fwd.fused_forward(x2d, weight, None, SG, lora_B)
    _, SG_ref = shrink_ref(x2d, lora_A, gates2d, col_adapter.to(dev), col_scale.to(dev))
    # bf16 keeps 8 mantissa bits (unit roundoff 3.9e-3) in every stored output.
    assert rel_err(y, fused_ref(x2d, weight, None, SG_ref, lora_B)) < 2e-2
