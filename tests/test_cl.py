"""The task streams and LiteLoRA's decisions on them (fast PyTorch path).

Planted cases (``run_planted``'s learner: our additions on, task-incremental). Rates measured on
seeds 0-3 when these tests were written (2026-11-29; R = recruited):

- 1 layer, novel/redundant: 4/4 novel R, 0/8 redundant R (right: 12/12);
- redundancy built from redundant tasks (``redundant2``): 0/8 R (right);
- noise 0.5 (10x the default): 0/8 redundant R, 4/4 novel R (right);
- same subspace, new core (``core``): 8/8 R (right: a magnitude cannot re-weight a core);
- near-redundant: 30% novel energy 4/4 R; 5%: 4/4 R on seeds 0-3, reused on some fresh seeds
  (2 failures of an accuracy-within-1-point check in 3 suite runs: the 5% task was reused);
- **where the gate fails**: adapters in two layers (40 -> 32 -> 24, update planted in the first):
  6/8 redundant tasks recruited; the adapters learned for earlier tasks spread the update over
  both layers, so reuse costs accuracy (7.3 points median, 15.3 at the 90th percentile, 25.0 at
  worst over seeds 0-59) and the gate recruits;
- the paper's variant (no warm-up, no whole-state switching, magnitudes at the adapters' lr):
  6/6 redundant tasks recruited on the 1-layer stream (seeds 0-2; phase 2 then took 16 steps).

Seeds. Every test runs on the suite's fixed seed (``conftest.FIXED_SEED`` = 20261202, so
``seed % 10_000`` = 1202), chosen once; ``pytest -m fuzz`` reruns them on a fresh seed, where the
misses above are expected now and then (before: 2 of 4 clean-clone CI runs failed on a fresh
draw of the "same subspace, new core" case, a 1.79-point gap). On the fixed seed (measured
2026-12-02, one torch thread): recruit/reuse decisions 9/9 right on the three 1-layer patterns
(accuracy gaps to one adapter per task -0.004, +0.005, -0.002 points); the hard cases 0 wrong with
gaps of -0.08, -0.03 and -0.002 points; near-redundant both recruited (gap 0.001); two layers
[R, reuse, R, R] with a gap of 8.98 points; the paper's variant recruits all (re-measured with
its phase 2 at the authors' 39 steps, ``gate_steps``, was 16 here: still all 4 recruited, gate
probabilities 0.69-0.75 on the redundant and novel tasks). The bounds are the
claims the spreads above support, not the fixed seed's values, so a fuzz failure is a finding.
"""
import pytest
import torch

from litelora_fast.litelora.cl import planted_tasks, run_planted
from litelora_fast.redundancy import explained_share

PATTERNS = ([1, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 1])


def test_planted_tasks_ground_truth(seed):
    novel = [1, 0, 1, 1, 0, 0]
    stream = planted_tasks(6, novel, d_in=20, d_out=12, rank=2, seed=seed, n_train=30, n_test=10)
    tasks = stream["tasks"]
    assert [t["novel"] for t in tasks] == [bool(v) for v in novel]
    assert tasks[0]["X_train"].shape == (30, 20) and tasks[0]["Y_test"].shape == (10, 12)
    deltas = [t["delta"] for t in tasks]
    basis = [d for d, v in zip(deltas, novel) if v]
    for t, (d, v) in enumerate(zip(deltas, novel)):
        # novel: rank 2; redundant: a combination of one or two rank-2 updates
        assert torch.linalg.matrix_rank(d) == 2 if v else 2 <= torch.linalg.matrix_rank(d) <= 4
        earlier = [b for b, w in zip(deltas[:t], novel[:t]) if w]
        if not v:       # a redundant update is a combination of earlier novel ones
            assert explained_share(earlier + [d], len(earlier)) > 1 - 1e-9
        elif earlier:   # a novel one is (almost surely) far from their span
            assert explained_share(earlier + [d], len(earlier)) < 0.5
    assert len(basis) == 3


