"""``python -m litelora_fast report BENCH.json``: pytest-benchmark JSON -> markdown table + PNG plot.

Reads the JSON that ``pytest benchmarks/ --benchmark-json BENCH.json`` writes, keeps our
benchmark entries (those whose ``extra_info`` has a ``case_id``), and writes under ``--out``
(default ``out/``):

- ``<name>.md``: date, device, versions and timer, then one row per case and mode with every
  peer's headline time (``extra_info["ms_<peer>"]``), our speedup over each peer, our TFLOP/s,
  activation memory saved for backward, peak memory (GPU) and our error against float64;
- ``<name>.png``: speedup of ours over the reference (a), the packed path (b) and PEFT against K, one
  panel per shape (cases with no zero gates and frozen gates; all cases if there are none).
"""
from __future__ import annotations

import argparse
import os
from collections import defaultdict

from . import bench_json
from .bench_cases import MODES
from .cli_types import output_dir

_MODE_STYLE = {"fwd_bwd": "-", "forward": "--", "backward": ":"}
_PLOT_PEERS = (("reference", "tab:red"), ("packed", "tab:blue"), ("peft", "tab:green"))


def header(data: dict, rows: list) -> list:
    """Lines saying when, where and with what the numbers were measured."""
    mi, first = data.get("machine_info", {}), rows[0] if rows else {}
    device = first.get("cuda_device") or mi.get("cuda_device")
    devices = {r["case"].device for r in rows}
    if devices == {"cpu"} or not device:
        cpu = mi.get("cpu", {}).get("brand_raw") or mi.get("processor") or "unknown CPU"
        cores = mi.get("cpu", {}).get("count", "?")
        where = f"CPU only ({cpu}, {cores} cores, {mi.get('cpu_threads', '?')} torch threads)"
    else:
        where = f"GPU {device} (CUDA {mi.get('cuda_runtime', '?')})"
    loads = [r["load_avg_1min"] for r in rows if r.get("load_avg_1min") is not None]
    lines = [f"- date: {data.get('datetime', 'unknown')}",
             f"- device: {where}",
             f"- torch {first.get('torch', mi.get('torch', '?'))}, "
             f"triton {first.get('triton', mi.get('triton', '?'))}, "
             f"litelora-fast {first.get('litelora_fast', mi.get('litelora_fast', '?'))}, "
             f"peft {first.get('peft', mi.get('peft', '?'))}, "
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


TABLE_PEERS = ("ours", "reference", "packed", "base", "peft", "hybrid")


def _candidates(i: dict) -> str:
    """The op's own timing of its candidates for the case's bucket: ``kernels 1.20 / torch
    1.05 / hybrid 0.98 -> hybrid`` (ms), or why there is none."""
    c = i.get("candidates_ours")
    if not isinstance(c, dict):
        return "-"
    if "times" not in c:
        return "unavailable"
    times = " / ".join(f"{k} {'-' if v is None else format(v * 1e3, '.2f')}"
                       for k, v in c["times"].items())
    return f"{times} -> {c.get('winner', '?')}"


def _pct(i: dict, kernel: str) -> str:
    b = i.get("base_gemm")
    v = b.get(kernel, {}).get("pct_of_flinear") if isinstance(b, dict) else None
    return "-" if v is None else f"{v:.0f}"


def table(rows: list) -> str:
    """One row per case and mode: every peer's headline time (the hybrid backend forced, where
    the op has it), our speedups, the implementation ours ran (``impl_ours``, on CUDA) and the
    op's timing of each candidate, the fused GEMMs' TFLOP/s as % of ``F.linear``'s, memory and
    our error against float64."""
    head = ["shape", "N", "K", "r", "zero gates", "gates", "dropout", "mode", "ours ms",
            "(a) ref ms", "(b) packed ms", "(c) base ms", "PEFT ms", "hybrid ms", "x vs (a)",
            "x vs (b)", "x vs PEFT", "ours / (c)", "ours impl", "op candidates ms",
            "fused fwd / dx % of F.linear", "ours TFLOP/s",
            "saved MB ours / (a) / (b) / PEFT / hybrid", "peak MB ours / (a) / (b) / PEFT",
            "err ours", "err PEFT"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in rows:
        c = i["case"]
        ms = {p: i.get(f"ms_{p}") for p in TABLE_PEERS}
        row = [f"{c.d_in}x{c.d_out}", str(c.n), str(c.k), str(c.r), f"{c.zero_gates}/{c.k}",
               "train" if c.train_gates else "frozen", f"{c.dropout:g}", i["mode"],
               *(_f(ms[p], ".3f") for p in TABLE_PEERS),
               *(_f(i.get(f"speedup_vs_{p}"), ".2f") for p in ("reference", "packed", "peft")),
               _f(ms["ours"] / ms["base"] if ms["ours"] and ms["base"] else None, ".2f"),
               i.get("impl_ours") or "-", _candidates(i),
               f"{_pct(i, 'fwd')} / {_pct(i, 'dx')}",
               _f(i.get("tflops_ours"), ".2f"),
               " / ".join(_mb(i.get(f"saved_bytes_{p}"))
                          for p in ("ours", "reference", "packed", "peft", "hybrid")),
               " / ".join(_mb(i.get(f"peak_bytes_{p}"))
                          for p in ("ours", "reference", "packed", "peft")),
               _f(i.get("rel_err_ours"), ".1e"), _f(i.get("rel_err_peft"), ".1e")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def tuning_section(rows: list) -> list:
    """Markdown lines: per GPU case, the Triton config each kernel's autotuner chose
    (``triton_configs``) and the fused GEMMs against cuBLAS (``base_gemm``)."""
    out, seen = [], set()
    for i in rows:
        c = i["case"]
        if c.device != "cuda" or i["case_id"] in seen:
            continue
        seen.add(i["case_id"])
        b = i.get("base_gemm") or {}
        parts = []
        for k in ("fwd", "dx"):
            v = b.get(k, {})
            if "ms_triton" in v:
                parts.append(f"{k}: Triton {v['ms_triton']:.3f} ms ({v['tflops_triton']:.0f} "
                             f"TFLOP/s), F.linear {v['ms_cublas_base']:.3f} ms "
                             f"({v['tflops_cublas_base']:.0f}), cuBLAS composite "
                             f"{v['ms_cublas_composite']:.3f} ms")
            elif v:
                parts.append(f"{k}: {v.get('error', '?')}")
        out.append(f"- `{i['case_id']}`: " + ("; ".join(parts) or "no base-GEMM timing"))
        configs = i.get("triton_configs")
        if configs is not None:
            text = configs if isinstance(configs, str) else "; ".join(
                f"{k}: {v}" for k, v in sorted(configs.items()))
            out.append(f"  - Triton configs chosen: {text}")
    if out:
        out = ["## What tuning needs", "", "Per case: the fused GEMMs at the case's width "
               "against cuBLAS (base GEMM alone and the composite), and the Triton configs the "
               "autotuners chose (`litelora_fast.kernels.chosen_configs()`).", ""] + out + [""]
    return out


def plot(rows: list, path: str, title: str) -> None:
    """Speedup of ours over (a), (b) and PEFT vs K, one panel per shape."""
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
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    for ax, ((device, dtype, d_in, d_out, N, r), items) in zip(axes.flat, sorted(panels.items())):
        for peer, color in _PLOT_PEERS:
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


def write_report(json_path: str, out_dir: str, name: str = None) -> tuple:
    """Write ``<name>.md`` and ``<name>.png`` under ``out_dir``; returns their paths."""
    data = bench_json.load(json_path)
    rows = bench_json.rows(data, json_path)
    name = name or os.path.splitext(os.path.basename(json_path))[0]
    os.makedirs(out_dir, exist_ok=True)
    md_path, png_path = os.path.join(out_dir, name + ".md"), os.path.join(out_dir, name + ".png")
    head = header(data, rows)
    text = "\n".join([f"# Benchmark: {name}", "", *head, "",
                      "Peers: ours = `gated_lora_linear` (`ours impl`: the implementation the op "
                      "chose on CUDA, kernels or the cuBLAS composite); (a) = "
                      "`gated_lora_linear_ref` (loop over adapters); (b) = packed plain PyTorch "
                      "(`benchmarks/peers.py`); (c) = `F.linear` alone; PEFT = PEFT's own LoRA "
                      "layer with the same adapters active at once (gates folded into its "
                      "scalings; '-' with trainable gates, which PEFT does not have); hybrid = "
                      "ours forced to `backend=\"hybrid\"` (cuBLAS base GEMMs, Triton LoRA "
                      "work; CUDA only). `dropout` = LoRA dropout p of every peer that has it. "
                      "`op candidates ms` = the op's own timing (fwd+bwd) of each candidate "
                      "for the case's bucket and its pick. "
                      "`x vs (a)` = time of (a) / time of ours (> 1: ours is faster). `saved MB` "
                      "= activation memory autograd keeps for backward; `err` = relative error "
                      "vs the float64 reference (y and all grads).",
                      "", table(rows), "", *tuning_section(rows),
                      f"![speedup vs K]({name}.png)", ""])
    with open(md_path, "w") as f:
        f.write(text)
    plot(rows, png_path, "\n".join(h.lstrip("- ") for h in head[:3]))
    return md_path, png_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m litelora_fast report",
        description="Turn `pytest benchmarks/ --benchmark-json BENCH.json` (or the JSON lines of "
                    "an unfinished run) into a markdown table and a PNG plot of speedup vs K.")
    parser.add_argument("json", metavar="BENCH.json")
    parser.add_argument("--out", default="out", type=output_dir,
                        help="output folder (default: out/; never a tracked folder unless you "
                             "name one)")
    parser.add_argument("--name", help="file stem of the outputs (default: the JSON's stem)")
    ns = parser.parse_args(argv)
    md_path, png_path = write_report(ns.json, ns.out, ns.name)
    print(f"wrote {md_path} and {png_path}")
    return 0
