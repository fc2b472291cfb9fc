"""GPU numerics of the public op: ``gated_lora_linear`` through the Triton kernels on CUDA against
the float64 reference, in bf16, fp16 and fp32, output and every gradient.

The runs are ``gpu_plan.numerics_runs()``, coverage first (every kernel x variant x dtype kind
once on one shape before any second shape), each output and dx also checked row by row; the
pointer path on the named edge cases of
``tests/op_cases.py`` (one row, K = 1, ragged ranks, rank-0 adapters, zero gates, per-row gates,
3-D and strided inputs) and GPU-sized shapes; each descriptor variant of the fused GEMMs
(``LITELORA_KERNEL_VARIANT`` = tma, tma_persistent, tma_ws) on a descriptor-legal shape; LoRA
dropout (the reference gets the mask the kernels drew, ``lora_dropout.recorded_masks``); gates
trainable, and frozen where one is 0 (the zero-gate skipping path), on fresh seeds.

Bounds: ``tests/numerics.py``'s ``TOL`` (``TOL_TF32`` for the fp32 runs with TF32 on: the
descriptor kernels take fp32 only then); the gate
gradient is measured against ``op_cases.gate_grad_scale`` (the sum of |terms|), as the unit tests
do, since it is an inner product that can cancel far below its terms.

Then the kernels' own GPU checks (``gpu_kernel_checks.py``): the 8 ``test_bf16_on_gpu`` tests of
``tests/`` (split-N reduction included), called as functions, and a non-first launch config of
each fused GEMM.

Run with ``LITELORA_AUTOTUNE=0`` (``gpu_check.sh`` sets it): one config per kernel, no tuning.
Prints one line per draw and a summary, and (``--json PATH``) rewrites the JSON after every
draw, so a killed step keeps what it measured; exits 1 on any error over its bound, or when a
kernel never launched in a dtype. ``--list`` prints the runs and exits (no GPU needed).

    python benchmarks/gpu/gpu_numerics.py --json numerics.json   # GPU
    python benchmarks/gpu/gpu_numerics.py --list                 # the plan, no GPU
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

from litelora_fast import settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402  (puts tests/ on sys.path for op_cases and numerics)
from numerics import TOL, TOL_FP32_LONG, TOL_TF32, rel_err, worst_row_rel_err  # noqa: E402
from op_cases import call, gate_grad_scale, leaves, make_inputs, oracle  # noqa: E402

VARIANT_ENV = "LITELORA_KERNEL_VARIANT"
# Seconds since the epoch by which the step must be done (gpu_check.sh sets it a few seconds
# before the step's limit): an item whose estimated cost (gpu_estimate) would run past it is
# skipped and listed, so the summary is always printed.
END_ENV = "LITELORA_NUMERICS_END"


def item_costs() -> list:
    """Estimated seconds of each item of ``gpu_plan.numerics_plan()`` (``gpu_estimate``'s
    model, compiles shared along the list); zeros if the estimate cannot be made."""
    try:
        import gpu_estimate
        return gpu_estimate.numerics_costs()
    except Exception as e:   # never lose the numerics over the estimate
        print(f"(no cost estimate: {type(e).__name__}: {e}; every item is tried)")
        return [0.0] * len(gpu_plan.numerics_plan())


def write_json(path, result: dict) -> None:
    """Rewrite ``path`` whole (a kill mid-write leaves the previous version)."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)


FUSED = ("fused_forward", "fused_dx")   # the kernels with variants


def bound(run: gpu_plan.Run) -> float:
    if run.dtype == "float32":
        return TOL_TF32 if run.tf32 else TOL_FP32_LONG
    return TOL[getattr(torch, run.dtype)]


def check(run: gpu_plan.Run, seed: int, device: str = "cuda") -> dict:
    """``{output name: relative error}`` of one draw through the Triton kernels (gates against
    ``gate_grad_scale``). ``device="cpu"`` runs it under the interpreter (the unit test of this
    script)."""
    import litelora_fast as llf

    from litelora_fast.op import lora_dropout

    dtype, case = getattr(torch, run.dtype), run.case
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = run.tf32
    t = make_inputs(case, dtype=dtype, device=device)
    with lora_dropout.recorded_masks() as masks:
        y = call(lambda *a: llf.gated_lora_linear(*a, backend="triton", dropout=run.dropout),
                 case, t)
    dy = torch.randn_like(y)
    ref_kwargs = {}
    if run.dropout:   # the reference drops the same elements
        ref_kwargs = dict(dropout=run.dropout, dropout_mask=masks[0].reshape(t["x"].shape))
    y_ref, g_ref = oracle(case, t, dy, **ref_kwargs)
    # each row too (``worst_row_rel_err``): one wrong row of 2100 would hide in the whole
    errs = {"y": rel_err(y, y_ref), "y/rows": worst_row_rel_err(y, y_ref)}
    if leaves(t):
        y.backward(dy)
        for arg, leaf in leaves(t).items():
            if leaf.grad is None:
                errs[f"d{arg}"] = float("inf")
            elif arg == "gates":
                scale = gate_grad_scale(t["x"], t["lora_A"], t["lora_B"], dy, case.rank_offsets,
                                        case.scaling, case.per_row)
                errs["dgates"] = rel_err(leaf.grad, g_ref[arg], scale)
            else:
                errs[f"d{arg}"] = rel_err(leaf.grad, g_ref[arg])
                if arg == "x":
                    errs["dx/rows"] = worst_row_rel_err(leaf.grad, g_ref[arg])
    return errs


