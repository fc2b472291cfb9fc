"""The tuning sweep of ``gpu_check.sh --tune``: each config of the fused GEMMs' sweep lists
(``sweep_configs.sweep_list``: the ``SWEEP_CONFIGS`` of ``kernels/fused_xw_sgb.py`` and
``kernels/fused_dyw_dsa.py``, each ``{variant: [config, ...]}``) launched (the launchers' ``config=``) at the headline shapes, against cuBLAS.

Per shape (``gpu_plan.SWEEP_SHAPES``, N = ``SWEEP_N``, bf16) and adapter width R
(``SWEEP_RANKS``), one row per kernel and config: its median time (``triton.testing.do_bench``),
TFLOP/s (base plus adapter FLOPs), its time against cuBLAS doing the base GEMM alone
(``F.linear``; ``dy @ W``) and against the cuBLAS composite doing the same work (base GEMM plus
``addmm`` of the adapter columns), and its relative error against an fp32 product of the same
bf16 operands. Also the autotuned launch (no ``config=``) and the cuBLAS baselines. Loops: R
outer (R = 16, the headline's K = 1, first), then config, then shape, so one compile serves both
shapes and the rows a short budget drops are the wider R.

The JSON (``--json PATH``) is rewritten after every row, so a killed run keeps what it measured;
``LITELORA_SWEEP_DEADLINE`` (seconds since the epoch) stops starting configs after it.
``--list`` prints what it would run (no GPU needed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402
from litelora_fast import settings  # noqa: E402
import sweep_configs  # noqa: E402
import timing  # noqa: E402

KERNELS = ("fused_forward", "fused_dx")
DEADLINE_ENV = "LITELORA_SWEEP_DEADLINE"


def plan() -> dict:
    """``{kernel: ([(label, config, variant)], source)}``: the kernel's ``SWEEP_CONFIGS`` in
    ``gpu_plan.SWEEP_VARIANT_ORDER`` (value order), bounded by ``SWEEP_MAX_CONFIGS``."""
    out = {}
    order = gpu_plan.SWEEP_VARIANT_ORDER
    for k in KERNELS:
        configs, source = sweep_configs.sweep_list(k)
        configs = sorted(configs, key=lambda c: order.index(c[2]))   # stable within a variant
        out[k] = (configs[:gpu_plan.SWEEP_MAX_CONFIGS], source)
    return out


def _operands(d_in: int, d_out: int, R: int, n: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = torch.bfloat16

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(bf)

    t = dict(x=randn(n, d_in), w=randn(d_out, d_in, scale=d_in ** -0.5),
             SG=randn(n, R), B=randn(d_out, R, scale=R ** -0.5),
             dy=randn(n, d_out), dS=randn(n, R), A=randn(R, d_in, scale=R ** -0.5))
    return t


def _work(t: dict) -> dict:
    """Per kernel: (its arguments, cuBLAS base alone, cuBLAS composite, fp32 reference, FLOPs)."""
    x, w, SG, B, dy, dS, A = (t[k] for k in ("x", "w", "SG", "B", "dy", "dS", "A"))
    n, d_in, d_out, R = x.shape[0], x.shape[1], w.shape[0], SG.shape[1]
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ref_fwd = x.float() @ w.float().t() + SG.float() @ B.float().t()
    ref_dx = dy.float() @ w.float() + dS.float() @ A.float()
    torch.backends.cuda.matmul.allow_tf32 = prev
    return {
        "fused_forward": ((x, w, None, SG, B), lambda: F.linear(x, w),
                          lambda: torch.addmm(F.linear(x, w), SG, B.t()), ref_fwd,
                          2 * n * d_out * (d_in + R)),
        "fused_dx": ((dy, w, dS, A), lambda: dy @ w, lambda: torch.addmm(dy @ w, dS, A),
                     ref_dx, 2 * n * d_in * (d_out + R)),
    }


def _rel(out, ref) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def run(json_path: str = None) -> dict:
    from litelora_fast import kernels

    deadline = settings.sweep_deadline() or math.inf
    configs = plan()
    import triton
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "n": gpu_plan.SWEEP_N,
              "shapes": [list(s) for s in gpu_plan.SWEEP_SHAPES], "ranks": list(gpu_plan.SWEEP_RANKS),
              "timer": timing.describe("cuda"),
              "sources": {k: configs[k][1] for k in KERNELS},
              "baselines": [], "rows": [], "not_reached": []}

    def save():
        if json_path:
            with open(json_path + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(json_path + ".tmp", json_path)

    autotuned = {"fused_forward": kernels.fused_forward, "fused_dx": kernels.fused_dx}
    for R in gpu_plan.SWEEP_RANKS:
        work = {}
        for d_in, d_out in gpu_plan.SWEEP_SHAPES:
            t = _operands(d_in, d_out, R, gpu_plan.SWEEP_N)
            w = work[(d_in, d_out)] = _work(t)
            for k in KERNELS:   # cuBLAS and the autotuned launch at this shape
                args, base, composite, ref, flops = w[k]
                row = {"kernel": k, "d_in": d_in, "d_out": d_out, "R": R,
                       "ms_cublas_base": timing.gpu_median_ms(base),
                       "ms_cublas_composite": timing.gpu_median_ms(composite)}
                try:
                    row["rel_err_autotuned"] = _rel(autotuned[k](*args), ref)
                    row["ms_autotuned"] = timing.gpu_median_ms(lambda: autotuned[k](*args))
                except Exception as e:
                    row["error_autotuned"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                result["baselines"].append(row)
                print(f"baseline {k} {d_in}x{d_out} R={R}: " + ", ".join(
                    f"{n} {v:.3f}" for n, v in row.items() if n.startswith("ms_")), flush=True)
            save()
        for k in KERNELS:
            for label, config, variant in configs[k][0]:
                for (d_in, d_out), w in work.items():
                    if time.time() > deadline:
                        result["not_reached"].append(f"{k} R={R} {d_in}x{d_out} {label}")
                        continue
                    args, base, composite, ref, flops = w[k]
                    row = {"kernel": k, "config": label, "variant": variant, "d_in": d_in,
                           "d_out": d_out, "R": R}
                    try:
                        y = sweep_configs.launch(k, args, config, variant)
                        row["rel_err"] = _rel(y, ref)
                        ms = timing.gpu_median_ms(
                            lambda: sweep_configs.launch(k, args, config, variant))
                        b = next(x for x in result["baselines"] if (x["kernel"], x["d_in"],
                                 x["d_out"], x["R"]) == (k, d_in, d_out, R))
                        row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12,
                                   pct_of_cublas_base=100 * b["ms_cublas_base"] / ms,
                                   pct_of_cublas_composite=100 * b["ms_cublas_composite"] / ms)
                    except Exception as e:
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    result["rows"].append(row)
                    print(f"{k} {d_in}x{d_out} R={R} {label}: " + (
                        f"{row['ms']:.3f} ms, {row['tflops']:.0f} TFLOP/s, "
                        f"{row['pct_of_cublas_composite']:.0f}% of the cuBLAS composite, "
                        f"err {row['rel_err']:.1e}" if "ms" in row else row["error"]), flush=True)
                    save()
    return result


def summary(result: dict) -> list:
    """One line per kernel, shape and R: the best config against the cuBLAS composite."""
    lines = []
    best = {}
    for r in result["rows"]:
        if "ms" in r:
            key = (r["kernel"], r["d_in"], r["d_out"], r["R"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    for (k, d_in, d_out, R), r in sorted(best.items()):
        lines.append(f"best {k} {d_in}x{d_out} R={R}: {r['config']} {r['ms']:.3f} ms = "
                     f"{r['pct_of_cublas_composite']:.0f}% of the cuBLAS composite")
    if result["not_reached"]:
        lines.append(f"NOT RUN (deadline): {len(result['not_reached'])} config x shape rows")
    lines.append(f"{len(result['rows'])} sweep rows, {len(result['baselines'])} baselines")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here (rewritten after every row)")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    ns = parser.parse_args(argv)
    if ns.list:
        for k, (configs, source) in plan().items():
            print(f"{k}: {len(configs)} configs from {source}, each launched with config=")
        n = sum(len(c) for c, _ in plan().values())
        print(f"gpu_sweep: {n} configs x {len(gpu_plan.SWEEP_SHAPES)} shapes x R "
              f"{gpu_plan.SWEEP_RANKS} at N={gpu_plan.SWEEP_N}")
        return 0
    if not torch.cuda.is_available():
        print("gpu_sweep: no CUDA device, nothing timed")
        return 2
    result = run(ns.json)
    for line in summary(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
