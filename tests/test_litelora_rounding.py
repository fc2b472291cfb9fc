"""LiteLoRA results under rounding: the machine record, the one-ulp nudge, verdicts judged seed by
seed, and a verdict that docs/litelora.md states surviving a nudge (fast PyTorch path).

Why: one seed's numbers depend on the machine (docs/litelora.md, "Which verdicts hold on another
machine"); a verdict the docs state has to hold when the floats move at the last bit.
"""
import functools

import pytest
import torch

from litelora_fast.litelora.cl import spread
from litelora_fast.litelora.cl.machine import FLOAT_FLAGS, describe, machine_info
from litelora_fast.litelora.cl.rounding import nudge_stream, nudge_ulp
from litelora_fast.litelora.cl.table import GOAL_NOVEL_RECRUITED, GOAL_REPEATS_REUSED, goals


def test_nudge_ulp_moves_every_nonzero_entry_by_one_ulp(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(50, 7, generator=g)
    X[::3] = 0.0
    Y = nudge_ulp(X)
    nonzero = X != 0
    assert torch.equal(Y[~nonzero], X[~nonzero])
    # one ulp away from zero: the next float in that direction, so |Y| > |X| and nothing between
    assert bool((Y[nonzero].abs() > X[nonzero].abs()).all())
    back = torch.nextafter(Y, torch.zeros_like(Y))
    assert torch.equal(back[nonzero], X[nonzero])
    data = {"tasks": [{"X_train": X, "X_test": X[:3], "Y_train": torch.zeros(50)}], "keep": 1}
    nudged = nudge_stream(data)
    assert nudged["keep"] == 1 and nudged["tasks"][0]["Y_train"] is data["tasks"][0]["Y_train"]
    assert torch.equal(nudged["tasks"][0]["X_test"], Y[:3])
    assert data["tasks"][0]["X_train"] is X                    # the original is left alone


def test_nudge_rejects_what_it_cannot_nudge():
    with pytest.raises(TypeError, match="X must be a floating-point tensor, got torch.int64"):
        nudge_ulp(torch.arange(3))
    with pytest.raises(TypeError, match="data must be a stream's data"):
        nudge_stream([torch.ones(2)])


def test_machine_record_names_cpu_flags_torch_and_threads():
    m = machine_info(threads=1)
    assert m["threads_per_run"] == 1 and m["torch"] == torch.__version__
    assert set(m["cpu_flags"]) <= set(FLOAT_FLAGS) and m["cpu"]
    line = describe(m)
    assert m["cpu"] in line and "torch " + torch.__version__ in line and "1 thread(s)" in line
    # a JSON written before the CPU was recorded says so instead of guessing
    old = {"cpu_count": 2, "torch": "2.13.0+cpu", "threads_per_run": 1, "platform": "Linux"}
    assert "model and flags not recorded" in describe(old)
    assert describe(None) == "machine: not recorded"
    assert describe([m, old]).count("\n") == 1


def _row(As, adapters, recruited=None, truth=None):
    recs = [{"avg_incremental": a, "active_adapters": n} for a, n in zip(As, adapters)]
    if recruited is not None:
        for r, rec in zip(recs, recruited):
            r.update(recruited=rec, truth=truth)
    mean = lambda v: sum(v) / len(v)        # noqa: E731
    return {"avg_incremental": mean(As), "active_adapters": mean(adapters), "per_seed": recs,
            "recruited_by_truth": {}}


def test_verdicts_are_judged_seed_by_seed_and_a_split_is_undecided():
    """The mean meets the goal (A -0.67, 80% fewer) but one seed of three misses it by more
    than the others make up: the verdict on the spread is undecided, with its margins."""
    rows = {"LiteLoRA (paper)": _row([70.0, 70.0, 68.0], [1, 1, 1]),
            "SD-LoRA (adapter per task)": _row([70.0, 70.0, 70.0], [5, 5, 5]),
            "head only": _row([60.0, 69.5, 60.0], [0, 0, 0])}
    cell = goals({"s": {"p": rows}})["s"]["p"]
    v = cell["rows"]["LiteLoRA (paper)"]
    assert v["met"] and v["met_seeds"] == 2 and v["met_on_spread"] == "undecided 2/3"
    assert v["A_gap_per_seed"] == pytest.approx([0.0, 0.0, -2.0])
    assert v["A_margin"] == pytest.approx(1 - 2 / 3) and v["adapter_margin"] == pytest.approx(3)
    assert cell["informative"] and cell["informative_on_spread"] == "undecided 2/3"
    assert "on the spread: undecided 2/3" in spread.describe(v)
    rows["LiteLoRA (paper)"] = _row([70.0, 70.5, 69.5], [1, 1, 1])
    v = goals({"s": {"p": rows}})["s"]["p"]["rows"]["LiteLoRA (paper)"]
    assert v["met_on_spread"] == "met" and v["met_seeds"] == 3


def test_decision_goal_per_seed_counts_repeats_and_novel_tasks():
    truth = ["novel", "novel", "repeat", "repeat", "repeat", "near15"]
    rows = {"LiteLoRA (paper)": _row([40.0, 40.0], [3, 4], truth=truth, recruited=[
                [True, True, False, False, True, True],          # 2/3 reused, novel 1/1
                [True, True, True, False, True, True]]),         # 1/3 reused
            "SD-LoRA (adapter per task)": _row([40.0, 40.0], [6, 6])}
    v = goals({"domain": {"p": rows}})["domain"]["p"]["rows"]["LiteLoRA (paper)"]
    assert v["repeats_reused_per_seed"] == pytest.approx([2 / 3, 1 / 3])
    assert v["novel_recruited_per_seed"] == [1.0, 1.0]
    assert v["decisions_met_seeds"] == 1 and v["decisions_on_spread"] == "undecided 1/2"
    # rows without per-seed records (a summary written by hand) get no per-seed verdict
    rows["SD-LoRA (adapter per task)"]["per_seed"] = [{}, {}]
    assert "seeds" not in goals({"domain": {"p": rows}})["domain"]["p"]["rows"][
        "LiteLoRA (paper)"]


@functools.lru_cache(maxsize=2)
def _domain_prefix(stream_seed: int):
    """The domain stream's first 6 tasks (novel, novel, repeat, near15, novel, repeat) and the
    faithful gate's class-incremental run on them (shared by the tests below)."""
    from litelora_fast.litelora.cl import mnist
    from litelora_fast.litelora.cl.table import row_options

    torch.set_num_threads(1)
    data = mnist.domain_stream(stream_seed, pattern=mnist.DOMAIN_PATTERN[:6])
    method, options = row_options("domain", "class-incremental", "LiteLoRA (paper)")
    return data, mnist.run_mnist("domain", stream_seed, method, data=data, **options)


def test_stated_verdict_survives_a_one_ulp_nudge(fast_path, seed):
    """docs/litelora.md: the faithful gate (``variant="paper"``) misses the decision goal on the
    domain stream on every seed: it recruits every novel domain and reuses at most 17% of the
    exact repeats (the held-out table, on two machines). On the stream's first 6 tasks (novel,
    novel, repeat, near-repeat, novel, repeat) the run with every input one ulp away must say
    the same: the floats differ, the verdict does not."""
    from litelora_fast.litelora.cl import mnist
    from litelora_fast.litelora.cl.table import row_options

    stream_seed = seed % 10_000
    data, plain = _domain_prefix(stream_seed)
    method, options = row_options("domain", "class-incremental", "LiteLoRA (paper)")
    nudged = mnist.run_mnist("domain", stream_seed, method, data=nudge_stream(data), **options)
    runs = [plain, nudged]
    # the nudge reached the results: the gate logits are not bit for bit the same
    assert plain["gate_logit"] != nudged["gate_logit"]
    for r in runs:
        pairs = list(zip(r["truth"][1:], r["recruited"][1:]))
        repeats = [not got for truth, got in pairs if truth == "repeat"]
        novel = [got for truth, got in pairs if truth == "novel"]
        assert len(repeats) == 2 and len(novel) == 2
        assert sum(novel) / len(novel) >= GOAL_NOVEL_RECRUITED, r["recruited"]
        # at most one of the two repeats reused: short of the goal's 2/3, as the docs say
        assert sum(repeats) / len(repeats) < GOAL_REPEATS_REUSED, r["recruited"]


def test_compare_names_the_rows_and_verdicts_two_runs_disagree_on():
    from litelora_fast.litelora.cl.compare import compare, format_compare
    from litelora_fast.litelora.cl.table import KEYS, summarize

    def rec(A, adapters, recruited):
        return dict({k: 0.0 for k in KEYS}, avg_incremental=A, active_adapters=adapters,
                    anytime=[A], recruited=recruited, truth=["novel"] * len(recruited), lam=None)

    def run(lite_A):
        raw = {"s": {"p": {"LiteLoRA (paper)": [rec(lite_A, 1, [True, False])],
                           "SD-LoRA (adapter per task)": [rec(70.0, 2, [True, True])]}}}
        return {"seeds": [0], "machine": None, "results": summarize(raw)}

    c = compare(run(69.5), run(68.5))            # A -0.5 (met) against A -1.5 (not met)
    assert c["rows_differing"] == 1 and c["rows"][0]["row"] == "LiteLoRA (paper)"
    changed = {v["verdict"]: v["values"] for v in c["verdicts_changed"]}
    assert changed == {"met": [True, False], "met_on_spread": ["met", "not met"]}
    assert "rows differing: 1 of 2" in format_compare(c)
    assert compare(run(69.5), run(69.5))["verdicts_changed"] == []
    with pytest.raises(ValueError, match="different seeds"):
        compare(run(69.5), dict(run(69.5), seeds=[1]))


def test_gate_trace_changes_no_decision_and_records_losses_and_the_logit_path(fast_path, seed):
    """``gate_trace``: the traced run is the plain run bit for bit (it draws no random number);
    per gated task it records the three phase-2 losses, lam, and the logit before every step
    plus the final one (the authors' 39 steps: 40 values, the first ``gate_init``)."""
    from litelora_fast.litelora.cl.gate_trace import trace_domain

    stream_seed = seed % 10_000
    data, plain = _domain_prefix(stream_seed)
    traced = trace_domain(stream_seed, data=data)
    assert traced["avg_incremental"] == plain["avg_incremental"]
    assert [k["recruited"] for k in traced["tasks"]] == plain["recruited"]
    for k, logit in zip(traced["tasks"][1:], plain["gate_logit"][1:]):
        assert k["lam"] == 0.3 and len(k["logit_path"]) == 40
        assert k["logit_path"][0] == 0.5 and k["logit_path"][-1] == logit[0]
        assert k["loss_on"] > 0 and k["loss_off"] > 0 and k["loss_off_reuse_state"] > 0
    with pytest.raises(TypeError, match="needs tensor data"):
        from litelora_fast.litelora.cl.gate_trace import TracingLearner
        TracingLearner._gate_phase(None, 1, object(), None, None, None, None, 0.3)
