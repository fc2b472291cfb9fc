"""Verdicts judged on the spread over seeds, and how far each is from flipping.

One seed's numbers move with the machine: another CPU's float kernels round differently and the
training trajectory diverges (``cl.machine``); on the demo's seed 0 that moved the final accuracy
of one row by 10 points. So a verdict is only worth stating where it holds seed by seed:
``seed_verdicts`` pairs each seed's LiteLoRA run with the same seed's baseline run and judges every
pair; ``on_spread`` says "met" / "not met" where all seeds agree and "undecided" where they do not.
The margins say how far the mean is from the goal's lines: points of A above (+) or below (-) the
1-point line, adapters below (+) or above (-) the 20% line.
"""
from __future__ import annotations


def _share(by_truth_pairs, kind, recruited: bool):
    """Share of ``kind`` tasks (after task 0) recruited (or reused) in one seed's record."""
    got = [r for truth, r in by_truth_pairs if truth == kind]
    if not got:
        return None
    return sum(1 for r in got if bool(r) == recruited) / len(got)


def _per_seed_ok(recs) -> bool:
    return bool(recs) and all("avg_incremental" in r and "active_adapters" in r for r in recs)


def seed_verdicts(row: dict, base: dict, fewer_goal: float, points: float,
                  repeats_goal: float, novel_goal: float) -> dict | None:
    """Per seed, ``row`` (a LiteLoRA summary) against ``base`` (its SD-LoRA) on the goal's
    terms; ``None`` where the summaries hold no per-seed records of the same seeds."""
    recs, brecs = row.get("per_seed", []), base.get("per_seed", [])
    if len(recs) != len(brecs) or not _per_seed_ok(recs) or not _per_seed_ok(brecs):
        return None
    gaps = [r["avg_incremental"] - b["avg_incremental"] for r, b in zip(recs, brecs)]
    fewer = [1.0 - r["active_adapters"] / max(b["active_adapters"], 1e-12)
             for r, b in zip(recs, brecs)]
    met = [f >= fewer_goal - 1e-9 and g >= -points for f, g in zip(fewer, gaps)]
    out = {"seeds": len(recs), "A_gap_per_seed": gaps, "fewer_per_seed": fewer,
           "met_seeds": sum(met), "met_on_spread": on_spread(met)}
    if all("truth" in r and "recruited" in r for r in recs):
        pairs = [list(zip(r["truth"][1:], r["recruited"][1:])) for r in recs]
        reused = [_share(p, "repeat", False) for p in pairs]
        novel = [_share(p, "novel", True) for p in pairs]
        if all(v is not None for v in reused + novel):
            dec = [ru >= repeats_goal - 1e-9 and nv >= novel_goal - 1e-9 and g >= -points
                   for ru, nv, g in zip(reused, novel, gaps)]
            out.update(repeats_reused_per_seed=reused, novel_recruited_per_seed=novel,
                       decisions_met_seeds=sum(dec), decisions_on_spread=on_spread(dec))
    return out


def head_gaps(head: dict, sd: dict) -> list | None:
    """Per seed, head only's A minus SD-LoRA's (``None`` without matching per-seed records)."""
    recs, brecs = head.get("per_seed", []), sd.get("per_seed", [])
    if len(recs) != len(brecs) or not _per_seed_ok(recs) or not _per_seed_ok(brecs):
        return None
    return [h["avg_incremental"] - s["avg_incremental"] for h, s in zip(recs, brecs)]


def on_spread(per_seed: list, yes: str = "met", no: str = "not met") -> str:
    """``yes`` where every seed meets it, ``no`` where none does, else "undecided k/n"."""
    k, n = sum(bool(v) for v in per_seed), len(per_seed)
    if k == n:
        return yes
    if k == 0:
        return no
    return f"undecided {k}/{n}"


def margins(verdict: dict, base_adapters: float, fewer_goal: float, points: float) -> dict:
    """How far the mean verdict is from the lines: ``A_margin`` points of A above the
    ``-points`` line (negative: below it), ``adapter_margin`` adapters below the most the goal
    allows (negative: over it)."""
    adapters = (verdict["fewer_adapters"] - fewer_goal) * base_adapters
    # exactly on the line (1 - 4/5 - 0.2 is -5.6e-17): 0, not -0.00
    return {"A_margin": verdict["A_gap"] + points,
            "adapter_margin": 0.0 if abs(adapters) < 1e-9 else adapters}


def describe(v: dict) -> str:
    """The spread part of a verdict's line (``format_goals``)."""
    if "seeds" not in v:
        return ""
    gaps = v["A_gap_per_seed"]
    text = (f"per seed: met {v['met_seeds']}/{v['seeds']}, A gap {min(gaps):+.2f} to "
            f"{max(gaps):+.2f}, fewer {min(v['fewer_per_seed']):.0%} to "
            f"{max(v['fewer_per_seed']):.0%}; to the lines: A {v['A_margin']:+.2f} points, "
            f"{v['adapter_margin']:+.2f} adapters; on the spread: {v['met_on_spread']}")
    if "decisions_on_spread" in v:
        text += (f"; decision goal met {v['decisions_met_seeds']}/{v['seeds']} (repeats reused "
                 f"{min(v['repeats_reused_per_seed']):.0%} to "
                 f"{max(v['repeats_reused_per_seed']):.0%}, novel recruited "
                 f"{min(v['novel_recruited_per_seed']):.0%} to "
                 f"{max(v['novel_recruited_per_seed']):.0%}): {v['decisions_on_spread']}")
    return text
