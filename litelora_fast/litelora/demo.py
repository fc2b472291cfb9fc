"""The ``demo`` and ``analyze`` commands (``python -m litelora_fast demo|analyze``).

``demo``: LiteLoRA as the authors' code runs it (``variant="paper"``), LiteLoRA with all our
additions (``variant="library"``), one adapter per task (SD-LoRA), one shared adapter and no
adapter (head only), on the two real MNIST streams (``litelora_fast.litelora.cl.mnist``:
split-MNIST, 5
tasks; a 14-task domain stream of permutations and rotations with known repeats), in both protocols
(class-incremental, the paper's; task-incremental). One seed by default (``--seeds``), one torch
thread (``--threads``), a progress bar on stderr; the results depend on the seeds, the thread
count and the machine (its float kernels: ``cl.machine``), all printed and written to the JSON.
``--json`` / ``--png`` (default ``out/demo.png``) write the results and a figure; ``--save-dir``
the first seed's learner checkpoints that ``analyze`` reads; ``--nudge-ulp`` moves every task
input one ulp first (what rounding alone changes); ``--from-json`` re-prints a saved run.

``analyze CHECKPOINT``: the redundancy of the adapters in a saved checkpoint (normalized subspace
similarity, mean principal angle, share explained by the other adapters), printed per layer, and a
heat map PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..tools.cli_types import output_dir, output_file, positive_int

DEMO_ROWS = ("LiteLoRA (paper)", "library (all additions)", "SD-LoRA (adapter per task)",
             "one shared adapter", "head only")


class Progress:
    """A plain-text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, stream=sys.stderr, width: int = 30):
        self.total, self.done, self.stream, self.width = total, 0, stream, width
        self.start = time.perf_counter()
        self.label = ""

    def __call__(self) -> None:
        self.done += 1
        self.draw()

    def draw(self) -> None:
        filled = int(self.width * self.done / max(self.total, 1))
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total} tasks  {elapsed:5.0f}s  {self.label:<48}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def run_demo(seeds=(0,), progress: bool = True, save_dir=None, rows=DEMO_ROWS,
             streams=("split_mnist", "domain"), nudge: bool = False) -> dict:
    """Every row on both streams and protocols; returns ``{stream: {protocol: {row: summary}}}``
    (the format of ``litelora_fast.litelora.cl.table.table``). ``nudge``: every task input moved
    one ulp first (``cl.rounding.nudge_stream``), to see what rounding alone changes."""
    from .cl.rounding import nudge_stream
    from .cl.streams import build, run
    from .cl.table import PROTOCOLS, record, row_options, summarize

    sizes = {"split_mnist": 5, "domain": 14, "bbc": 10}
    total = len(seeds) * len(rows) * len(PROTOCOLS) * sum(sizes[s] for s in streams)
    bar = Progress(total) if progress else None
    raw = {}
    for stream in streams:
        for seed in seeds:
            data = build(stream, seed)
            if nudge:
                data = nudge_stream(data)
            for protocol in PROTOCOLS:
                for label in rows:
                    method, options = row_options(stream, protocol, label)
                    if bar is not None:
                        bar.label = f"{stream} {protocol} {label}"
                        bar.draw()
                    r = run(stream, seed, method, data=data, progress=bar, **options)
                    if save_dir is not None and seed == seeds[0]:
                        os.makedirs(save_dir, exist_ok=True)
                        name = f"{stream}_{protocol}_{method}_{options['variant']}.pt"
                        torch.save(r["learner"].checkpoint(), os.path.join(save_dir, name))
                    raw.setdefault(stream, {}).setdefault(protocol, {}).setdefault(
                        label, []).append(record(r, stream, options.get("lam")))
    if bar is not None:
        bar.close()
    return summarize(raw)


