"""How often LiteLoRA's gate decides right on planted streams: recruit for a novel task, reuse for
a redundant one (the ground truth is planted, ``litelora_fast.litelora.cl.planted_tasks``).

    python examples/planted_decisions.py                     # 4 easy patterns x 10 seeds
    python examples/planted_decisions.py --hard --seeds 4    # the hard cases, seeds 0-3
    python examples/planted_decisions.py --hard --seeds 3 --variant paper

The easy patterns mix novel (1) and redundant (0) tasks in one layer. ``--hard`` runs the hard
cases instead: adapters in two layers, redundancy built from redundant tasks, near-redundant tasks
(5% and 30% novel energy), 10x the noise, and a same-subspace task with a different core; per
case it prints how often each kind of task was recruited and LiteLoRA's accuracy gap to one
adapter per task. Learner: ``run_planted``'s defaults (our additions, task-incremental) unless
``--variant``/``--lam``/``--relative`` say otherwise.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "0")     # CPU tensors take the fast PyTorch path

import torch  # noqa: E402

from litelora_fast.litelora.cl import run_planted  # noqa: E402

# task 0 is always novel; the rest mix novel (1) and redundant (0) tasks
PATTERNS = ([1, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 1, 1, 0, 0])
HARD = {
    "two layers": (["novel", "redundant", "novel", "redundant"],
                   dict(layers=2, d_in=40, d_hidden=32, d_out=24)),
    "redundant from redundant": (["novel", "novel", "redundant", "redundant2", "redundant2"], {}),
    "near-redundant": (["novel", "novel", "near:0.05", "near:0.3"], {}),
    "noise 0.5": (["novel", "redundant", "novel", "redundant"], {"noise": 0.5}),
    "same subspace, new core": (["novel", "core", "novel", "core"], {}),
}


def hard(seeds, options) -> dict:
    out = {}
    for case, (kinds, sizes) in HARD.items():
        rec, gaps = {}, []
        for seed in seeds:
            lite = run_planted(kinds, seed=seed, **sizes, **options)
            base = run_planted(kinds, seed=seed, method="sdlora", **sizes, **options)
            gaps.append(lite["avg_accuracy"] - base["avg_accuracy"])
            for kind, got in zip(kinds[1:], lite["recruited"][1:]):
                rec.setdefault(kind, []).append(int(got))
        out[case] = {"recruited": {k: [sum(v), len(v)] for k, v in rec.items()},
                     "gap_mean": sum(gaps) / len(gaps), "gap_min": min(gaps)}
        print(f"{case:<26} " + ", ".join(f"{k} {sum(v)}/{len(v)} recruited"
                                         for k, v in rec.items()) +
              f"; accuracy gap to one adapter per task: mean {out[case]['gap_mean']:+.2f}, "
              f"worst {out[case]['gap_min']:+.2f} points", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds per pattern")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--lam", type=float, default=None, help="recruit cost (default: run_planted's)")
    p.add_argument("--variant", choices=["library", "paper"], default=None)
    p.add_argument("--relative", action="store_true", help="lam_scale='relative'")
    p.add_argument("--hard", action="store_true", help="the hard cases instead of the patterns")
    args = p.parse_args(argv)
    torch.set_num_threads(1)            # tiny models: threads only add overhead
    options = {} if args.lam is None else {"lam": args.lam}
    if args.variant:
        options["variant"] = args.variant
    if args.relative:
        options["lam_scale"] = "relative"
    print(f"learner options: {options or 'run_planted defaults'}; torch threads 1")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.hard:
        return hard(seeds, options)
    right = total = runs = 0
    start = time.perf_counter()
    for novel in PATTERNS:
        for seed in seeds:
            r = run_planted(novel, seed=seed, **options)
            ok = [got == bool(want) for got, want in zip(r["recruited"][1:], novel[1:])]
            right, total, runs = right + sum(ok), total + len(ok), runs + 1
            decided = "".join("R" if v else "." for v in r["recruited"])
            print(f"pattern {''.join(map(str, novel))} seed {seed:3d}: decisions {decided} "
                  f"({sum(ok)}/{len(ok)} right), accuracy {r['avg_accuracy']:.2f}, "
                  f"adapters {r['active_adapters']}", flush=True)
    seconds = time.perf_counter() - start
    print(f"\n{right}/{total} recruit/reuse decisions right ({100 * right / total:.1f}%) over "
          f"{runs} runs in {seconds:.0f} s (R = recruited, . = reused)")
    return {"right": right, "total": total, "runs": runs}


if __name__ == "__main__":
    main()
