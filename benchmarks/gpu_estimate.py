"""``bash benchmarks/gpu_check.sh --estimate``: what the GPU check will cost, with no GPU.

Prices the lists the GPU scripts run (``gpu_plan``: numerics runs, steady-state runs, the
benchmark grid) against the kernels' own config lists (``litelora_fast.kernels``), at
``COMPILE_S`` per distinct compile and ``TIMED_S`` per timed config (an autotune candidate, an
implementation-choice candidate or a benchmark peer), plus the benchmark's own repetitions priced
by the roofline model and a fixed start-up per Python process. Prints one block per step and
ends with the line ``estimated total: N s``.

A compile is one distinct (kernel, variant, dtype, constexpr flags, Triton's integer
specialisation) times the configs tried: one config with ``LITELORA_AUTOTUNE=0`` (numerics,
steady state), every candidate config with autotuning on (benchmark). Triton's on-disk cache is
shared by the steps of one run, so a key compiled by an earlier step is not counted again.
This is a model of what Triton specialises on (the flags below and the divisibility by 16 of the
sizes, or a size of 1), not a trace: it errs on the side of more compiles.
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402
import harness  # noqa: E402
import timing  # noqa: E402
from litelora_fast.tools import roofline  # noqa: E402
from litelora_fast.tools.bench_cases import MODES, PEERS, applicable, gpu_cases  # noqa: E402

COMPILE_S = 1.5           # one Triton compile (ptxas included) of one config
TIMED_S = 0.15            # one timed config: do_bench's 25 ms warm-up + 100 ms repetitions + setup
PROCESS_START_S = 6.0     # python + torch + triton import + CUDA context, per Python process
SETUP_S = 5.0             # the script's own setup (nvidia-smi, package copy)
FP64_FLOPS = 60e12        # float64 matrix rate for the benchmark's oracle check (H100/H200 class)
CHOICE_CANDIDATES = 2     # the op's measured choice (autotune.CANDIDATES: kernels, composite)
LIMIT_S = 360


def kernel_configs() -> dict:
    """``{(kernel, variant): [triton.Config, ...]}``: every config list the kernels ship."""
    from litelora_fast import kernels
    return kernels.config_lists()


def _pow2(n: int, lo: int = 16, cap: int = 128) -> int:
    p = lo
    while p < n and p < cap:
        p *= 2
    return p


def _ints(*sizes) -> tuple:
    """Triton specialises integer arguments on ``== 1`` and on divisibility by 16."""
    return tuple("1" if s == 1 else ("16" if s % 16 == 0 else "-") for s in sizes)


def launches(case, dtype: str, variant: str, gates_train: bool, strided: bool = False,
             dropout: float = 0.0, tf32: bool = False) -> list:
    """``[(kernel, variant, spec key, autotune key)]`` one forward+backward of the op launches.

    ``case`` is an ``op_cases.Case``-like object: lead, d_in, d_out, ranks, per_row, bias,
    zero_gates, trainable. A spec key starts with the dtype; fp32 also carries TF32 on/off (the
    dots' precision is a constexpr), LoRA dropout its own flag (compiled out at p = 0)."""
    n = 1
    for d in case.lead:
        n *= d
    ranks, zero = list(case.ranks), set(case.zero_gates)
    r_all = sum(ranks)
    r_act = r_all if gates_train else sum(r for k, r in enumerate(ranks) if k not in zero)
    tr = case.trainable
    per_row, bias, drop = bool(case.per_row), bool(case.bias), dropout > 0
    sizes = _ints(n, case.d_in, case.d_out, r_act)
    kind = (dtype, tf32) if dtype == "float32" else (dtype,)
    stride = ("strided",) if strided else ()
    out = []
    if r_act:
        out.append(("shrink", "pointer", kind + (per_row, drop, _pow2(r_act)) + sizes + stride,
                    (n, case.d_in, r_act)))
    out.append(("fused_forward", variant, kind + (bias, _pow2(r_act, cap=64)) + sizes + stride,
                (n, case.d_in, case.d_out, r_act)))
    needs_dx = tr.get("x", False)
    needs_ab = tr.get("lora_A", False) or tr.get("lora_B", False)
    if r_act and (needs_dx or needs_ab or gates_train):
        out.append(("grad_shrink", "pointer", kind + (per_row, gates_train, _pow2(r_act)) + sizes,
                    (n, case.d_out, r_act, gates_train)))
    if needs_dx:
        # under dropout the fused dx runs base-only and the masked adapter term comes after
        dx_r = 0 if drop else r_act
        out.append(("fused_dx", variant, kind + (_pow2(dx_r, cap=64) if dx_r else 0,) + sizes,
                    (n, case.d_in, case.d_out, dx_r)))
        if drop and r_act:
            out.append(("masked_addmm", "pointer", kind + sizes, (n, case.d_in, r_act)))
    if r_act and needs_ab:
        out.append(("lora_weight_grads", "pointer", kind + (drop,) + sizes + stride,
                    (n, case.d_in, case.d_out, r_act)))
    if tr.get("weight", False) or tr.get("bias", False):
        out.append(("matmul_tn", "wide", kind + sizes + stride,   # dW = dy^T x
                    (n, case.d_in, case.d_out)))
    return out


class Pricer:
    """Counts compiles across steps (one shared cache) and timed configs per step."""

    def __init__(self, configs: dict):
        self.configs = configs
        self.compiled = set()
        kernels = {k for k, _ in configs}
        self.kernels = kernels

    def candidates(self, kernel: str, variant: str, dtype: str, autotune: bool) -> list:
        """The configs a launch may compile: the first one untuned; with autotuning the list of
        the forced variant, or under "auto" every descriptor variant's list of that kernel (the
        variants are configs of one launch; "auto" takes them on descriptor-legal operands).
        fp32 has lists of its own (``<variant>/fp32``) for most kernels."""
        def name(v):   # fp32's own list where the kernel has one (masked_addmm has one list)
            fp32 = v + "/fp32"
            return fp32 if dtype == "float32" and (kernel, fp32) in self.configs else v
        if variant == "auto":
            names = [name(v) for v in gpu_plan.TMA_VARIANTS
                     if (kernel, name(v)) in self.configs] or [name("pointer")]
        else:
            names = [name(variant)]
        missing = [n for n in names if (kernel, n) not in self.configs]
        if missing:
            raise KeyError(f"estimate: no config list for kernel {kernel!r} variant(s) {missing} "
                           f"in litelora_fast.kernels.config_lists(); known: "
                           f"{sorted(self.configs)} (update benchmarks/gpu_estimate.py)")
        lists = [(n, c) for n in names for c in self.configs[(kernel, n)]]
        return lists if autotune else lists[:1]

    def price(self, launch_list: list, autotune: bool) -> tuple:
        """``(new compiles, timed configs)`` of a step's launches; ``self.by_kernel`` holds the
        step's new compiles per kernel."""
        new, timed, keys = 0, 0, set()
        self.by_kernel = {}
        for kernel, variant, spec, tune_key in launch_list:
            cands = self.candidates(kernel, variant, spec[0], autotune)
            for v, c in cands:
                key = (kernel, v, spec, str(c))
                if key not in self.compiled:
                    self.compiled.add(key)
                    new += 1
                    self.by_kernel[kernel] = self.by_kernel.get(kernel, 0) + 1
            if autotune and (kernel, variant, tune_key) not in keys:
                keys.add((kernel, variant, tune_key))
                timed += len(cands)
        return new, timed


def _step(name: str, compiles: int, timed: int, extra_s: float, extra_what: str,
          processes: int = 1, by_kernel: dict = None) -> tuple:
    seconds = (compiles * COMPILE_S + timed * TIMED_S + extra_s + processes * PROCESS_START_S)
    lines = [f"[{name}] {compiles} compiles x {COMPILE_S} s + {timed} timed configs x {TIMED_S} s"
             f" + {extra_what} {extra_s:.1f} s + {processes} process start x {PROCESS_START_S} s"
             f" = {seconds:.1f} s (limit {gpu_plan.LIMITS.get(name, '-')} s)"]
    if by_kernel:
        lines.append("  compiles by kernel: " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(by_kernel.items())))
    return seconds, lines