def test_planted_hard_kinds_ground_truth(seed):
    kinds = ["novel", "novel", "redundant", "redundant2", "near:0.3", "core"]
    s = planted_tasks(6, kinds, d_in=20, d_out=12, rank=2, seed=seed, n_train=8, n_test=8)
    d = [t["delta"] for t in s["tasks"]]
    assert [t["novel"] for t in s["tasks"]] == [True, True, False, False, False, True]
    # redundant2 combines the earlier redundant update: in the span of the novel ones too
    assert explained_share([d[0], d[1], d[3]], 2) > 1 - 1e-9
    # near:0.3 keeps 70% of its energy in the span of the novel updates
    assert explained_share([d[0], d[1], d[4]], 2) == pytest.approx(0.7, abs=0.2)
    # core: row and column spaces of an earlier novel update, not a multiple of it
    U, _, Vh = torch.linalg.svd(d[5])
    src = max((0, 1), key=lambda i: torch.linalg.matrix_norm(
        torch.linalg.svd(d[i])[0][:, :2].T @ U[:, :2]))
    Us, _, Vhs = torch.linalg.svd(d[src])
    assert torch.linalg.matrix_norm(Us[:, :2].T @ U[:, :2]) ** 2 == pytest.approx(2, abs=1e-4)
    assert torch.linalg.matrix_norm(Vhs[:2] @ Vh[:2].T) ** 2 == pytest.approx(2, abs=1e-4)
    assert explained_share([d[src], d[5]], 1) < 0.999
    two = planted_tasks(2, [1, 0], d_in=40, d_hidden=32, d_out=24, layers=2, seed=seed,
                        n_train=8, n_test=8)
    assert [W.shape for W in two["weights"]] == [(32, 40), (24, 32)]
    assert two["tasks"][0]["Y_train"].shape == (8, 24)


def test_planted_tasks_errors():
    with pytest.raises(ValueError, match="first entry is True"):
        planted_tasks(2, [0, 1])
    with pytest.raises(ValueError, match="num_tasks"):
        planted_tasks(3, [1, 0])
    with pytest.raises(ValueError, match="unknown task kind"):
        planted_tasks(2, ["novel", "same"])
    with pytest.raises(ValueError, match="layers"):
        planted_tasks(2, [1, 0], layers=3)


def _decisions(kinds, seed, **options):
    lite = run_planted(kinds, seed=seed, **options)
    base = run_planted(kinds, seed=seed, method="sdlora", **options)
    assert lite["recruited"][0] and base["active_adapters"] == len(kinds)
    return lite, base


def test_litelora_recruits_novel_reuses_redundant(seed, fast_path):
    torch.set_num_threads(1)        # tiny matmuls: threads only add overhead
    right = total = 0
    for i, novel in enumerate(PATTERNS):
        lite, base = _decisions(novel, (seed + i) % 10_000)
        right += sum(r == bool(v) for r, v in zip(lite["recruited"][1:], novel[1:]))
        total += len(novel) - 1
        assert lite["active_adapters"] == sum(lite["recruited"])
        # accuracy = % of each task's shift explained; one adapter per task reaches ~99.7
        assert lite["avg_accuracy"] >= base["avg_accuracy"] - 1.0, (lite, base)
        assert lite["forgetting"] == pytest.approx(0.0, abs=1e-6)
    assert right >= total - 2, f"{right}/{total} recruit/reuse decisions right"


@pytest.mark.parametrize("case, kinds, options, max_wrong", [
    ("redundant from redundant", ["novel", "novel", "redundant", "redundant2", "redundant2"],
     {}, 1),
    ("noise 0.5", ["novel", "redundant", "novel", "redundant"], {"noise": 0.5}, 1),
    ("same subspace, new core", ["novel", "core", "novel", "core"], {}, 1),
])
def test_hard_planted_cases_decided_right(case, kinds, options, max_wrong, seed, fast_path):
    torch.set_num_threads(1)
    lite, base = _decisions(kinds, seed % 10_000, **options)
    truth = [k in ("novel", "core") for k in kinds]
    wrong = sum(r != t for r, t in zip(lite["recruited"][1:], truth[1:]))
    assert wrong <= max_wrong, (case, lite["recruited"], truth)
    assert lite["avg_accuracy"] >= base["avg_accuracy"] - 1.0