def demo_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m litelora_fast demo",
                                description="LiteLoRA (the paper's and ours) vs SD-LoRA, one "
                                "shared adapter and head only on two real MNIST streams (CPU, no "
                                "download).")
    p.add_argument("--json", metavar="PATH", type=output_file, help="write the results as JSON")
    p.add_argument("--png", metavar="PATH", type=output_file,
                   default=os.path.join("out", "demo.png"),
                   help="figure path (default %(default)s; '' for none)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="stream seeds (default 0)")
    p.add_argument("--streams", nargs="+", default=["split_mnist", "domain"],
                   choices=["split_mnist", "domain", "bbc"],
                   help="streams (default: the two MNIST streams; bbc needs the dev and "
                   "examples extras)")
    p.add_argument("--save-dir", metavar="DIR", type=output_dir,
                   help="save the first seed's checkpoints for `analyze`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: the models are tiny; results depend on it)")
    p.add_argument("--nudge-ulp", action="store_true",
                   help="move every task input one ulp first: what rounding alone (another "
                   "machine's kernels) changes")
    p.add_argument("--from-json", metavar="PATH", help="no run: re-print a saved demo JSON with "
                   "today's table (ranges, verdicts per seed); with --json, write it refreshed "
                   "(every recorded field kept)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRITON_INTERPRET", "0")    # CPU tensors take the fast PyTorch path
    from .cl.machine import describe, machine_info
    from .cl.table import format_table, goals, save_figure, summarize
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        results = summarize({st: {pr: {label: s["per_seed"] for label, s in rows.items()}
                                  for pr, rows in by_pr.items()}
                             for st, by_pr in saved["results"].items()})
        print(f"{args.from_json}: seeds {saved['seeds']}" + (
            ", inputs nudged one ulp" if saved.get("nudge_ulp") else "") +
            f"\n{describe(saved.get('machine'))}")
        print(format_table(results, what="seed(s)"))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(saved, results=results, goals=goals(results)), f, indent=1)
            print(f"wrote {args.json}")
        return 0
    machine = machine_info(args.threads)
    print(f"LiteLoRA demo: seeds {args.seeds}" + (", inputs nudged one ulp" if args.nudge_ulp
                                                  else "") + f"\n{describe(machine)}", flush=True)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    results = run_demo(args.seeds, not args.no_progress, args.save_dir, streams=args.streams,
                       nudge=args.nudge_ulp)
    print(format_table(results, what="seed(s)"))
    seconds = time.perf_counter() - start
    print(f"total {seconds:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "threads": args.threads, "machine": machine,
                       "nudge_ulp": args.nudge_ulp, "seconds": seconds,
                       # the 1/5/15-minute load averages at the start and the end: the
                       # seconds depend on what else ran
                       "load_average": [load_start, os.getloadavg() if load_start else None],
                       "results": results, "goals": goals(results)}, f, indent=1)
        print(f"wrote {args.json}")
    if args.png:
        os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
        save_figure(results, args.png, title="LiteLoRA demo", machine=machine)
        print(f"wrote {args.png}")
    return 0


def _format_matrix(name: str, M: list) -> str:
    rows = [f"    {name}"] + ["      " + " ".join(f"{v:5.2f}" for v in row) for row in M]
    return "\n".join(rows)


def analyze_main(argv=None) -> int:
    from ..redundancy import adapters_from_state_dict, layer_report

    p = argparse.ArgumentParser(prog="python -m litelora_fast analyze",
                                description="Redundancy of the adapters in a saved checkpoint.")
    p.add_argument("checkpoint", help="a learner checkpoint (demo --save-dir) or a model "
                   "state_dict holding GatedLoRALinear layers")
    p.add_argument("--png", metavar="PATH", type=output_file,
                   default=os.path.join("out", "redundancy.png"),
                   help="heat-map path (default %(default)s; '' for none)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        print(f"analyze: no such checkpoint file: {args.checkpoint}", file=sys.stderr)
        return 2
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        # A file that is not a checkpoint fails inside the unpickler or the zip reader with
        # whatever the bytes trip on (UnpicklingError, IndexError, struct.error, ...).
        # torch.load's message is several paragraphs; its first line names the problem.
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else \
            type(e).__name__
        raise ValueError(f"{args.checkpoint}: not a checkpoint torch.load can read ({first})") \
            from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{args.checkpoint} holds a {type(ckpt).__name__}, not a checkpoint: "
                         "give a learner checkpoint (demo --save-dir) or a model state_dict")
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise ValueError(f"{args.checkpoint}: its 'model' entry is a {type(state).__name__}, "
                         "not a state_dict")
    layers = adapters_from_state_dict(state)
    if not layers:
        print(f"{args.checkpoint}: no adapters found (keys *.lora_A.<k>)")
        return 1
    ids = ckpt.get("bank_ids")
    reports = {}
    for l, (name, adapters) in enumerate(layers.items()):
        rep = reports[name] = layer_report(adapters)
        tasks = ids[l] if ids and l < len(ids) else list(range(len(adapters)))
        print(f"layer {name}: {len(adapters)} adapters (from tasks {tasks})")
        print(_format_matrix("phi(A_i, A_j): normalized subspace similarity of the input "
                             "subspaces", rep["phi_A"]))
        print(_format_matrix("phi(B_i, B_j): the same for the output subspaces", rep["phi_B"]))
        print("    share of B_j A_j explained by the others (magnitudes / subspaces): " +
              ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(rep["explained"],
                                                          rep["explained_subspace"])))
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        os.makedirs(os.path.dirname(args.png) or ".", exist_ok=True)
        n = len(reports)
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
        for ax, (name, rep) in zip(axes[0], reports.items()):
            im = ax.imshow(rep["phi_A"], vmin=0, vmax=1, cmap="viridis")
            ax.set_title(f"layer {name}: phi(A_i, A_j)")
            ax.set_xlabel("adapter j")
            ax.set_ylabel("adapter i")
            fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        plt.close(fig)
        print(f"wrote {args.png}")
    return 0


main = demo_main
