"""LoRA dropout in the kernels (``kernels.dropout``), run by Triton's interpreter.

The mask is a pure function of (seed, row, column): the same seed gives the same bits in every
kernel and every tile order, and its statistics are those of independent Bernoulli(1 - p) draws.
Bounds are 6 standard deviations of the binomial count, so a correct generator fails about once
in 10**8 runs while a biased or correlated one (e.g. rows repeating) fails at once.

The three kernels that apply the mask (the shrink, ``lora_weight_grads``' dA, ``masked_addmm_``)
are checked against float64 references given the same mask (``dropout_mask``), with NaN-poisoned
outputs, ragged shapes and strided inputs.
"""
import pytest
import torch

from kernel_helpers import DTYPES, column_tables, make_gates, nan_like, shrink_ref, strided
from litelora_fast import kernels
from litelora_fast.kernels import LAUNCH_COUNTS
from litelora_fast.op.lora_dropout import new_seed, philox_keep_mask
from numerics import assert_rel


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_is_binomial(seed, p):
    N, D = 257, 131
    keep = kernels.dropout_mask(new_seed("cpu"), N, D, p)
    n = N * D
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(int(keep.sum()) - n * (1 - p)) < 6 * sd
    # Per-row and per-column keep rates spread like independent draws (no stuck row/column).
    for counts, length in ((keep.sum(1), D), (keep.sum(0), N)):
        sd_line = (length * p * (1 - p)) ** 0.5
        assert (counts.double() - length * (1 - p)).abs().max() < 6 * sd_line


def test_same_seed_same_mask_other_seed_independent(seed):
    s = new_seed("cpu")
    a = kernels.dropout_mask(s, 64, 48, 0.3)
    assert torch.equal(a, kernels.dropout_mask(s.clone(), 64, 48, 0.3))
    # A sub-block is the same bits as the corresponding corner of the larger mask: every tile of
    # every kernel regenerates element (n, d) identically, whatever the launch shape.
    assert torch.equal(kernels.dropout_mask(s, 20, 17, 0.3), a[:20, :17])
    b = kernels.dropout_mask(s + 1, 64, 48, 0.3)
    agree = (a == b).double().mean().item()
    expected = 0.3 ** 2 + 0.7 ** 2      # two independent masks agree this often
    sd = (expected * (1 - expected) / a.numel()) ** 0.5
    assert abs(agree - expected) < 6 * sd


@pytest.mark.parametrize("p", [0.1, 0.5, 0.97])
@pytest.mark.parametrize("shape", [(37, 17), (64, 48), (3, 130)])
def test_kernel_mask_is_philox_of_row_and_column_group_bit_for_bit(seed, shape, p):
    """Element (n, d) is output d % 4 of Philox 4x32-10 at counters (d // 4, n) against the
    integer threshold: the kernels and the PyTorch rule (``philox_keep_mask``) agree on every
    bit, at ragged widths (a last group of 1-3 columns), for small and large seeds."""
    for s in (new_seed("cpu"), torch.tensor([0]), torch.tensor([2**31 - 2])):
        assert torch.equal(kernels.dropout_mask(s, *shape, p), philox_keep_mask(s, *shape, p))


def test_rows_and_columns_are_not_shifted_copies(seed):
    keep = kernels.dropout_mask(new_seed("cpu"), 96, 96, 0.5).double()
    n = keep.shape[1]
    for shift in (1, 2, 32):
        for a, b in ((keep[:-shift], keep[shift:]), (keep[:, :-shift], keep[:, shift:])):
            corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
            assert abs(corr) < 6 / (a.numel() ** 0.5), (shift, corr)
    assert n == 96


def test_p_zero_keeps_everything_and_empty_shapes(seed):
    s = new_seed("cpu")
    assert kernels.dropout_mask(s, 33, 9, 0.0).all()
    assert kernels.dropout_mask(s, 0, 9, 0.5).shape == (0, 9)
    assert kernels.dropout_mask(s, 5, 0, 0.5).shape == (5, 0)


