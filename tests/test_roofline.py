"""The roofline model's FLOP and byte counts against hand counts for two shapes, and its rules.

The model (``litelora_fast/tools/roofline.py``) counts step by step; the hand counts below count
tensor by tensor (how often each tensor is read and written over the whole pass), so an error in
either bookkeeping shows up as a mismatch. ``kernels`` is the fused-kernel implementation,
``packed`` the cuBLAS composite (b); ``ours`` is the cheaper of the two.
"""
import json

import pytest
import torch

from litelora_fast.tools import bench_cases, roofline
from litelora_fast.tools.bench_cases import Case
from litelora_fast.tools.roofline import cost
from numerics import assert_rel

# Shape 1: a square layer, one adapter, gates frozen, no zero gate.
N, Di, Do, r, e = 8192, 4096, 4096, 16, 2
R = r
SHAPE1 = Case(Di, Do, N, 1, r)
HAND1 = {
    ("kernels", "forward"): (
        2 * N * R * Di + 2 * N * Do * Di + 2 * N * Do * R,
        # x read by shrink and fused GEMM; A, W, B once; S written; SG written and read; y written
        e * (2 * N * Di + R * Di + Do * Di + Do * R + N * R + 2 * N * R + N * Do)),
    ("kernels", "backward"): (
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
    ("peft", "forward"): (
        2 * N * Do * Di + 2 * N * r * Di + 2 * N * r * Do,
        # as the reference: the scaling is a multiply, the add reads y and v and writes y
        e * (2 * N * Di + Do * Di + R * Di + Do * r + 2 * N * r + 7 * N * Do)),
    ("peft", "backward"): (
        2 * N * Di * Do + 2 * (2 * N * r * Do) + 2 * (2 * N * r * Di),
        # as the reference without the slice backward: each adapter is its own nn.Linear
        e * (5 * N * Do + Do * Di + 2 * Do * r + 2 * r * Di + 4 * N * r + 6 * N * Di)),
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
    ("kernels", "forward"): (
        2 * N2 * Ra2 * Di2 + 2 * N2 * Do2 * (Di2 + Ra2),
        e * (2 * N2 * Di2 + Ra2 * Di2 + Do2 * Di2 + Do2 * Ra2 + 3 * N2 * Ra2 + N2 * Do2)
        + GATHER_AB
        + e * (N2 * R2 + 2 * N2 * Ra2)),     # S scattered into a zero (N, R): zeros, read, write
    ("kernels", "backward"): (
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
    # PEFT activates only the K2 / 2 adapters whose gate is not 0, one nn.Linear pair each.
    ("peft", "forward"): (
        2 * N2 * Do2 * Di2 + (K2 // 2) * (2 * N2 * r2 * Di2 + 2 * N2 * r2 * Do2),
        e * (N2 * Di2 + Do2 * Di2 + N2 * Do2
             + (K2 // 2) * (N2 * Di2 + r2 * Di2 + 2 * N2 * r2 + Do2 * r2 + 6 * N2 * Do2))),
    ("peft", "backward"): (
        2 * N2 * Di2 * Do2 + (K2 // 2) * (4 * N2 * r2 * Do2 + 4 * N2 * r2 * Di2),
        e * (N2 * Do2 + Do2 * Di2 + N2 * Di2
             + (K2 // 2) * (4 * N2 * Do2 + 2 * Do2 * r2 + 2 * r2 * Di2 + 4 * N2 * r2
                            + 5 * N2 * Di2))),
}


@pytest.mark.parametrize("case,hand", [(SHAPE1, HAND1), (SHAPE2, HAND2)], ids=["shape1", "shape2"])
def test_counts_match_hand_counts(case, hand):
    for (peer, mode), (flops, nbytes) in hand.items():
        got = cost(case, peer, mode)
        assert got["flops"] == flops, (peer, mode, got["flops"], flops)
        assert got["bytes"] == nbytes, (peer, mode, got["bytes"], nbytes)


def test_fwd_bwd_is_forward_plus_backward():
    for case in (SHAPE1, SHAPE2):
        for peer in bench_cases.PEERS + roofline.IMPLS:
            f, b, fb = (cost(case, peer, m) for m in bench_cases.MODES)
            assert fb["flops"] == f["flops"] + b["flops"]
            assert fb["bytes"] == b["bytes"] + f["bytes"]


def test_trainable_gates_add_the_gate_gradient_traffic():
    frozen, train = Case(Di, Do, N, 4, r), Case(Di, Do, N, 4, r, train_gates=True)
    R4 = 4 * r
    ours = (cost(train, "kernels", "backward")["bytes"]
            - cost(frozen, "kernels", "backward")["bytes"])
    # grad-shrink reads S and writes fp32 P; the per-adapter reduction reads P
    assert ours == e * N * R4 + 4 * N * R4 + 4 * N * R4
    ref = (cost(train, "reference", "backward")["bytes"]
           - cost(frozen, "reference", "backward")["bytes"])
    # per adapter: dy * u written after reading both, then read by the sum
    assert ref == 4 * (4 * e * N * Do)


def test_predicted_time_is_the_larger_of_compute_and_memory_time():
    # The base GEMM of shape 1 is compute-bound: 2 N Di Do FLOPs at the bf16 ceiling.
    got = cost(SHAPE1, "base", "forward")["seconds"]
    assert_rel("base GEMM time", torch.tensor(got, dtype=torch.float64),
               torch.tensor(2 * N * Do * Di / 790e12, dtype=torch.float64), torch.float64)
    # An all-pointwise step is memory-bound.
    assert_rel("copy time", torch.tensor(roofline.moved("copy", 43 * 10**9).seconds(),
                                         dtype=torch.float64),
               torch.tensor(0.01, dtype=torch.float64), torch.float64)


def test_the_kernels_compute_the_bank_padded_to_16_columns():
    # K = 3 adapters of rank 5: R_act = 15 columns, padded to 16 for descriptor-legal tiles.
    ragged = Case(512, 256, 1024, 3, 5)
    assert roofline.padded_rank(ragged) == 16
    assert roofline.padded_rank(SHAPE1) == 16   # already a multiple: no copy
    names = [s.name for s in roofline.steps(ragged, "kernels", "forward")]
    assert names[0].startswith("copy active A, B into the padded bank")
    fwd = cost(ragged, "kernels", "forward")["flops"]
    assert fwd == 2 * 1024 * 16 * 512 + 2 * 1024 * 256 * (512 + 16)
    assert not any("padded" in s.name for s in roofline.steps(SHAPE1, "kernels", "fwd_bwd"))


def test_the_fused_gemms_run_the_adapter_stretch_in_whole_steps():
    # <= 64 padded columns: one power-of-two tile after the warp-specialized loop
    assert [roofline.fused_adapter_cols(Case(512, 256, 1024, k, r)) for k, r in
            ((1, 16), (3, 5), (3, 16), (4, 16))] == [16, 16, 64, 64]
    # more: whole 64-column steps of the single loop (80 -> 128); the shrink pads to 16 only
    wide = Case(512, 256, 1024, 5, 16)
    assert roofline.padded_rank(wide) == 80 and roofline.fused_adapter_cols(wide) == 128
    by_name = {s.name: s for s in roofline.steps(wide, "kernels", "forward")}
    assert by_name["shrink: S = x A^T, SG = S * G_E"].flops == 2 * 1024 * 80 * 512
    assert by_name["fused: y = [x, SG] [W, B]^T (one pipelined loop)"].flops == (
        2 * 1024 * 256 * (512 + 128))


def test_ours_is_the_cheaper_implementation_and_never_slower_than_packed():
    for case in bench_cases.gpu_cases("full") + [Case(512, 256, 1024, 3, 5)]:
        for mode in bench_cases.MODES:
            ours, packed = cost(case, "ours", mode), cost(case, "packed", mode)
            kernels = cost(case, "kernels", mode)
            assert ours["seconds"] == min(kernels["seconds"], packed["seconds"])
            assert ours["impl"] == ("kernels" if kernels["seconds"] <= packed["seconds"]
                                    else "composite")
    # On the CPU ours is the PyTorch fast path: the composite.
    cpu = Case(256, 256, 512, 8, 8, dtype="float32", device="cpu")
    assert cost(cpu, "ours", "fwd_bwd")["impl"] == "composite"


def test_dropout_peers_pay_for_the_dropped_copy_and_ours_does_not():
    plain = Case(4096, 14336, 8192, 1, 16)
    drop = Case(4096, 14336, 8192, 1, 16, dropout=0.1)
    for peer in ("packed", "peft", "reference"):
        extra = cost(drop, peer, "forward")["bytes"] - cost(plain, peer, "forward")["bytes"]
        assert extra == (2 * 2 + 1) * 8192 * 4096, peer   # read x, write x_d and its mask
    assert cost(drop, "kernels", "forward")["bytes"] == cost(plain, "kernels", "forward")["bytes"]
    names = [s.name for s in roofline.steps(drop, "kernels", "backward")]
    assert "dx += (dS A) * keep / (1 - p)" in names
    # the targets speak about the rows without dropout only
    assert all("p0" not in t for t, _, _ in roofline.targets([drop]))
    assert roofline.targets([drop]) == []


def test_peft_has_no_trainable_gates():
    with pytest.raises(ValueError, match="PEFT has no trainable gates"):
        cost(Case(Di, Do, N, 4, r, train_gates=True), "peft", "forward")
    with pytest.raises(ValueError, match="peer must be one of"):
        cost(SHAPE1, "nobody", "forward")


def test_grids_nest_and_the_headline_is_the_targets_grid():
    headline, default = bench_cases.gpu_cases("headline"), bench_cases.gpu_cases("default")
    full = bench_cases.gpu_cases("full")
    assert set(headline) <= set(default) <= set(full)
    # shapes x N x r x trainable gates x (4 K without zero gates + 3 K > 1 with half zero),
    # plus the LoRA-dropout rows
    dropout = bench_cases.dropout_cases()
    assert len(full) == 3 * 3 * 2 * 2 * (4 + 3) + len(dropout) and set(dropout) <= set(full)
    assert {c.dropout for c in dropout} == {0.1, 0.05}
    assert {c.dropout for c in headline} == {0.0, 0.1, 0.05}
    # value order: the 4096x14336 (MLP) rows and the K = 1 dropout rows come first
    first = headline[:4]
    assert {(c.d_out, c.dropout) for c in first} >= {(14336, 0.0), (14336, 0.1), (4096, 0.1)}
    assert 10 <= len(default) <= 20
    assert {(c.d_in, c.d_out, c.k) for c in headline} == {
        (4096, 4096, 1), (4096, 4096, 4), (4096, 4096, 8),
        (4096, 14336, 1), (4096, 14336, 4), (4096, 14336, 8)}
    assert all((c.n, c.r, c.dtype, c.train_gates, c.sparsity) == (8192, 16, "bfloat16", False, 0)
               for c in headline)
    assert len({c.id for c in full}) == len(full)   # dropout shows in the id
    with pytest.raises(ValueError, match="grid must be one of"):
        bench_cases.gpu_cases("huge")


def test_targets_rows_name_each_goal_of_the_headline():
    rows = roofline.targets(bench_cases.gpu_cases("headline"))
    goals = [t for t, _, _ in rows]
    assert "4096x4096 K=1: fwd+bwd >= 1.2x over (a)" in goals
    assert "4096x14336 K=8: forward within 1.08x of (c)" in goals
    # never slower than (b), by construction of the measured choice
    for t, _, verdict in rows:
        if t.endswith("K=1: forward >= 1.0x over (b)") or t.endswith("K=4: fwd_bwd >= 1.0x over (b)"):
            assert verdict == "met", t


def test_cli_prints_predictions_and_measured(tmp_path, capsys):
    assert roofline.main([]) == 0
    text = capsys.readouterr().out
    assert all(c.id in text for c in bench_cases.gpu_cases())
    assert "predictions, not measurements" in text
    bench = {"benchmarks": [{"extra_info": {
        "case_id": SHAPE1.id, "mode": "forward", "case": SHAPE1.to_dict(), "impl_ours": "kernels",
        "ms_ours": 0.5, "ms_reference": 1.0, "ms_packed": 0.6, "ms_base": 0.4, "ms_peft": 1.5}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert roofline.main(["--measured", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if "| forward | reference" in line]
    assert len(rows) == 1
    assert "| 1000.0 | 2.00 |" in rows[0]          # measured 1000 us, 2x ours
    peft = [line for line in out if "| forward | peft" in line]
    assert len(peft) == 1 and "| 1500.0 | 3.00 |" in peft[0]
    assert any("| forward | ours (" in line and "| 500.0 (kernels) |" in line for line in out)


def test_cli_names_a_missing_measured_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        roofline.main(["--measured", str(tmp_path / "missing.json")])


def test_the_ceilings_are_the_gpu_s_own():
    h100, note = roofline.ceilings_for("NVIDIA H100 80GB HBM3")
    assert h100 is roofline.CEILINGS["H100 SXM"] and note == ""
    assert roofline.ceilings_for("NVIDIA H200")[0] is roofline.CEILINGS["H200"]
    other, note = roofline.ceilings_for("NVIDIA A100-SXM4-80GB")
    assert other is roofline.CEILINGS["H200"] and "no measured ceilings" in note
    # a memory-bound step takes longer at the H100's 3.0 TB/s than at the H200's 4.3
    step = roofline.moved("copy", 43 * 10**9)
    h200_s = step.seconds()
    roofline.use(h100)
    try:
        assert step.seconds() == pytest.approx(43e9 / 3.0e12)
    finally:
        roofline.use(roofline.CEILINGS["H200"])
    assert step.seconds() == h200_s


def test_cli_takes_the_ceilings_of_the_gpu_the_run_names(tmp_path, capsys):
    bench = {"benchmarks": [{"extra_info": {
        "case_id": SHAPE1.id, "mode": "forward", "case": SHAPE1.to_dict(), "impl_ours": "kernels",
        "ms_ours": 0.5, "cuda_device": "NVIDIA H100 80GB HBM3"}}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    assert roofline.main(["--measured", str(path)]) == 0
    assert "ceilings of the H100 SXM 798 TFLOP/s bf16, 3.0 TB/s" in capsys.readouterr().out
    assert roofline.active() is roofline.CEILINGS["H200"]   # restored after the command
    assert roofline.main(["--gpu", "H100 SXM"]) == 0
    assert "ceilings of the H100 SXM" in capsys.readouterr().out
