"""The roofline model's FLOP and byte counts against hand counts for two shapes.

The model (``litelora_fast/roofline.py``) counts step by step; the hand counts below count tensor
by tensor (how often each tensor is read and written over the whole pass), so an error in either
bookkeeping shows up as a mismatch.
"""
import json

import pytest

from litelora_fast import roofline
from litelora_fast.roofline import Case, cost

# Shape 1: a square layer, one adapter, gates frozen, no zero gate.
N, Di, Do, r, e = 8192, 4096, 4096, 16, 2
R = r
SHAPE1 = Case(Di, Do, N, 1, r)
HAND1 = {
    ("ours", "forward"): (
        2 * N * R * Di + 2 * N * Do * Di + 2 * N * Do * R,
        # x read by shrink and fused GEMM; A, W, B once; S written; SG written and read; y written
        e * (2 * N * Di + R * Di + Do * Di + Do * R + N * R + 2 * N * R + N * Do)),
    ("ours", "backward"): (
        2 * N * Di * Do + 4 * N * R * (Di + Do),
        # dy read 3x (grad-shrink, fused dx, dB); B read, dB written; W read; A read, dA written;
        # dx written, x read (dA); dS written + read 2x; S read, SG written + read (dB)
        e * (3 * N * Do + 2 * Do * R + Do * Di + 2 * R * Di + 2 * N * Di + 3 * N * R + 3 * N * R)),
    ("packed", "forward"): (
        2 * N * R * Di + 2 * N * Do * Di + 2 * N * Do * R,
        # x read 2x; A, W, B once; S and SG each written + read; y written, read, written (addmm_)
        e * (2 * N * Di + R * Di + Do * Di + Do * R + 4 * N * R + 3 * N * Do)),
    ("packed", "backward"): (
        2 * N * Di * Do + 4 * N * R * (Di + Do),
        # dy read 3x; B read, dB written; dSG w+r, SG r, dS w + 2r; A read, dA written; W read;
        # dx_lora written, x read, dx_base written, sum reads 2 and writes 1
        e * (3 * N * Do + 2 * Do * R + 6 * N * R + 2 * R * Di + Do * Di + 6 * N * Di)),
    ("reference", "forward"): (
        2 * N * Do * Di + 2 * N * r * Di + 2 * N * r * Do,
        # x read 2x; W, A, B once; s written + read; y written; u written, read; v written, read;
        # y read and written again by the add
        e * (2 * N * Di + Do * Di + R * Di + Do * r + 2 * N * r + 7 * N * Do)),
    ("reference", "backward"): (
        2 * N * Di * Do + 2 * (2 * N * r * Do) + 2 * (2 * N * r * Di),
        # dy read 2x (dx_base, du); du written + read 2x; W, B, A read; dB, dA written (r rows);
        # ds written + read 2x, s read; dx_base and dx_0 written, x read, sum r2 w1;
        # slice backward: zero (R, D) grads written plus the r-row slices copied
        e * (5 * N * Do + Do * Di + 2 * Do * r + 2 * r * Di + 4 * N * r + 6 * N * Di
             + (R + r) * (Di + Do))),
    ("base", "forward"): (2 * N * Do * Di, e * (N * Di + Do * Di + N * Do)),
    ("base", "backward"): (2 * N * Do * Di, e * (N * Do + Do * Di + N * Di)),
}