def dropped(x, seed, p):
    """float64 ``x * keep / (1 - p)`` with the kernels' mask."""
    keep = kernels.dropout_mask(seed, x.shape[0], x.shape[1], p)
    return x.double() * keep.double() / (1 - p)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shrink_applies_the_mask(seed, dtype, layout):
    N, D_in, p = 45, 37, 0.3
    col_adapter, col_scale = column_tables([3, 6, 2], [0.5, 2.0, 1.0])
    R = col_adapter.numel()
    x2d = strided(torch.randn(N, D_in, dtype=dtype), layout)
    lora_A = torch.randn(R, D_in, dtype=dtype) / D_in ** 0.5
    gates2d = make_gates("per_row", N, 3, dtype=torch.float32)
    s = new_seed("cpu")
    S, SG = kernels.shrink(x2d, lora_A, gates2d, col_adapter, col_scale,
                       out=(nan_like((N, R), dtype), nan_like((N, R), dtype)), dropout=(p, s))
    S_ref, SG_ref = shrink_ref(dropped(x2d, s, p), lora_A, gates2d, col_adapter, col_scale)
    assert_rel("S", S, S_ref, dtype)
    assert_rel("SG", SG, SG_ref, dtype)
    # Not the undropped product: the mask really is applied.
    S_plain, _ = shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale)
    assert (S.double() - S_plain).norm() > 0.1 * S_plain.norm()


@pytest.mark.parametrize("split_n", [1, 3], ids=["unsplit", "split3"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_weight_grads_drop_x_for_dA_only(seed, dtype, split_n):
    N, D_in, D_out, R, p = 83, 37, 29, 11, 0.25
    x2d, dy = torch.randn(N, D_in, dtype=dtype), torch.randn(N, D_out, dtype=dtype)
    dS, SG = torch.randn(N, R, dtype=dtype), torch.randn(N, R, dtype=dtype)
    s = new_seed("cpu")
    out = (nan_like((R, D_in), dtype), nan_like((D_out, R), dtype))
    dA, dB = kernels.lora_weight_grads(x2d, dy, dS, SG, dtype, out=out, split_n=split_n,
                                   dropout=(p, s))
    xd, dS64, dy64, SG64 = dropped(x2d, s, p), dS.double(), dy.double(), SG.double()
    assert_rel("dA", dA, dS64.t() @ xd, dtype, scale=dS64.abs().t() @ xd.abs())
    assert_rel("dB", dB, dy64.t() @ SG64, dtype, scale=dy64.abs().t() @ SG64.abs())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D_in,R", [(1, 40, 5), (50, 70, 16), (33, 1, 3)])
def test_masked_addmm_adds_the_masked_adapter_term(seed, dtype, N, D_in, R):
    p = 0.4
    dx0 = torch.randn(N, D_in, dtype=dtype)
    dS = strided(torch.randn(N, R, dtype=dtype), "transposed")
    lora_A = torch.randn(R, D_in, dtype=dtype)
    s = new_seed("cpu")
    dx = dx0.clone()
    before = LAUNCH_COUNTS["masked_addmm"]
    assert kernels.masked_addmm_(dx, dS, lora_A, s, p) is dx
    assert LAUNCH_COUNTS["masked_addmm"] == before + 1
    keep = kernels.dropout_mask(s, N, D_in, p).double() / (1 - p)
    ref = dx0.double() + keep * (dS.double() @ lora_A.double())
    assert_rel("dx", dx, ref, dtype)
    with pytest.raises(ValueError, match="chain"):
        kernels.masked_addmm_(dx, dS[:, :1], lora_A, s, p)


def test_mask_kernel_launches_are_counted():
    """``dropout_mask`` is a kernel launch like the others (``LAUNCH_COUNTS``); an empty mask is
    none."""
    before = LAUNCH_COUNTS.copy()
    kernels.dropout_mask(new_seed("cpu"), 5, 7, 0.1)
    kernels.dropout_mask(new_seed("cpu"), 0, 7, 0.1)
    assert LAUNCH_COUNTS["dropout_mask"] - before["dropout_mask"] == 1
