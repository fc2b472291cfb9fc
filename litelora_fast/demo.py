"""The ``demo`` and ``analyze`` commands (``python -m litelora_fast demo|analyze``).

``demo``: LiteLoRA and its two baselines (one adapter per task = SD-LoRA without the gate; one
shared adapter) on both CPU streams, three task orders each: the planted stream (6 regression tasks,
pattern novel/redundant, three draws with three patterns) and digits (5 two-class tasks, three
class orders). Prints a progress bar on stderr and one table per stream; ``--json`` writes
``{stream: {method: {avg_accuracy, forgetting, active_adapters, params, seconds, ...}}}``;
``--png`` a figure (accuracy and active adapters after each task); ``--save-dir`` the order-0
checkpoints that ``analyze`` reads.

``analyze CHECKPOINT``: the redundancy of the adapters in a saved checkpoint (normalized subspace
similarity, mean principal angle, share explained by the other adapters), printed per layer, and a
heat map PNG.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

METHODS = ("litelora", "sdlora", "shared")
LABELS = {"litelora": "LiteLoRA", "sdlora": "one adapter per task", "shared": "one shared adapter"}
# planted "orders": three draws, each with its own novel/redundant pattern (task 0 always novel)
PLANTED_PATTERNS = ([1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0])
DIGITS_TASKS = 5


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
                          f"{self.done}/{self.total} tasks  {elapsed:5.0f}s  {self.label:<32}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _summary(runs: list) -> dict:
    """Mean (and std over orders) of each metric, plus the per-order curves."""
    def mean_std(key):
        vals = [float(r[key]) for r in runs]
        m = sum(vals) / len(vals)
        return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))

    out = {}
    for key in ("avg_accuracy", "forgetting", "active_adapters", "params", "seconds"):
        out[key], out[key + "_std"] = mean_std(key)
    out["num_tasks"] = len(runs[0]["anytime"])
    out["per_order"] = [{k: r[k] for k in ("avg_accuracy", "forgetting", "active_adapters",
                                           "params", "seconds", "anytime", "active_per_task",
                                           "recruited")} for r in runs]
    if "novel" in runs[0]:
        for r, po in zip(runs, out["per_order"]):
            po["novel"] = r["novel"]
    return out


def run_demo(orders: int = 3, quick: bool = False, progress: bool = True,
             save_dir=None) -> dict:
    """Run every method on both streams; returns ``{stream: {method: summary}}``."""
    from .cl import run_digits, run_planted

    planted_opts = {"epochs": 10, "reuse_epochs": 5, "n_train": 256} if quick else {}
    digits_opts = {"epochs": 4, "reuse_epochs": 4} if quick else {}
    patterns = PLANTED_PATTERNS[:orders]
    total = len(METHODS) * (sum(len(p) for p in patterns) + orders * DIGITS_TASKS)
    bar = Progress(total) if progress else None
    tick = bar if bar is not None else None
    results = {"planted": {}, "digits": {}}
    for stream in ("planted", "digits"):
        for method in METHODS:
            runs = []
            for o in range(orders):
                if bar is not None:
                    bar.label = f"{stream} {method} order {o}"
                    bar.draw()
                if stream == "planted":
                    r = run_planted(patterns[o], seed=o, method=method, progress=tick,
                                    **planted_opts)
                else:
                    r = run_digits(o, method=method, progress=tick, **digits_opts)
                if save_dir is not None and o == 0:
                    os.makedirs(save_dir, exist_ok=True)
                    torch.save(r["learner"].checkpoint(),
                               os.path.join(save_dir, f"{stream}_{method}.pt"))
                runs.append(r)
            results[stream][method] = _summary(runs)
    if bar is not None:
        bar.close()
    return results


def format_table(stream: str, summary: dict) -> str:
    first = next(iter(summary.values()))
    n, orders = first["num_tasks"], len(first["per_order"])
    metric = "explained shift %" if stream == "planted" else "accuracy %"
    lines = [f"{stream} ({n} tasks, mean +- std over {orders} task orders; {metric})",
             f"  {'method':<22} {'avg acc':>13} {'forgetting':>12} {'adapters':>9} "
             f"{'params':>8} {'seconds':>8}"]
    for method, s in summary.items():
        lines.append(f"  {LABELS[method]:<22} {s['avg_accuracy']:7.2f}"
                     f"+-{s['avg_accuracy_std']:<4.2f} {s['forgetting']:7.2f}"
                     f"+-{s['forgetting_std']:<4.1f}"
                     f" {s['active_adapters']:5.2f}/{n:<3d}{s['params']:8.0f} {s['seconds']:8.1f}")
    return "\n".join(lines)


def save_figure(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, (stream, summary) in enumerate(results.items()):
        for method, s in summary.items():
            curves = [po["anytime"] for po in s["per_order"]]
            active = [po["active_per_task"] for po in s["per_order"]]
            x = range(1, len(curves[0]) + 1)
            axes[row, 0].plot(x, [sum(c) / len(c) for c in zip(*curves)], marker="o",
                              label=LABELS[method])
            axes[row, 1].plot(x, [sum(c) / len(c) for c in zip(*active)], marker="o",
                              label=LABELS[method])
        axes[row, 0].set_title(f"{stream}: mean accuracy over tasks seen")
        axes[row, 1].set_title(f"{stream}: adapters in the bank")
        low, high = axes[row, 0].get_ylim()
        if low < 0:     # the shared adapter can fall below the bare base (< 0): clip, say so
            axes[row, 0].set_ylim(0, min(high, 101))
            axes[row, 0].set_title(f"{stream}: mean accuracy over tasks seen (clipped at 0)")
        for ax in axes[row]:
            ax.set_xlabel("after task")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m litelora_fast demo",
                                description="LiteLoRA vs one adapter per task vs one shared "
                                "adapter on the planted and digits streams (CPU, no download).")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--png", metavar="PATH", default="litelora_demo.png",
                   help="figure path (default %(default)s; '' for none)")
    p.add_argument("--orders", type=int, default=3, choices=(1, 2, 3),
                   help="task orders per stream")
    p.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    p.add_argument("--save-dir", metavar="DIR", help="save the order-0 checkpoints for `analyze`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the models are tiny)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TRITON_INTERPRET", "0")    # CPU tensors take the fast PyTorch path
    results = run_demo(args.orders, args.quick, not args.no_progress, args.save_dir)
    for stream, summary in results.items():
        print(format_table(stream, summary))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    if args.png:
        save_figure(results, args.png)
        print(f"wrote {args.png}")
    return 0


def _format_matrix(name: str, M: list) -> str:
    rows = [f"    {name}"] + ["      " + " ".join(f"{v:5.2f}" for v in row) for row in M]
    return "\n".join(rows)


def analyze_main(argv=None) -> int:
    from .redundancy import adapters_from_state_dict, layer_report

    p = argparse.ArgumentParser(prog="python -m litelora_fast analyze",
                                description="Redundancy of the adapters in a saved checkpoint.")
    p.add_argument("checkpoint", help="a learner checkpoint (demo --save-dir) or a model "
                   "state_dict holding GatedLoRALinear layers")
    p.add_argument("--png", metavar="PATH", default="redundancy.png",
                   help="heat-map path (default %(default)s; '' for none)")
    args = p.parse_args(argv)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    layers = adapters_from_state_dict(state)
    if not layers:
        print(f"{args.checkpoint}: no adapters found (keys *.lora_A.<k>)")
        return 1
    ids = ckpt.get("bank_ids") if isinstance(ckpt, dict) else None
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