# Shape 2: a wide layer, 8 adapters with every other gate 0 (frozen gates: ours and the packed
# path skip them, the reference does not), so half the rank is active and not contiguous.
N2, Di2, Do2, K2, r2 = 2048, 4096, 14336, 8, 16
R2, Ra2 = K2 * r2, K2 * r2 // 2
SHAPE2 = Case(Di2, Do2, N2, K2, r2, sparsity=0.5)
GATHER_AB = 2 * e * Ra2 * (Di2 + Do2)          # read + write the active rows of A and B
SCATTER_DADB = e * (R2 + Ra2) * (Di2 + Do2)    # zero full-size dA, dB, write the active rows
HAND2 = {
    ("ours", "forward"): (
        2 * N2 * Ra2 * Di2 + 2 * N2 * Do2 * (Di2 + Ra2),
        e * (2 * N2 * Di2 + Ra2 * Di2 + Do2 * Di2 + Do2 * Ra2 + 3 * N2 * Ra2 + N2 * Do2)
        + GATHER_AB
        + e * (N2 * R2 + 2 * N2 * Ra2)),     # S scattered into a zero (N, R): zeros, read, write
    ("ours", "backward"): (
        2 * N2 * Di2 * Do2 + 4 * N2 * Ra2 * (Di2 + Do2),
        e * (3 * N2 * Do2 + 2 * Do2 * Ra2 + Do2 * Di2 + 2 * Ra2 * Di2 + 2 * N2 * Di2
             + 6 * N2 * Ra2)
        + GATHER_AB + 2 * e * N2 * Ra2 + SCATTER_DADB),   # gather of S's active columns
    ("packed", "fwd_bwd"): (
        2 * (2 * N2 * Ra2 * Di2 + 2 * N2 * Do2 * Di2 + 2 * N2 * Do2 * Ra2)
        - 2 * N2 * Do2 * Di2 + 2 * N2 * Di2 * Do2 + 2 * N2 * Ra2 * (Di2 + Do2),
        GATHER_AB
        + e * (2 * N2 * Di2 + Ra2 * Di2 + Do2 * Di2 + Do2 * Ra2 + 4 * N2 * Ra2 + 3 * N2 * Do2)
        + e * (3 * N2 * Do2 + 2 * Do2 * Ra2 + 6 * N2 * Ra2 + 2 * Ra2 * Di2 + Do2 * Di2
               + 6 * N2 * Di2)
        + SCATTER_DADB),
    ("reference", "forward"): (
        2 * N2 * Do2 * Di2 + K2 * (2 * N2 * r2 * Di2 + 2 * N2 * r2 * Do2),
        e * (N2 * Di2 + Do2 * Di2 + N2 * Do2
             + K2 * (N2 * Di2 + r2 * Di2 + 2 * N2 * r2 + Do2 * r2 + 6 * N2 * Do2))),
    ("reference", "backward"): (
        2 * N2 * Di2 * Do2 + K2 * (4 * N2 * r2 * Do2 + 4 * N2 * r2 * Di2),
        e * (N2 * Do2 + Do2 * Di2 + N2 * Di2
             + K2 * (4 * N2 * Do2 + 2 * Do2 * r2 + 2 * r2 * Di2 + 4 * N2 * r2 + 5 * N2 * Di2
                     + (R2 + r2) * (Di2 + Do2)))
        + (K2 - 1) * 3 * e * R2 * (Di2 + Do2)),   # the K slice gradients summed into one
}


@pytest.mark.parametrize("case,hand", [(SHAPE1, HAND1), (SHAPE2, HAND2)], ids=["shape1", "shape2"])
def test_counts_match_hand_counts(case, hand):
    for (peer, mode), (flops, nbytes) in hand.items():
        got = cost(case, peer, mode)
        assert got["flops"] == flops, (peer, mode, got["flops"], flops)
        assert got["bytes"] == nbytes, (peer, mode, got["bytes"], nbytes)


def test_fwd_bwd_is_forward_plus_backward():
    for case in (SHAPE1, SHAPE2):
        for peer in roofline.PEERS:
            f, b, fb = (cost(case, peer, m) for m in roofline.MODES)
            assert fb["flops"] == f["flops"] + b["flops"]
            assert fb["bytes"] == b["bytes"] + f["bytes"]


def test_trainable_gates_add_the_gate_gradient_traffic():
    frozen, train = Case(Di, Do, N, 4, r), Case(Di, Do, N, 4, r, train_gates=True)
    R4 = 4 * r
    ours = cost(train, "ours", "backward")["bytes"] - cost(frozen, "ours", "backward")["bytes"]
    # grad-shrink reads S and writes fp32 P; the per-adapter reduction reads P
    assert ours == e * N * R4 + 4 * N * R4 + 4 * N * R4
    ref = (cost(train, "reference", "backward")["bytes"]
           - cost(frozen, "reference", "backward")["bytes"])
    # per adapter: dy * u written after reading both, then read by the sum
    assert ref == 4 * (4 * e * N * Do)


def test_predicted_time_is_the_larger_of_compute_and_memory_time():
    # The base GEMM of shape 1 is compute-bound: 2 N Di Do FLOPs at the bf16 ceiling.
    got = cost(SHAPE1, "base", "forward")["seconds"]
    assert got == pytest.approx(2 * N * Do * Di / 790e12)
    # An all-pointwise step is memory-bound.
    assert roofline.moved("copy", 43 * 10**9).seconds() == pytest.approx(0.01)


def test_default_gpu_cases_are_a_subset_of_the_full_grid():
    default, full = roofline.gpu_cases(), roofline.gpu_cases(full=True)
    assert set(default) <= set(full)
    # shapes x N x r x trainable gates x (4 K without zero gates + 3 K > 1 with half zero)
    assert len(full) == 3 * 3 * 2 * 2 * (4 + 3)
    assert 10 <= len(default) <= 20


def test_cli_prints_predictions_and_measured(tmp_path, capsys):
    assert roofline.main([]) == 0
    text = capsys.readouterr().out
    assert all(c.id in text for c in roofline.gpu_cases())
    bench = {"benchmarks": [{"extra_info": {
        "case_id": SHAPE1.id, "mode": "forward", "case": SHAPE1.to_dict(),
        "ms_ours": 0.5, "ms_reference": 1.0, "ms_packed": 0.6, "ms_base": 0.4}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert roofline.main(["--measured", str(path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| forward | reference" in line]
    assert len(rows) == 1
    # measured 1000 us, 2x ours
    assert "| 1000.0 | 2.00 |" in rows[0]


def test_cli_names_a_missing_measured_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        roofline.main(["--measured", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "no such file" in capsys.readouterr().err