def test_near_redundant_tasks_are_recruited(seed, fast_path):
    """At lam 0.05 a task with 30% novel energy is recruited; one with 5% mostly too (4/4 on
    seeds 0-3), but some fresh seeds reuse it, losing about its 5% (~1.2 points over the 4
    tasks). A relative lam of 0.1 reuses both (measured: -8.8 points at 30%)."""
    torch.set_num_threads(1)
    lite, base = _decisions(["novel", "novel", "near:0.05", "near:0.3"], seed % 10_000)
    assert lite["recruited"][3], lite["recruited"]          # 30% novel energy: must recruit
    assert lite["avg_accuracy"] >= base["avg_accuracy"] - 2.0


def test_two_layers_novel_recruited_redundant_costly(seed, fast_path):
    """Where the gate fails: with adapters in two layers a planted-redundant task is mostly
    recruited (6/8 measured). Asserted: the novel task is recruited (60/60 seeds 0-59) and the
    average accuracy is at most 26 points under one adapter per task: over seeds 0-59 the gap was
    7.3 points median, 15.3 at the 90th percentile, 25.0 at worst (8.98 on the fixed seed)."""
    torch.set_num_threads(1)
    kinds = ["novel", "redundant", "novel", "redundant"]
    lite, base = _decisions(kinds, seed % 10_000, layers=2, d_in=40, d_hidden=32, d_out=24)
    assert lite["recruited"][2], lite["recruited"]
    assert lite["avg_accuracy"] >= base["avg_accuracy"] - 26.0


def test_paper_variant_recruits_redundant_tasks(seed, fast_path):
    """The authors' mechanism on the 1-layer planted stream recruits the redundant tasks that our
    additions reuse (6/6 measured): a head tuned with the candidate makes reuse look worse."""
    torch.set_num_threads(1)
    lite = run_planted([1, 0, 1, 0], seed=seed % 10_000, variant="paper")
    assert sum(lite["recruited"][1::2]) >= 1 and lite["recruited"][2], lite["recruited"]


def test_mnist_streams_shapes_and_truth():
    from litelora_fast.litelora.cl.mnist import (DOMAIN_PATTERN, decision_score, domain_stream,
                                                 split_mnist)
    s = split_mnist(3)
    assert len(s["tasks"]) == 5
    seen = []
    for t, task in enumerate(s["tasks"]):
        assert task["X_train"].shape == (600, 196) and task["X_test"].shape == (200, 196)
        assert sorted(task["Y_train"].unique().tolist()) == [2 * t, 2 * t + 1]
        seen += task["classes"]
    assert sorted(seen) == list(range(10))
    d = domain_stream(3, n_train=40, n_test=20)
    assert [t["truth"] for t in d["tasks"]] == [p[1] for p in DOMAIN_PATTERN]
    assert d["tasks"][0]["X_train"].shape == (40, 196)
    assert 0.0 <= float(d["tasks"][1]["X_train"].min()) and float(d["tasks"][1]["X_train"].max()) <= 1.0
    res = {"truth": ["novel", "repeat", "novel", "near15"], "recruited": [True, True, True, False]}
    assert decision_score(res) == {"right": 1, "scored": 2, "near_reuse": {"near15": 1.0}}


