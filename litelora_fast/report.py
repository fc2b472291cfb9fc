"""``python -m litelora_fast report BENCH.json``: pytest-benchmark JSON -> markdown table + PNG plot.

Reads the JSON that ``pytest benchmarks/ --benchmark-json BENCH.json`` writes, keeps our
benchmark entries (those whose ``extra_info`` has a ``case_id``), and writes under ``--out``
(default ``benchmarks/results/``):

- ``<name>.md``: date, device, versions and timer, then one row per case and mode with every
  peer's headline time (``extra_info["ms_<peer>"]``), our speedup over each peer, our TFLOP/s,
  activation memory saved for backward, peak memory (GPU) and our error against float64;
- ``<name>.png``: speedup of ours over the reference (a) and the packed path (b) against K, one
  panel per shape (cases with no zero gates and frozen gates; all cases if there are none).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from .roofline import MODES, PEERS, Case

_MODE_ORDER = {m: i for i, m in enumerate(MODES)}
_MODE_STYLE = {"fwd_bwd": "-", "forward": "--", "backward": ":"}


def load_rows(data: dict) -> list:
    """Our entries' ``extra_info`` dicts, with ``case`` turned into a ``Case``, sorted."""
    rows = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info", {}))
        if "case_id" not in info:
            continue
        info["case"] = Case.from_dict(info["case"])
        rows.append(info)

    def key(i):
        c = i["case"]
        return (c.device, c.dtype, c.d_in, c.d_out, c.n, c.r, c.sparsity, c.train_gates, c.k,
                _MODE_ORDER.get(i["mode"], 9))
    return sorted(rows, key=key)


def header(data: dict, rows: list) -> list:
    """Lines saying when, where and with what the numbers were measured."""
    mi, first = data.get("machine_info", {}), rows[0] if rows else {}
    device = first.get("cuda_device") or mi.get("cuda_device")
    devices = {r["case"].device for r in rows}
    if devices == {"cpu"} or not device:
        cpu = mi.get("cpu", {}).get("brand_raw") or mi.get("processor") or "unknown CPU"
        where = f"CPU only ({cpu}, {mi.get('cpu_threads', '?')} torch threads)"
    else:
        where = f"GPU {device} (CUDA {mi.get('cuda_runtime', '?')})"
    loads = [r["load_avg_1min"] for r in rows if r.get("load_avg_1min") is not None]
    lines = [f"- date: {data.get('datetime', 'unknown')}",
             f"- device: {where}",
             f"- torch {first.get('torch', mi.get('torch', '?'))}, "
             f"triton {first.get('triton', mi.get('triton', '?'))}, "
             f"litelora-fast {first.get('litelora_fast', mi.get('litelora_fast', '?'))}, "
             f"python {mi.get('python_version', '?')}",
             f"- timer (headline numbers): {first.get('timer', '?')}"]
    if devices == {"cpu"} and loads:
        lines.append(f"- 1-minute load average during the run: {min(loads):.1f}-{max(loads):.1f} "
                     f"(shared machine: CPU numbers are indicative only)")
    return lines


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _mb(v) -> str:
    return "-" if v is None else f"{v / 2**20:.2f}"