def kernel_checks(name: str, seed: int) -> list:
    """One of the kernels' own GPU checks (``gpu_kernel_checks``); ``[(name, seed, message)]``
    of its failures."""
    import gpu_kernel_checks
    failed = []
    for label, ok, msg in gpu_kernel_checks.run(name, seed, TOL[torch.bfloat16]):
        print(f"{'ok  ' if ok else 'FAIL' if ok is False else 'n/a '} {label:70s} {msg}",
              flush=True)
        if ok is False:
            failed.append((label, seed, msg))
    return failed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = gpu_plan.numerics_plan()
    n_runs = sum(not isinstance(i, str) for i in plan)
    json_path = argv[argv.index("--json") + 1] if "--json" in argv else None
    if "--list" in argv:
        for item in plan:
            label = getattr(item, "label", f"check: {item}")
            print(f"[tier {gpu_plan.item_tier(item):g}] {label}")
        print(f"{n_runs} runs x {gpu_plan.SEEDS_PER_RUN} seeds + "
              f"{len(gpu_plan.CHECK_TIERS)} kernel checks")
        return 0
    if not torch.cuda.is_available():
        print("gpu_numerics: no CUDA device, nothing checked")
        return 2
    from litelora_fast.kernels import LAUNCH_COUNTS

    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"LITELORA_AUTOTUNE {'on' if settings.autotune() else 'off'}, "
          f"TF32 per run (fp32 descriptor runs with it on)", flush=True)
    start, failures, draws = time.time(), [], 0
    end = settings.numerics_end() or math.inf
    costs = item_costs()
    launched = {}   # (dtype, variant) -> Counter of launches
    base_seed = torch.seed() % 2**31
    done, not_run = [], []
    # rewritten after every item, so a killed step still returns what it measured
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "items": [], "not_run": not_run, "failures": failures}
    for i, (item, cost) in enumerate(zip(plan, costs)):
        name = getattr(item, "label", item)
        if time.time() + cost > end:   # would not finish in the step's time: the next may
            not_run.append(f"{name} (~{cost:.0f} s)")
            continue
        if isinstance(item, str):
            failed = kernel_checks(item, base_seed)
            failures += failed
            result["items"].append({"check": item, "failed": len(failed)})
            write_json(json_path, result)
            continue
        run = item
        done.append(run)
        os.environ[VARIANT_ENV] = run.variant
        limit = bound(run)
        before = dict(LAUNCH_COUNTS)
        for j in range(gpu_plan.SEEDS_PER_RUN):
            seed = base_seed + 1000 * i + j
            draws += 1
            errs = {}
            try:
                errs = check(run, seed)
                worst = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
                ok = errs[worst] <= limit   # NaN fails
                msg = f"worst {worst} {errs[worst]:.2e}"
            except Exception as e:   # a crash is a failure of this draw, not of the run
                ok, msg = False, f"raised {type(e).__name__}: {e}"
            print(f"{'ok  ' if ok else 'FAIL'} {run.label:70s} seed {seed:<11d} {msg} "
                  f"(bound {limit:g})", flush=True)
            if not ok:
                failures.append((run.label, seed, msg))
            result["items"].append({"run": run.label, "tier": run.tier, "seed": seed,
                                    "ok": ok, "bound": limit, "errors": errs, "message": msg})
            write_json(json_path, result)
        counts = launched.setdefault((run.dtype, run.variant), {})
        for k, v in LAUNCH_COUNTS.items():
            counts[k] = counts.get(k, 0) + v - before.get(k, 0)
    os.environ.pop(VARIANT_ENV, None)
    # Every kernel that launched anywhere must have launched in every dtype on the pointer path,
    # and each fused GEMM as every forced variant (the launchers count "<kernel>/<variant>"),
    # among the runs that ran.
    kernels = {k for c in launched.values() for k, v in c.items() if v and "/" not in k}
    ran_dtypes = {r.dtype for r in done if r.variant == POINTER and not r.dropout}
    missing = [f"{dtype}/{POINTER}: {k}" for dtype in gpu_plan.DTYPES if dtype in ran_dtypes
               for k in sorted(kernels - {"masked_addmm"})
               if not launched.get((dtype, POINTER), {}).get(k)]
    expected = {(r.dtype, r.variant, k) for r in done for k in FUSED
                if k == "fused_forward" or r.case.trainable.get("x")}
    missing += [f"{dtype}/{v}: {k}/{v}" for dtype, v, k in sorted(expected)
                if not launched.get((dtype, v), {}).get(f"{k}/{v}")]
    print(f"\nkernel launches per dtype/variant: {launched}")
    if not kernels:
        print("FAIL: no Triton kernel launched (the op did not run Triton on CUDA?)")
    for m in missing:
        print(f"FAIL: never launched: {m}")
    if not_run:
        print(f"NOT RUN (estimated not to fit the step's time): {len(not_run)} items: "
              + ", ".join(not_run))
    result.update(launched={f"{d}/{v}": c for (d, v), c in launched.items()},
                  never_launched=missing, seconds=time.time() - start)
    write_json(json_path, result)
    print(f"{len(failures)} failed draws or checks of {draws} draws; {len(done)} of {n_runs} "
          f"runs; {time.time() - start:.1f} s")
    return 1 if failures or missing or not kernels else 0


POINTER = gpu_plan.POINTER

if __name__ == "__main__":
    sys.exit(main())
