"""The forward launchers ``shrink`` and ``fused_forward`` called directly, run by Triton's
interpreter on CPU tensors, against a float64 reference.

Every output buffer is pre-filled with NaN (passed as ``out=``), so an element the kernel forgets
to write fails the comparison. Shapes are chosen to cross the interpreter config's tile edges
(32-row/32-column tiles, 16-wide K steps) without being multiples of them.
"""
import pytest
import torch

from kernel_helpers import (DTYPES, TMA_VARIANTS, column_tables, fused_ref, launches, make_gates,
                            nan_like, shrink_ref, strided, variant_launches)
from litelora_fast import kernels
from litelora_fast.kernels import LAUNCH_COUNTS, tuning
from numerics import assert_rel


def run_shrink(x2d, lora_A, gates2d, col_adapter, col_scale):
    N, R = x2d.shape[0], lora_A.shape[0]
    out = (nan_like((N, R), x2d.dtype), nan_like((N, R), x2d.dtype))
    S, SG = kernels.shrink(x2d, lora_A, gates2d, col_adapter, col_scale, out=out)
    assert S is out[0] and SG is out[1]
    return S, SG


def run_fused(x2d, weight, bias, SG, lora_B, variant="pointer"):
    y = nan_like((x2d.shape[0], weight.shape[0]), x2d.dtype)
    out = kernels.fused_forward(x2d, weight, bias, SG, lora_B, out=y, variant=variant)
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
    assert_rel("S", S, S_ref, dtype)
    assert_rel("SG", SG, SG_ref, dtype)
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
    assert_rel("SG", SG, SG_ref, torch.float32)


