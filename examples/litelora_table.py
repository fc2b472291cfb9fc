"""The LiteLoRA results table: faithful LiteLoRA, each of our additions, and the baselines on the
two real MNIST streams (split-MNIST, 5 tasks; the 14-task domain stream) and the BBC News stream
on MiniLM's top layer (10 category-pair tasks; ``litelora_fast/litelora/cl/bbc.py``), both
protocols.

    python examples/litelora_table.py --sweep --streams split_mnist domain   # lam, dev seeds 0-1
    python examples/litelora_table.py --sweep --streams bbc --families paper library
    python examples/litelora_table.py              # the table on held-out seeds 100-102
    python examples/litelora_table.py --from-json A.json B.json --out out/t   # merge, no run

The MNIST streams run every row of ``ROWS``; the BBC stream, whose runs cost more (a transformer
layer per step), runs ``DEFAULT_ROWS["bbc"]`` unless ``--rows`` says otherwise. The first BBC run
encodes the 2,225 articles with MiniLM's lower layers once and caches them (``LITELORA_CACHE_DIR``).

``--sweep`` runs every lam of ``SWEEP`` on the development seeds and, per stream, protocol and
lam family, picks the lam that keeps the fewest adapters at a mean A (average anytime accuracy, the
paper's metric) within 1 point of SD-LoRA run with the family's optimiser (the largest A
otherwise). The shipped defaults (``LAM_DEFAULTS`` in ``litelora_fast/litelora/cl/mnist.py`` and
``cl/bbc.py``) were picked that way. The table then runs on seeds no default was tuned on and
writes JSON and a PNG (``docs/results/litelora_table.{json,png}`` by default). Every run uses one
torch thread; ``--workers`` runs (stream, seed) jobs in parallel processes. The code is in
``litelora_fast/litelora/cl/table.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TRITON_INTERPRET", "0")     # CPU tensors take the fast PyTorch path

import torch  # noqa: E402

from litelora_fast.litelora.cl.machine import describe, machine_info  # noqa: E402
from litelora_fast.litelora.cl.streams import LAM_DEFAULTS, STREAMS  # noqa: E402
from litelora_fast.litelora.cl.table import (ROWS, SWEEP, format_table, goals,  # noqa: E402
                                             save_figure, summarize, sweep, table)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sweep", action="store_true", help="pick lam on development seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: 0 1 with --sweep, else the held-out 100 101 102")
    p.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                   help="table rows (default: all)")
    p.add_argument("--epochs", type=int, default=None,
                   help="phase-1 epochs of every run (default: the streams'; a smoke run: 2)")
    p.add_argument("--from-json", nargs="+", metavar="JSON", default=None,
                   help="no run: merge the per-seed records of earlier table JSONs (rows of "
                   "later files are added; a row present twice must agree), print and write")
    p.add_argument("--families", nargs="+", default=list(SWEEP), choices=list(SWEEP),
                   help="lam families to sweep (default: all)")
    p.add_argument("--out", default="docs/results/litelora_table",
                   help="path prefix of the JSON and PNG (default %(default)s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    # the CPU, its float flags, torch, BLAS and threads: one seed's numbers depend on them
    machine = machine_info(threads=1)
    if args.from_json:
        raw, seeds, machines = {}, None, []
        for path in args.from_json:
            with open(path) as f:
                prev = json.load(f)
            # a merged JSON holds the list of the machines it came from
            got = prev.get("machine")
            for m in got if isinstance(got, list) else [got]:
                if m not in machines:
                    machines.append(m)
            seeds = seeds or prev["seeds"]
            if prev["seeds"] != seeds:
                raise SystemExit(f"{path}: seeds {prev['seeds']} differ from {seeds}")
            for stream, by_protocol in prev["summary"].items():
                for protocol, rows in by_protocol.items():
                    for label, s in rows.items():
                        cell = raw.setdefault(stream, {}).setdefault(protocol, {})
                        if label in cell:
                            same = [(a["avg_accuracy"], a["recruited"]) for a in cell[label]] \
                                == [(b["avg_accuracy"], b["recruited"]) for b in s["per_seed"]]
                            if not same:
                                raise SystemExit(f"{path}: row {label!r} differs from the "
                                                 f"earlier run ({stream}, {protocol})")
                            continue
                        cell[label] = s["per_seed"]
        summary = summarize(raw)
        print("\n".join(describe(m) for m in machines))
        print(format_table(summary))
        res = {"machine": machines[0] if len(machines) == 1 else machines, "seeds": seeds,
               "lam_defaults": {s: LAM_DEFAULTS[s] for s in summary},
               "merged_from": args.from_json, "summary": summary, "goals": goals(summary)}
        save_figure(summary, args.out + ".png", machine=res["machine"])
        path = args.out + ".json"
    elif args.sweep:
        res = sweep(args.seeds or [0, 1], args.workers, args.families, args.streams)
        res["machine"] = machine
        path = args.out + "_sweep" + ("" if args.families == list(SWEEP) else
                                      "_" + "_".join(args.families)) + (
            "" if args.streams == list(STREAMS) else "_" + "_".join(args.streams)) + ".json"
    else:
        extra = {} if args.epochs is None else {"epochs": args.epochs}
        summary = table(args.seeds or [100, 101, 102], args.workers, args.streams, args.rows,
                        extra=extra)
        print(describe(machine))
        print(format_table(summary))
        res = {"machine": machine, "seeds": args.seeds or [100, 101, 102],
               "lam_defaults": {s: LAM_DEFAULTS[s] for s in summary}, "summary": summary,
               "goals": goals(summary)}
        save_figure(summary, args.out + ".png", machine=machine)
        path = args.out + ".json"
    res["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {path} ({res['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