def estimate() -> tuple:
    """``(total seconds, printed lines)``."""
    pricer = Pricer(kernel_configs())
    lines, total = [], SETUP_S
    lines.append(f"[setup] nvidia-smi, versions, package copy: {SETUP_S:.1f} s")

    # numerics: LITELORA_AUTOTUNE=0, every run forward + backward
    runs = gpu_plan.numerics_runs()
    ls = [lk for r in runs for lk in launches(r.case, r.dtype, r.variant, r.gates == "train",
                                              r.case.strided_x, r.dropout, r.tf32)]
    compiles, timed = pricer.price(ls, autotune=False)
    draws = len(runs) * gpu_plan.SEEDS_PER_RUN
    s, out = _step("numerics", compiles, timed, 0.02 * draws, f"{draws} draws x 0.02 s",
                   by_kernel=pricer.by_kernel)
    per_dtype = {d: sum(r.dtype == d for r in runs) for d in gpu_plan.DTYPES}
    out.append(f"  {len(runs)} runs {per_dtype} (pointer path on the GPU shapes, + the "
               f"{len(gpu_plan.EDGE_CASES) + len(gpu_plan.BF16_CASES)} edge cases in {'/'.join(gpu_plan.EDGE_CASE_DTYPES)}; "
               f"{'/'.join(gpu_plan.TMA_VARIANTS)} on {gpu_plan.TMA_CASE} (fp32 with TF32 on); "
               f"LoRA dropout {gpu_plan.DROPOUT:g}; gates train, and frozen where one is 0) x "
               f"{gpu_plan.SEEDS_PER_RUN} seeds")
    total += s
    lines += out

    # steady state: bf16, AUTOTUNE=0, three gate kinds; sync-debug steps and one graph each
    c = gpu_plan.STEADY_CASE
    ls = []
    for kind in gpu_plan.STEADY_GATES:
        zero = (1,) if kind == "frozen-with-a-zero" else ()
        sc = dataclasses.replace(c, bias=True, per_row=kind == "per-row", zero_gates=zero,
                                 trainable=dict(x=False, weight=False, bias=False, lora_A=True,
                                                lora_B=True, gates=kind != "frozen-with-a-zero"))
        ls += launches(sc, "bfloat16", "auto", kind != "frozen-with-a-zero")
    compiles, timed = pricer.price(ls, autotune=False)
    steps = len(gpu_plan.STEADY_GATES) * 2 * (gpu_plan.STEADY_WARMUP_STEPS
                                               + gpu_plan.STEADY_CHECKED_STEPS + 3)
    s, out = _step("steady", compiles, timed, 0.005 * steps, f"{steps} steps x 5 ms",
                   by_kernel=pricer.by_kernel)
    total += s
    lines += out

    # benchmark: the headline grid, autotuning on, every peer timed in every mode
    cases = gpu_cases(gpu_plan.BENCH_GRID)
    ls, choice = [], set()
    for bc in cases:
        oc = gpu_plan.Case(lead=(bc.n,), d_in=bc.d_in, d_out=bc.d_out, ranks=[bc.r] * bc.k,
                           bias=False, zero_gates=tuple(range(1, bc.k, 2))[:bc.zero_gates],
                           trainable=dict(x=True, weight=False, bias=False, lora_A=True,
                                          lora_B=True, gates=bc.train_gates))
        ls += launches(oc, bc.dtype, "auto", bc.train_gates)
        choice.add((bc.n, bc.d_in, bc.d_out, bc.active_rank, bc.train_gates))
    compiles, timed = pricer.price(ls, autotune=True)
    by_kernel = pricer.by_kernel
    # one choice per shape bucket, timing forward + backward of each candidate
    choice_timed = CHOICE_CANDIDATES * len(choice)
    bench_s, n_peer_timings = bench_budget(cases)
    s, out = _step("benchmark", compiles, timed + choice_timed + n_peer_timings, bench_s,
                   "check once per case + pytest-benchmark rounds of ours", by_kernel=by_kernel)
    out.append(f"  {len(cases)} cases ({gpu_plan.BENCH_GRID} grid) x {len(MODES)} modes; timed "
               f"configs: {timed} autotune candidates + {choice_timed} implementation-choice "
               f"candidates + {n_peer_timings} peer timings (do_bench {timing.GPU_WARMUP_MS} + "
               f"{timing.GPU_REP_MS} ms each)")
    total += s
    lines += out

    for name in ("report", "roofline"):
        s, out = _step(name, 0, 0, 2.0 if name == "report" else 0.5, "work")
        total += s
        lines += out
    over = {k: v for k, v in gpu_plan.LIMITS.items() if v <= 0}
    if over:
        raise ValueError(f"non-positive step limits: {over}")
    lines.append(f"sum of step limits: {sum(gpu_plan.LIMITS.values())} s + setup "
                 f"{SETUP_S:.0f} s (the script's hard ceiling)")
    lines.append(f"estimated total: {round(total)} s")
    return total, lines


def bench_budget(cases: list) -> tuple:
    """``(seconds, peer timings)`` of the benchmark's own repetitions, priced by the roofline:
    per case, the float64 oracle at ``FP64_FLOPS`` and the checked peers' and memory passes
    (one fwd+bwd each); per case and mode, pytest-benchmark's rounds of ours. Each peer's
    do_bench in each mode is one timed config (counted apart)."""
    seconds, timings = 0.0, 0
    for c in cases:
        peers = [p for p in PEERS if applicable(c, p)]
        ref = roofline.cost(c, "reference", "fwd_bwd")
        seconds += ref["flops"] / FP64_FLOPS
        seconds += 2 * len(peers) * ref["seconds"]   # check + saved/peak memory, one pass each
        for mode in MODES:
            timings += len(peers)
            seconds += (harness.BENCH_ROUNDS + 1) * roofline.cost(c, "ours", mode)["seconds"]
    return seconds, timings


def main(argv=None) -> int:
    total, lines = estimate()
    print("gpu_check.sh estimate (no GPU): distinct compiles and timed configs per step")
    for line in lines:
        print(line)
    return 0 if total <= LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