def test_run_mnist_both_protocols(fast_path):
    from litelora_fast.litelora.cl.mnist import run_mnist, split_mnist
    torch.set_num_threads(1)
    data = split_mnist(5)
    # Measured on this data (seed 5, 2 epochs, 2026-12-02): class-incremental anytime
    # 99.5 / 83.8 / 70.0 / 60.4 / 43.9, task-incremental final 97.3 (head only: 96.7); with the
    # paper variant's phase 2 at the authors' 39 steps (gate_steps, was one epoch = 19 steps):
    # 99.5 / 83.8 / 73.0 / 58.0 / 41.3 and 96.9, 1 adapter kept in both protocols. The bounds
    # are what a working learner must clear whatever the seed: the first 2-class task is easy
    # (>= 95), a class-incremental model that knew only the last task's 2 of 10 classes would
    # score at most 20, and task-incremental heads stay near the easy per-task ceiling (>= 90).
    for protocol in ("class-incremental", "task-incremental"):
        r = run_mnist("split_mnist", 5, data=data, protocol=protocol, epochs=2)
        assert len(r["anytime"]) == 5 and r["anytime"][0] >= 95.0, r["anytime"]
        assert r["avg_accuracy"] == pytest.approx(r["anytime"][-1])
        assert r["avg_incremental"] == pytest.approx(sum(r["anytime"]) / 5)
        if protocol == "task-incremental":
            assert r["forgetting"] == pytest.approx(0.0, abs=1e-6)
            assert r["avg_accuracy"] >= 90.0, r["anytime"]
        else:
            assert 20.0 < r["avg_accuracy"] and r["forgetting"] > 0, r["anytime"]


