"""The in-kernel LoRA-dropout mask (``kernels.dropout``), run by Triton's interpreter.

The mask is a pure function of (seed, row, column): the same seed gives the same bits in every
kernel and every tile order, and its statistics are those of independent Bernoulli(1 - p) draws.
Bounds are 6 standard deviations of the binomial count, so a correct generator fails about once
in 10**8 runs while a biased or correlated one (e.g. rows repeating) fails at once.
"""
import pytest
import torch

from litelora_fast.kernels.dropout import dropout_mask, new_seed


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_is_binomial(seed, p):
    N, D = 257, 131
    keep = dropout_mask(new_seed("cpu"), N, D, p)
    n = N * D
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(int(keep.sum()) - n * (1 - p)) < 6 * sd
    # Per-row and per-column keep rates spread like independent draws (no stuck row/column).
    for counts, length in ((keep.sum(1), D), (keep.sum(0), N)):
        sd_line = (length * p * (1 - p)) ** 0.5
        assert (counts.double() - length * (1 - p)).abs().max() < 6 * sd_line


def test_same_seed_same_mask_other_seed_independent(seed):
    s = new_seed("cpu")
    a = dropout_mask(s, 64, 48, 0.3)
    assert torch.equal(a, dropout_mask(s.clone(), 64, 48, 0.3))
    # A sub-block is the same bits as the corresponding corner of the larger mask: every tile of
    # every kernel regenerates element (n, d) identically, whatever the launch shape.
    assert torch.equal(dropout_mask(s, 20, 17, 0.3), a[:20, :17])
    b = dropout_mask(s + 1, 64, 48, 0.3)
    agree = (a == b).double().mean().item()
    expected = 0.3 ** 2 + 0.7 ** 2      # two independent masks agree this often
    sd = (expected * (1 - expected) / a.numel()) ** 0.5
    assert abs(agree - expected) < 6 * sd


def test_rows_and_columns_are_not_shifted_copies(seed):
    keep = dropout_mask(new_seed("cpu"), 96, 96, 0.5).double()
    n = keep.shape[1]
    for shift in (1, 2, 32):
        for a, b in ((keep[:-shift], keep[shift:]), (keep[:, :-shift], keep[:, shift:])):
            corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
            assert abs(corr) < 6 / (a.numel() ** 0.5), (shift, corr)
    assert n == 96


def test_p_zero_keeps_everything_and_empty_shapes(seed):
    s = new_seed("cpu")
    assert dropout_mask(s, 33, 9, 0.0).all()
    assert dropout_mask(s, 0, 9, 0.5).shape == (0, 9)
    assert dropout_mask(s, 5, 0, 0.5).shape == (5, 0)