def test_shrink_with_no_active_column_launches_nothing():
    x2d = torch.randn(5, 8)
    before = LAUNCH_COUNTS["shrink"]
    S, SG = kernels.shrink(x2d, torch.randn(0, 8), torch.randn(5, 1),
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
    assert_rel("y", y, fused_ref(x2d, weight, bias, SG, lora_B), dtype)


def test_fused_forward_bias_strided_view(seed):
    """A bias that is a strided view (every other element of a buffer) is read through its stride."""
    x2d, weight = torch.randn(9, 21), torch.randn(23, 21)
    bias = torch.randn(46)[::2]
    SG, lora_B = torch.randn(9, 4), torch.randn(23, 4)
    y = run_fused(x2d, weight, bias, SG, lora_B)
    assert_rel("y", y, fused_ref(x2d, weight, bias, SG, lora_B), torch.float32)


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
    assert_rel("y", y, y_ref, dtype)


def test_launch_counts_prove_the_kernels_ran():
    x2d, lora_A = torch.randn(4, 16), torch.randn(3, 16)
    col_adapter, col_scale = column_tables([3], [1.0])
    before = LAUNCH_COUNTS.copy()
    _, SG = kernels.shrink(x2d, lora_A, torch.randn(4, 1), col_adapter, col_scale)
    kernels.fused_forward(x2d, torch.randn(5, 16), None, SG, torch.randn(5, 3))
    kernels.fused_forward(x2d, torch.randn(5, 16), None, SG[:, :0], torch.randn(5, 0))
    assert LAUNCH_COUNTS["shrink"] - before["shrink"] == 1
    assert LAUNCH_COUNTS["fused_forward"] - before["fused_forward"] == 2


@pytest.mark.skipif(tuning.INTERPRET or not torch.cuda.is_available(),
                    reason="bf16 needs a GPU: under TRITON_INTERPRET=1 tl.dot on bfloat16 operands "
                    "is wrong (triton issue 11584)")
@pytest.mark.parametrize("variant", ["pointer"] + TMA_VARIANTS)
def test_bf16_on_gpu(seed, variant):
    dev, dtype = "cuda", torch.bfloat16
    # The descriptor kernels need 16-byte rows (D_in, D_out multiples of 8); the pointer kernel
    # gets ragged rows.
    N, D_in, D_out = (300, 257, 190) if variant == "pointer" else (300, 264, 200)
    col_adapter, col_scale = column_tables([16, 5], [2.0, 0.5])
    x2d = torch.randn(N, D_in, device=dev, dtype=dtype)
    weight = torch.randn(D_out, D_in, device=dev, dtype=dtype) / D_in ** 0.5
    lora_A = torch.randn(21, D_in, device=dev, dtype=dtype) / D_in ** 0.5
    lora_B = torch.randn(D_out, 21, device=dev, dtype=dtype)
    gates2d = torch.randn(N, 2, device=dev)
    S, SG = kernels.shrink(x2d, lora_A, gates2d, col_adapter.to(dev), col_scale.to(dev))
    y = kernels.fused_forward(x2d, weight, None, SG, lora_B, variant=variant)
    _, SG_ref = shrink_ref(x2d, lora_A, gates2d, col_adapter.to(dev), col_scale.to(dev))
    assert_rel("y", y, fused_ref(x2d, weight, None, SG_ref, lora_B), dtype)


# --------------------------------------------------------------------------------------------
# The tensor-descriptor (TMA) variants of fused_forward, and the choice between variants.
# --------------------------------------------------------------------------------------------
# Descriptor-legal shapes: every row of x, weight and y a multiple of 16 bytes (D_in, D_out
# multiples of 8), but no dimension a multiple of the interpreter's 32-row/32-column tiles, and a
# reduction that ends mid-tile (40 = 2.5 x 16-wide K steps). R_act values: below, above and not a
# multiple of 16 (SG/lora_B then go through the padded copies).
TMA_CASES = [
    # id: N, D_in, D_out, R_act, bias
    pytest.param(37, 40, 56, 10, True, id="N37-D40x56-R10-bias"),
    pytest.param(1, 24, 72, 5, False, id="N1-R5"),
    pytest.param(70, 48, 72, 21, True, id="N70-9-tiles-R21"),   # 9 tiles > 4 "SMs": persistent loops
    pytest.param(29, 32, 40, 0, True, id="R0-base-only"),
    pytest.param(33, 16, 8, 16, False, id="Dout8-R16"),
]


@pytest.mark.parametrize("variant", TMA_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,D_out,R_act,has_bias", TMA_CASES)
def test_fused_forward_tma_variants_match_float64(seed, dtype, variant, N, D_in, D_out, R_act,
                                                  has_bias):
    x2d = torch.randn(N, D_in, dtype=dtype)
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_in ** 0.5
    bias = torch.randn(D_out, dtype=dtype) if has_bias else None
    SG = torch.randn(N, R_act, dtype=dtype)
    lora_B = torch.randn(D_out, R_act, dtype=dtype)
    before = LAUNCH_COUNTS.copy()
    y = run_fused(x2d, weight, bias, SG, lora_B, variant=variant)
    assert launches(LAUNCH_COUNTS, before, f"fused_forward/{variant}") == {f"fused_forward/{variant}": 1}
    assert_rel("y", y, fused_ref(x2d, weight, bias, SG, lora_B), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_forward_tma_after_shrink_reads_the_padded_SG(seed, dtype):
    """The shrink's SG (a view of a 16-column-padded buffer) is descriptor-legal as it is, even
    at R_act = 7 (14-byte fp16 rows), and the descriptor kernel never reads the pad columns."""
    N, D_in, D_out = 45, 40, 48
    col_adapter, col_scale = column_tables([3, 4], [0.5, 2.0])
    x2d = torch.randn(N, D_in, dtype=dtype)
    lora_A = torch.randn(7, D_in, dtype=dtype) / D_in ** 0.5
    _, SG = kernels.shrink(x2d, lora_A, make_gates("per_row", N, 2), col_adapter, col_scale)
    assert SG.shape == (N, 7) and SG.stride(0) % 16 == 0 and tuning.tma_legal(SG)
    SG.as_strided((N, 16), (SG.stride(0), 1))[:, 7:] = float("nan")   # poison the pad columns
    weight = torch.randn(D_out, D_in, dtype=dtype) / D_in ** 0.5
    lora_B = torch.randn(D_out, 7, dtype=dtype)
    y = run_fused(x2d, weight, None, SG, lora_B, variant="tma")
    assert_rel("y", y, fused_ref(x2d, weight, None, SG, lora_B), dtype)


def test_auto_takes_descriptors_when_legal_and_pointers_otherwise(seed, monkeypatch):
    monkeypatch.delenv(tuning.VARIANT_ENV, raising=False)
    SG, lora_B = torch.randn(20, 3), torch.randn(24, 3)
    cases = {
        "tma_ws": (torch.randn(20, 16), torch.randn(24, 16)),          # 64-byte rows, one tile
        "pointer": (torch.randn(20, 17), torch.randn(24, 17)),         # 68-byte rows
    }
    # Transposed x (unit stride along rows) and a sliced weight (unaligned base) fall back too.
    transposed = (strided(torch.randn(20, 16), "transposed"), torch.randn(24, 16))
    sliced = (torch.randn(20, 16), torch.randn(24, 17)[:, 1:])
    for expected, (x2d, weight) in list(cases.items()) + [("pointer", transposed), ("pointer", sliced)]:
        before = LAUNCH_COUNTS.copy()
        y = kernels.fused_forward(x2d, weight, None, SG, lora_B, out=nan_like((20, 24), torch.float32))
        assert launches(LAUNCH_COUNTS, before, f"fused_forward/{expected}") == {f"fused_forward/{expected}": 1}
        assert_rel("y", y, fused_ref(x2d, weight, None, SG, lora_B), torch.float32)


# "auto" without timing (the interpreter, LITELORA_AUTOTUNE=0): persistent when the output has
# more tiles than SMs (4 on the CPU; 32x32 interpreter tiles), else warp-specialized where the
# bank fits its one adapter tile, else the plain descriptor kernel: every variant is reached.
AUTO_CASES = [
    pytest.param(70, 40, 72, 10, "tma_persistent", id="9-tiles-persistent"),
    pytest.param(37, 40, 56, 21, "tma_ws", id="4-tiles-R21-ws"),
    pytest.param(37, 40, 56, 65, "tma", id="4-tiles-R65-tma"),
]


@pytest.mark.parametrize("N,D_in,D_out,R_act,expected", AUTO_CASES)
def test_auto_reaches_every_descriptor_variant(seed, monkeypatch, N, D_in, D_out, R_act, expected):
    monkeypatch.delenv(tuning.VARIANT_ENV, raising=False)
    x2d, weight = torch.randn(N, D_in), torch.randn(D_out, D_in) / D_in ** 0.5
    bias, SG, lora_B = torch.randn(D_out), torch.randn(N, R_act), torch.randn(D_out, R_act)
    before = LAUNCH_COUNTS.copy()
    y = kernels.fused_forward(x2d, weight, bias, SG, lora_B, out=nan_like((N, D_out), torch.float32))
    assert variant_launches(LAUNCH_COUNTS, before, "fused_forward") == {f"fused_forward/{expected}": 1}
    assert_rel("y", y, fused_ref(x2d, weight, bias, SG, lora_B), torch.float32)


@pytest.mark.parametrize("variant", ["pointer", "tma", "tma_persistent", "tma_ws"])
def test_explicit_config_bypasses_the_tuner(seed, variant):
    """``config=`` launches one of the variant's (bf16-sized) SWEEP_CONFIGS as is, its own tiles
    under the interpreter too, and ``chosen_configs`` records it; fp32 operands would not fit."""
    from litelora_fast.kernels import fused_xw_sgb

    config = fused_xw_sgb.SWEEP_CONFIGS[variant][0]
    N, D_in, D_out, R_act, dt = 70, 40, 72, 10, torch.float16
    x2d, weight = torch.randn(N, D_in, dtype=dt), torch.randn(D_out, D_in, dtype=dt) / D_in ** 0.5
    SG, lora_B = torch.randn(N, R_act, dtype=dt), torch.randn(D_out, R_act, dtype=dt)
    y = kernels.fused_forward(x2d, weight, None, SG, lora_B, out=nan_like((N, D_out), dt),
                              variant=variant, config=config)
    assert_rel("y", y, fused_ref(x2d, weight, None, SG, lora_B), dt)
    picked = [r for r in kernels.chosen_configs()["fused_forward"] if r.get("variant") == variant]
    assert any(r["config"] == config.kwargs and r["num_stages"] == config.num_stages for r in picked)
    with pytest.raises(ValueError, match="concrete variant"):
        kernels.fused_forward(x2d, weight, None, SG, lora_B, config=config)
    with pytest.raises(ValueError, match="does not fit shared memory"):
        kernels.fused_forward(x2d.float(), weight.float(), None, SG.float(), lora_B.float(),
                              variant=variant, config=config)


def test_variant_env_var_and_errors(seed, monkeypatch):
    x2d, weight, SG, lora_B = torch.randn(9, 16), torch.randn(8, 16), torch.randn(9, 2), torch.randn(8, 2)
    monkeypatch.setenv(tuning.VARIANT_ENV, "pointer")
    before = LAUNCH_COUNTS.copy()
    kernels.fused_forward(x2d, weight, None, SG, lora_B)
    assert launches(LAUNCH_COUNTS, before, "fused_forward/pointer") == {"fused_forward/pointer": 1}
    monkeypatch.setenv(tuning.VARIANT_ENV, "tma_persistent")
    kernels.fused_forward(x2d, weight, None, SG, lora_B)
    assert LAUNCH_COUNTS["fused_forward/tma_persistent"] - before["fused_forward/tma_persistent"] == 1
    monkeypatch.setenv(tuning.VARIANT_ENV, "fast")
    with pytest.raises(ValueError, match="variant"):
        kernels.fused_forward(x2d, weight, None, SG, lora_B)
    monkeypatch.delenv(tuning.VARIANT_ENV)
    # A forced descriptor variant never silently runs something else.
    with pytest.raises(ValueError, match="descriptor"):
        kernels.fused_forward(strided(x2d, "transposed"), weight, None, SG, lora_B, variant="tma")
    # The warp-specialized kernel holds the whole bank in one 64-column tile.
    wide_SG, wide_B = torch.randn(9, 65), torch.randn(8, 65)
    with pytest.raises(ValueError, match="tma_ws"):
        kernels.fused_forward(x2d, weight, None, wide_SG, wide_B, variant="tma_ws")
    y = run_fused(x2d, weight, None, wide_SG, wide_B, variant="tma")
    assert_rel("y", y, fused_ref(x2d, weight, None, wide_SG, wide_B), torch.float32)


def test_dot_precision_follows_torch_tf32_setting():
    """fp32 on the GPU uses TF32 exactly when torch's F.linear would; never on the CPU; 16-bit
    types always get one fixed value (tl.dot ignores it for them)."""
    t32, t16 = torch.empty(1), torch.empty(1, dtype=torch.float16)
    matmul = torch.backends.cuda.matmul
    previous = torch.get_float32_matmul_precision()
    try:
        matmul.allow_tf32 = True
        assert tuning.dot_precision(t32, cuda=True) == "tf32"
        assert tuning.dot_precision(t32, cuda=False) == "ieee"
        assert tuning.dot_precision(t32) == "ieee"                   # a CPU tensor
        matmul.allow_tf32 = False
        assert tuning.dot_precision(t32, cuda=True) == "ieee"
        assert tuning.dot_precision(t16, cuda=True) == "tf32"
        torch.set_float32_matmul_precision("high")                    # the user-facing switch
        assert tuning.dot_precision(t32, cuda=True) == "tf32"
        torch.set_float32_matmul_precision("highest")
        assert tuning.dot_precision(t32, cuda=True) == "ieee"
    finally:
        torch.set_float32_matmul_precision(previous)