def test_demo_and_analyze_smoke(tmp_path, fast_path, capsys):
    import json

    from litelora_fast.litelora.demo import analyze_main, demo_main, run_demo
    torch.set_num_threads(1)
    res = run_demo(seeds=(0,), progress=False, save_dir=str(tmp_path), streams=("split_mnist",),
                   rows=("LiteLoRA (paper)", "SD-LoRA (adapter per task)"))
    for protocol in ("class-incremental", "task-incremental"):
        rows = res["split_mnist"][protocol]
        assert rows["SD-LoRA (adapter per task)"]["active_adapters"] == 5
        lite = rows["LiteLoRA (paper)"]
        assert 1 <= lite["active_adapters"] <= 5
        # the bounds of test_run_mnist_both_protocols: above a last-task-only model's 20 points
        # class-incrementally, near the easy per-task ceiling task-incrementally
        assert lite["avg_accuracy"] >= (90.0 if protocol == "task-incremental" else 20.0), lite
    ckpt = tmp_path / "split_mnist_task-incremental_sdlora_paper.pt"
    assert analyze_main([str(ckpt), "--png", str(tmp_path / "red.png")]) == 0
    text = capsys.readouterr().out
    assert "phi(A_i, A_j)" in text and (tmp_path / "red.png").stat().st_size > 0
    # a missing file: one line on stderr, exit code 2
    assert analyze_main([str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err
    # the command line's options and outputs (no run: an unknown stream is a usage error)
    with pytest.raises(SystemExit):
        demo_main(["--streams", "cifar"])
    assert json.dumps(res)            # JSON-able


def test_summary_shows_the_lam_a_run_used_not_todays_default():
    """A saved record re-printed after the defaults changed keeps its own lam; a record saved
    before records carried one falls back to today's default."""
    from litelora_fast.litelora.cl.mnist import LAM_DEFAULTS
    from litelora_fast.litelora.cl.table import KEYS, summarize

    rec = dict({k: 1.0 for k in KEYS}, anytime=[1.0], truth=["novel"], recruited=[True],
               lam=7.0)
    old = {k: v for k, v in rec.items() if k != "lam"}
    s = summarize({"split_mnist": {"task-incremental": {"LiteLoRA (paper)": [rec],
                                                        "paper + warm-up": [old]}}})
    rows = s["split_mnist"]["task-incremental"]
    assert rows["LiteLoRA (paper)"]["lam"] == 7.0
    assert rows["paper + warm-up"]["lam"] == LAM_DEFAULTS["split_mnist"]["task-incremental"][
        "paper"]


def test_goal_is_judged_on_A_against_the_same_optimiser_and_marked_where_uninformative():
    """``goals``: each LiteLoRA row against its same-optimiser SD-LoRA row, on A (the paper's
    average anytime accuracy), not the final accuracy; "not informative" where head only's A is
    within 1 point of SD-LoRA's. The domain stream's decisions are printed per ground truth."""
    from litelora_fast.litelora.cl.table import format_table, goals

    def row(A, adapters, final=50.0, by_truth=None):
        s = {"avg_incremental": A, "avg_accuracy": final, "active_adapters": adapters,
             "forgetting": 0.0, "params": 0, "seconds": 0.0, "num_tasks": 5, "lam": None,
             "per_seed": [{}], "recruited_by_truth": by_truth or {}}
        s.update({k + "_std": 0.0 for k in ("avg_incremental", "avg_accuracy", "forgetting",
                                             "active_adapters", "params", "seconds")})
        return s

    rows = {"LiteLoRA (paper)": row(69.2, 4.0, final=10.0),        # 20% fewer, A -0.8: met
            "library (all additions)": row(70.0, 2.0),             # vs the library SD-LoRA
            "SD-LoRA (adapter per task)": row(70.0, 5.0, final=90.0),
            "SD-LoRA, library optimiser": row(72.0, 5.0),
            "head only": row(60.0, 0.0)}
    g = goals({"s": {"p": rows}})["s"]["p"]
    assert g["informative"] is True and g["head_gap"] == pytest.approx(-10.0)
    assert g["rows"]["LiteLoRA (paper)"]["met"]              # final accuracy 80 points lower
    lib = g["rows"]["library (all additions)"]
    assert lib["baseline"] == "SD-LoRA, library optimiser" and not lib["met"]   # A -2
    rows["head only"] = row(69.5, 0.0)
    assert goals({"s": {"p": rows}})["s"]["p"]["informative"] is False
    rows["LiteLoRA (paper)"] = row(69.2, 4.1)                        # 18% fewer: not met
    assert not goals({"s": {"p": rows}})["s"]["p"]["rows"]["LiteLoRA (paper)"]["met"]
    truth = {"novel": [8, 9], "repeat": [2, 15], "near15": [1, 3], "near30": [2, 3]}
    rows["LiteLoRA (paper)"].update(recruited_by_truth=truth, decisions_right=21,
                                    decisions_scored=24)
    text = format_table({"domain": {"p": rows}})
    assert "21/24; repeat 2/15 novel 8/9 near 3/6" in text
    # the decision goal: 13/15 repeats reused (>= 2/3), 8/9 novel recruited, A -0.8: met
    lite = goals({"domain": {"p": rows}})["domain"]["p"]["rows"]["LiteLoRA (paper)"]
    assert lite["repeats_reused"] == pytest.approx(13 / 15) and lite["decisions_met"]
    assert "decision goal met" in text
    truth["novel"] = [7, 9]                       # 7/9 < 8/9
    assert not goals({"domain": {"p": rows}})["domain"]["p"]["rows"]["LiteLoRA (paper)"][
        "decisions_met"]
    truth["novel"], truth["repeat"] = [9, 9], [6, 15]      # 9/15 reused < 2/3
    assert not goals({"domain": {"p": rows}})["domain"]["p"]["rows"]["LiteLoRA (paper)"][
        "decisions_met"]
    assert "decisions_met" not in lib                     # no truth: no decision verdict
    # a LiteLoRA row whose same-optimiser SD-LoRA is absent (the demo's library row) is named,
    # with no verdict, rather than dropped
    del rows["SD-LoRA, library optimiser"]
    assert goals({"s": {"p": rows}})["s"]["p"]["rows"]["library (all additions)"] == {
        "baseline": "SD-LoRA, library optimiser", "met": None}
    assert "vs SD-LoRA, library optimiser   (not in this table: no verdict)" in format_table(
        {"s": {"p": rows}})
    assert "NOT INFORMATIVE" in text and "A (anytime)" in text