def table(rows: list) -> str:
    head = ["shape", "N", "K", "r", "zero gates", "gates", "mode", "ours ms", "(a) ref ms",
            "(b) packed ms", "(c) base ms", "x vs (a)", "x vs (b)", "ours / (c)",
            "ours TFLOP/s", "saved MB ours / (a) / (b)", "peak MB ours / (a)", "err ours"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in rows:
        c = i["case"]
        ms = {p: i.get(f"ms_{p}") for p in PEERS}
        row = [f"{c.d_in}x{c.d_out}", str(c.n), str(c.k), str(c.r), f"{c.zero_gates}/{c.k}",
               "train" if c.train_gates else "frozen", i["mode"],
               *(_f(ms[p], ".3f") for p in PEERS),
               _f(i.get("speedup_vs_reference"), ".2f"), _f(i.get("speedup_vs_packed"), ".2f"),
               _f(ms["ours"] / ms["base"] if ms["ours"] and ms["base"] else None, ".2f"),
               _f(i.get("tflops_ours"), ".2f"),
               " / ".join(_mb(i.get(f"saved_bytes_{p}")) for p in ("ours", "reference", "packed")),
               " / ".join(_mb(i.get(f"peak_bytes_{p}")) for p in ("ours", "reference")),
               _f(i.get("rel_err_ours"), ".1e")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(rows: list, path: str, title: str) -> None:
    """Speedup of ours over (a) and (b) vs K, one panel per shape."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [i for i in rows if i["case"].zero_gates == 0 and not i["case"].train_gates] or rows
    panels = defaultdict(list)
    for i in plain:
        c = i["case"]
        panels[(c.device, c.dtype, c.d_in, c.d_out, c.n, c.r)].append(i)
    n = max(len(panels), 1)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.8 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, ((device, dtype, d_in, d_out, N, r), items) in zip(axes.flat, sorted(panels.items())):
        for peer, color in (("reference", "tab:red"), ("packed", "tab:blue")):
            for mode in MODES:
                pts = sorted((i["case"].k, i[f"speedup_vs_{peer}"]) for i in items
                             if i["mode"] == mode and i.get(f"speedup_vs_{peer}") is not None)
                if pts:
                    ax.plot(*zip(*pts), _MODE_STYLE[mode], marker="o", color=color,
                            label=f"vs {peer}, {mode}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ks = sorted({i["case"].k for i in items})
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K (adapters)")
        ax.set_ylabel("speedup of ours (x)")
        ax.set_title(f"{device} {dtype} {d_in}x{d_out} N={N} r={r}", fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(path: str) -> dict:
    """pytest-benchmark JSON, or the harness's ``LITELORA_BENCH_JSONL`` lines (``.jsonl``: one
    ``{"name", "extra_info"}`` per case, written as the run goes, so a killed run still reports)."""
    with open(path) as f:
        if not path.endswith(".jsonl"):
            return json.load(f)
        entries = [json.loads(line) for line in f if line.strip()]
    return {"datetime": "unknown (JSON lines of a run that did not finish)", "machine_info": {},
            "benchmarks": entries}


def write_report(json_path: str, out_dir: str, name: str = None) -> tuple:
    """Write ``<name>.md`` and ``<name>.png`` under ``out_dir``; returns their paths."""
    data = load(json_path)
    rows = load_rows(data)
    if not rows:
        raise ValueError(f"{json_path} holds no litelora-fast benchmark entries "
                         f"(expected pytest-benchmark JSON of `pytest benchmarks/`)")
    name = name or os.path.splitext(os.path.basename(json_path))[0]
    os.makedirs(out_dir, exist_ok=True)
    md_path, png_path = os.path.join(out_dir, name + ".md"), os.path.join(out_dir, name + ".png")
    head = header(data, rows)
    text = "\n".join([f"# Benchmark: {name}", "", *head, "",
                      "Peers: ours = `gated_lora_linear`; (a) = `gated_lora_linear_ref` (loop over "
                      "adapters); (b) = packed plain PyTorch (`benchmarks/peers.py`); (c) = "
                      "`F.linear` alone. `x vs (a)` = time of (a) / time of ours (> 1: ours is "
                      "faster). `saved MB` = activation memory autograd keeps for backward; "
                      "`err ours` = relative error vs the float64 reference (y and all grads).",
                      "", table(rows), "", f"![speedup vs K]({name}.png)", ""])
    with open(md_path, "w") as f:
        f.write(text)
    plot(rows, png_path, "\n".join(h.lstrip("- ") for h in head[:3]))
    return md_path, png_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litelora_fast report",
        description="Turn `pytest benchmarks/ --benchmark-json BENCH.json` into a markdown table "
                    "and a PNG plot of speedup vs K.")
    parser.add_argument("json", metavar="BENCH.json")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"),
                        help="output folder (default: benchmarks/results/)")
    parser.add_argument("--name", help="file stem of the outputs (default: the JSON's stem)")
    ns = parser.parse_args(argv)
    if not os.path.isfile(ns.json):
        parser.error(f"no such file: {ns.json} (write one with "
                     "`pytest benchmarks/ --benchmark-json BENCH.json`)")
    md_path, png_path = write_report(ns.json, ns.out, ns.name)
    print(f"wrote {md_path} and {png_path}")
    return 0
