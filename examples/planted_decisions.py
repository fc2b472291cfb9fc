"""How often LiteLoRA's gate decides right on planted streams: recruit for a novel task, reuse for
a redundant one (the ground truth is planted, ``litelora_fast.cl.planted_tasks``).

    python examples/planted_decisions.py                 # 10 seeds x 4 patterns, ~1-2 min
    python examples/planted_decisions.py --seeds 3 --lam 0.2

Prints one line per run (pattern, seed, decisions, accuracy) and the success rate over every
decision after task 0 (task 0 always recruits, so it is not counted).
"""
from __future__ import annotations

import argparse
import time

import torch

from litelora_fast.cl import run_planted

# task 0 is always novel; the rest mix novel (1) and redundant (0) tasks
PATTERNS = ([1, 0, 1, 0], [1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 1, 1, 0, 0])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds per pattern")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--lam", type=float, default=None, help="recruit cost (default: run_planted's)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)            # tiny models: threads only add overhead
    options = {} if args.lam is None else {"lam": args.lam}
    right = total = runs = 0
    start = time.perf_counter()
    for novel in PATTERNS:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
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
