"""LiteLoRA's accuracy-for-adapters trade-off on the digits stream, over many seeds.

For each seed it runs the three class orders with LiteLoRA and with one adapter per task, and
prints the accuracy gap (LiteLoRA minus one-adapter-per-task, mean over the orders) and the active
adapters out of 15 (3 orders x 5 tasks). The sweep behind ``litelora_fast.cl.digits.DEFAULTS``:

    python examples/digits_tradeoff.py --first-seed 100 --seeds 20                    # defaults
    python examples/digits_tradeoff.py --first-seed 100 --seeds 20 --lam 0.5 --gate-epochs 1

About 1.5 minutes per 20 seeds on 2 cores. Needs scikit-learn (the ``dev`` extra).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from litelora_fast.cl import run_digits


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--lam", type=float, default=None, help="recruit cost (default: DEFAULTS)")
    p.add_argument("--gate-epochs", type=int, default=None, help="default: DEFAULTS")
    args = p.parse_args(argv)
    torch.set_num_threads(1)            # tiny models: threads only add overhead
    options = {k: v for k, v in (("lam", args.lam), ("gate_epochs", args.gate_epochs))
               if v is not None}
    gaps, adapters = [], []
    start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        lite_acc, base_acc, active = [], [], 0
        for order in range(3):
            lite = run_digits(order, seed=seed + order, **options)
            base = run_digits(order, method="sdlora", seed=seed + order)
            lite_acc.append(lite["avg_accuracy"])
            base_acc.append(base["avg_accuracy"])
            active += lite["active_adapters"]
        gap = (sum(lite_acc) - sum(base_acc)) / 3
        gaps.append(gap)
        adapters.append(active)
        print(f"seed {seed}: gap {gap:+.2f} points, adapters {active}/15", flush=True)
    print(f"\n{options or 'defaults'}: gap mean {statistics.mean(gaps):+.2f} points "
          f"(min {min(gaps):+.2f}, max {max(gaps):+.2f}); seeds below -2 points: "
          f"{sum(g < -2 for g in gaps)}/{len(gaps)}; adapters mean "
          f"{statistics.mean(adapters):.2f}/15 (max {max(adapters)}); "
          f"{time.perf_counter() - start:.0f} s")
    return {"gaps": gaps, "adapters": adapters}


if __name__ == "__main__":
    main()
