"""``bash benchmarks/gpu_check.sh --estimate``: what the two GPU calls will cost, with no GPU.

Prices the lists the GPU scripts run (``gpu_plan``: numerics runs and the kernels' own checks,
steady-state runs, the benchmark grid in its run order, the sweep, the block step) against the
kernels' own config lists (``litelora_fast.kernels``): ``compile_s`` per distinct compile,
``TIMED_S`` per timed config (an autotune candidate, an implementation-choice candidate, a peer's
or a sweep row's do_bench), the benchmark's own repetitions priced by the roofline model, and a
start-up per Python process and for the script's setup. Prints one block per step, the runs or
cases each time-boxed step is expected not to reach (value order: they are the last ones), and
ends with one line per call: ``estimated total (check): N s of 300 s`` and
``estimated total (--tune): M s of 240 s``. A step counts at most its limit (the script stops
it there, and each step stops starting work before its limit).

A compile is one distinct (kernel, variant, dtype, constexpr flags, BLOCK_R / BLOCK_P bucket,
Triton's integer specialisation) times the configs tried: one config with
``LITELORA_AUTOTUNE=0`` (numerics, steady state), every candidate config with autotuning on
(benchmark, block step). Triton's on-disk cache is shared by the steps of one machine, so a key
compiled by an earlier step (or by the first call, for ``--tune``) is not counted again. A
model of what Triton specialises on, not a trace: it errs on the side of more compiles.

``compile_s``: CPU seconds per compile measured on this project's 2-core machine (2026-12-02: all
106 shipped specs compiled for sm_90 with an empty Triton cache, ptxas included, CPU time of the
process and its children: median bf16 1.8 s (max 4.3), fp16 1.5, TF32 fp32 1.6, exact fp32 2.6,
the widest exact-fp32 fused forward 8.0), plus 25-50% for the JIT's launcher and cubin load; the
GPU machine's cores are not expected to be slower. Not a GPU measurement.
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402
import timing  # noqa: E402
from litelora_fast.tools import roofline  # noqa: E402
from litelora_fast.tools.bench_cases import MODES, PEERS, applicable, gpu_cases  # noqa: E402

COMPILE_S = {"bfloat16": 2.5, "float16": 2.0, "float32": 2.2, "float32-ieee": 4.0}
WIDE_IEEE_S = 10.0        # exact fp32 fused GEMMs at the widest adapter tile (8.0 s measured)
# one config, no list: one compile per spec (the split-N partial sum; the keep-mask kernel that
# lora_dropout.recorded_masks runs when a check records the mask a dropout call drew)
FIXED_KERNELS = {"matmul_tn_sum_partials", "dropout_mask"}
TIMED_S = 0.15            # one autotune candidate: Triton's do_bench, 25 ms warm-up + 100 ms + setup
PEER_TIMED_S = (timing.GPU_WARMUP_MS + timing.GPU_REP_MS) / 1e3 + 0.02   # a peer's do_bench
PROCESS_START_S = 6.0     # python + torch + triton import + CUDA context, per Python process
SETUP_S = 15.0            # the script's own setup: package copy, nvidia-smi, the probe (gpu_setup)
FP64_FLOPS = 60e12        # float64 matrix rate for the benchmark's oracle check (H100/H200 class)
BLOCK_BUILD_S = 8.0       # one Llama-like block built, moved to the GPU, and its optimizer
BLOCK_STEP_S = 0.08       # one training step of the block at 8192 tokens (~11 TFLOP + attention)


def choice_candidates() -> int:
    """How many implementations the op times per new bucket: ``autotune.CANDIDATES`` (the
    kernels, the hybrid, the cuBLAS composite)."""
    from litelora_fast.op import autotune
    return len(autotune.CANDIDATES)


def bucket_caps() -> dict:
    """The largest BLOCK_R / BLOCK_N (BLOCK_P) bucket each launcher picks (``tuning.block_r``
    caps, read from the kernel files), by kernel; fp32 shrink has its own."""
    from litelora_fast.kernels import dropout, fused_xw_sgb, shrink_dyb, shrink_xa, weight_grad
    return {"shrink": shrink_xa.MAX_BLOCK_R["16-bit"], "shrink/fp32": shrink_xa.MAX_BLOCK_R["fp32"],
            "grad_shrink": shrink_dyb.MAX_BLOCK_R, "fused_forward": fused_xw_sgb.WS_MAX_BLOCK_R,
            "fused_dx": fused_xw_sgb.WS_MAX_BLOCK_R, "masked_addmm": dropout.MAX_BLOCK_R,
            "lora_weight_grads": weight_grad.NARROW_MAX_P,
            "lora_weight_grads/dropout": weight_grad.DROPOUT_MAX_N}


def bucketed_variants() -> set:
    """``{(kernel, variant)}`` whose kernel takes a bucket constexpr (``compile_report.specs``
    lists its buckets): only their compiles multiply by the bucket; the others (the fused GEMMs'
    pointer and TMA kernels loop over R_act at run time) compile once across widths."""
    from litelora_fast.kernels import compile_report
    return {(s.name, s.variant) for s in compile_report.specs("buckets") if s.bucket}


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


def compile_s(spec: tuple, kernel: str = "") -> float:
    """Seconds of one compile of a launch whose spec key starts with the dtype (fp32: then the
    TF32 flag)."""
    dtype = spec[0]
    if dtype == "float32" and len(spec) > 1 and spec[1] is False:
        wide = kernel in ("fused_forward", "fused_dx") and ("BUCKET", 64) in spec
        return WIDE_IEEE_S if wide else COMPILE_S["float32-ieee"]
    return COMPILE_S[dtype]


def launches(case, dtype: str, variant: str, gates_train: bool, strided: bool = False,
             dropout: float = 0.0, tf32: bool = False) -> list:
    """``[(kernel, variant, spec key, autotune key)]`` one forward+backward of the op launches.

    ``case`` is an ``op_cases.Case``-like object: lead, d_in, d_out, ranks, per_row, bias,
    zero_gates, trainable. A spec key starts with the dtype; fp32 also carries TF32 on/off (the
    dots' precision is a constexpr), LoRA dropout its own flag (compiled out at p = 0). The
    adapter-width buckets are the launchers' BLOCK_R (shrink, grad-shrink, fused GEMMs) and
    BLOCK_P (the weight-gradient GEMMs); a split-N weight gradient adds its partial-sum kernel."""
    n = 1
    for d in case.lead:
        n *= d
    ranks, zero = list(case.ranks), set(case.zero_gates)
    r_all = sum(ranks)
    r_act = r_all if gates_train else sum(r for k, r in enumerate(ranks) if k not in zero)
    tr = case.trainable
    per_row, bias, drop = bool(case.per_row), bool(case.bias), dropout > 0
    p_drop = round(float(dropout), 6)   # P_DROP is a constexpr: each p compiles its own
    sizes = _ints(n, case.d_in, case.d_out, r_act)
    caps = bucket_caps()

    def width(kernel, r, cap_key=None):   # the launcher's bucket, tagged (see Pricer.price)
        return ("BUCKET", _pow2(r, cap=caps[cap_key or kernel]))
    kind = (dtype, tf32) if dtype == "float32" else (dtype,)
    stride = ("strided",) if strided else ()
    out = []
    if r_act:
        out.append(("shrink", "pointer", kind + (per_row, p_drop, width("shrink", r_act, "shrink/fp32" if dtype == "float32"
                                              else None)) + sizes + stride,
                    (n, case.d_in, r_act)))
    out.append(("fused_forward", variant, kind + (bias, width("fused_forward", r_act)) + sizes + stride,
                (n, case.d_in, case.d_out, r_act)))
    needs_dx = tr.get("x", False)
    needs_ab = tr.get("lora_A", False) or tr.get("lora_B", False)
    if r_act and (needs_dx or needs_ab or gates_train):
        out.append(("grad_shrink", "pointer", kind + (per_row, gates_train, width("grad_shrink", r_act)) + sizes,
                    (n, case.d_out, r_act, gates_train)))
    if needs_dx:
        # under dropout the fused dx runs base-only and the masked adapter term comes after
        dx_r = 0 if drop else r_act
        out.append(("fused_dx", variant, kind + (width("fused_dx", dx_r) if dx_r else 0,) + sizes,
                    (n, case.d_in, case.d_out, dx_r)))
        if drop and r_act:
            out.append(("masked_addmm", "pointer", kind + (p_drop, width("masked_addmm", r_act))
                        + sizes,
                        (n, case.d_in, r_act)))
    if drop and r_act:   # the checks record the call's keep-mask (lora_dropout.keep_mask)
        out.append(("dropout_mask", "fixed", ("bfloat16", "mask", p_drop) + _ints(n, case.d_in),
                    None))   # dtype-free: priced as a bf16 compile
    if r_act and needs_ab:
        out.append(("lora_weight_grads", "pointer",
                    kind + (p_drop, width("lora_weight_grads", r_act,
                                        "lora_weight_grads/dropout" if drop else None))
                    + sizes + stride,
                    (n, case.d_in, case.d_out, r_act)))
        if n >= 512:   # split-N: the fixed-order sum of the partials (weight_grad.split_count)
            out.append(("matmul_tn_sum_partials", "fixed", kind, None))
    if tr.get("weight", False) or tr.get("bias", False):
        out.append(("matmul_tn", "wide", kind + sizes + stride,   # dW = dy^T x
                    (n, case.d_in, case.d_out)))
    return out


class Pricer:
    """Counts compiles across steps (one shared cache) and timed configs per step."""

    def __init__(self, configs: dict, warm: bool = False, limits: dict = None):
        self.configs = configs
        self.limits = dict(gpu_plan.LIMITS if limits is None else limits)   # this call's steps
        self.warm = warm          # Triton's cache already holds every compile: they cost 0
        self.compiled = set()
        self.kernels = {k for k, _ in configs}
        self.by_kernel = {}
        self.bucketed = bucketed_variants()

    def snapshot(self) -> tuple:
        """What ``restore`` takes back to: the compiled keys and the per-kernel counts."""
        return set(self.compiled), dict(self.by_kernel)

    def restore(self, snap: tuple) -> None:
        self.compiled, self.by_kernel = set(snap[0]), dict(snap[1])

    def candidates(self, kernel: str, variant: str, dtype: str, autotune: bool) -> list:
        """The configs a launch may compile: the first one untuned; with autotuning the list of
        the forced variant, or under "auto" every descriptor variant's list of that kernel (the
        variants are configs of one launch; "auto" takes them on descriptor-legal operands).
        fp32 has lists of its own (``<variant>/fp32``) for most kernels."""
        if kernel in FIXED_KERNELS:
            return [("fixed", "fixed")]

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
                           f"{sorted(self.configs)} (update benchmarks/gpu/gpu_estimate.py)")
        lists = [(n, c) for n in names for c in self.configs[(kernel, n)]]
        return lists if autotune else lists[:1]

    def price(self, launch_list: list, autotune: bool, tuned: set = None) -> tuple:
        """``(new compiles, their seconds, timed configs)`` of a list of launches; ``tuned``
        (kept by the caller across calls of one process) holds the autotune keys already timed;
        ``self.by_kernel`` accumulates the new compiles per kernel."""
        new, seconds, timed = 0, 0.0, 0
        tuned = set() if tuned is None else tuned
        for kernel, variant, spec, tune_key in launch_list:
            cands = self.candidates(kernel, variant, spec[0], autotune)
            for v, c in cands:
                # a bucket tag counts only for a kernel that takes the bucket as a constexpr
                bucketed = (kernel, v.split("/")[0]) in self.bucketed
                key = (kernel, v, tuple(x for x in spec if bucketed or not (
                    isinstance(x, tuple) and x[:1] == ("BUCKET",))), str(c))
                if key not in self.compiled:
                    self.compiled.add(key)
                    new += 1
                    seconds += 0.0 if self.warm else compile_s(spec, kernel)
                    self.by_kernel[kernel] = self.by_kernel.get(kernel, 0) + 1
            if autotune and tune_key is not None and (kernel, variant, tune_key) not in tuned:
                tuned.add((kernel, variant, tune_key))
                timed += len(cands)
        return new, seconds, timed


@dataclasses.dataclass
class Step:
    """One step's price: its items in run order, each ``(label, seconds)``, and fixed costs."""

    name: str
    limit: float
    fixed_s: float = 0.0
    items: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    compiles: int = 0
    timed: int = 0
    margin_s: float = 0.0      # the step stops starting items this long before its limit

    @property
    def seconds(self) -> float:
        return self.fixed_s + sum(s for _, s in self.items)

    def add(self, label: str, seconds: float, pricer: "Pricer" = None, snap: tuple = None,
            compiles: int = 0) -> None:
        """Append an item priced from ``snap`` on; one that will not fit (``dropped``) is not
        run, so its compiles are not in the cache for the later items and steps."""
        fits = label not in self.dropped_after(label, seconds)
        if not fits and pricer is not None:
            pricer.restore(snap)
        self.compiles += compiles if fits else 0
        self.items.append((label, seconds))

    def dropped_after(self, label: str, seconds: float) -> list:
        return Step(self.name, self.limit, self.fixed_s, self.items + [(label, seconds)],
                    margin_s=self.margin_s).dropped()

    def dropped(self) -> list:
        """Items expected to be skipped: as the live scripts do, an item runs only if its
        estimated cost still fits before the step's end (limit - margin)."""
        t, out = self.fixed_s, []
        for label, s in self.items:
            if t + s > self.limit - self.margin_s:
                out.append(label)
            else:
                t += s
        return out

    @property
    def charged(self) -> float:
        """What the call pays: the items that fit, at most the step's limit."""
        drop = set(self.dropped())
        return min(self.limit, self.fixed_s + sum(s for n, s in self.items if n not in drop))

    def lines(self) -> list:
        head = (f"[{self.name}] {self.seconds:.1f} s estimated, {self.charged:.1f} s charged "
                f"(limit {self.limit:.0f} s): {self.compiles} compiles, {self.timed} timed "
                f"configs, {len(self.items)} items, {self.fixed_s:.1f} s fixed")
        out = [head] + [f"  {n}" for n in self.notes]
        drop = self.dropped()
        if drop:
            out.append(f"  expected NOT reached ({len(drop)}, last in value order): "
                       + ", ".join(drop))
        return out


def _numerics(pricer: Pricer) -> Step:
    st = Step("numerics", pricer.limits["numerics"], PROCESS_START_S,
              margin_s=gpu_plan.DEADLINE_MARGIN_S["numerics"])
    items = gpu_plan.numerics_plan()
    runs = [r for r in items if not isinstance(r, str)]
    for item in items:
        snap = pricer.snapshot()
        if item == "kernel_tests":
            new, secs = _kernel_tests(pricer)
            st.add("kernel tests (8 bf16 tests of tests/)", secs, pricer, snap, new)
        elif item == "non_first_configs":
            # fused_forward and fused_dx, each with its second config
            st.add("non-first configs", (0 if pricer.warm else 2 * COMPILE_S["bfloat16"]) + 0.2,
                   compiles=2)
        else:
            r = item
            ls = launches(r.case, r.dtype, r.variant, r.gates == "train", r.case.strided_x,
                          r.dropout, r.tf32)
            new, secs, _ = pricer.price(ls, autotune=False)
            st.add(r.label, secs + 0.03 * gpu_plan.SEEDS_PER_RUN, pricer, snap, new)
    per_dtype = {d: sum(r.dtype == d for r in runs) for d in gpu_plan.DTYPES}
    st.notes.append(f"{len(runs)} runs {per_dtype} x {gpu_plan.SEEDS_PER_RUN} seeds and the "
                    f"kernel checks {sorted(gpu_plan.CHECK_TIERS)}, in value order")
    st.notes.append("compiles by kernel: " + ", ".join(
        f"{k} {v}" for k, v in sorted(pricer.by_kernel.items())))
    dropped = set(st.dropped())
    reached = [label for label, _ in st.items if label not in dropped]
    st.notes.append(f"reached ({len(reached)} of {len(st.items)}, in run order): "
                    + ", ".join(reached))
    st.notes.append("coverage (dtype kind x variant, dropout; tier 1) reached: "
                    + ("all " + str(len(coverage(items, dropped))) if not missing_coverage(
                        items, dropped) else "NOT " + ", ".join(missing_coverage(items, dropped))))
    return st


def _coverage_label(key: tuple) -> str:
    dtype, tf32, variant, dropout = key
    kind = dtype + ("/tf32" if tf32 else "/exact" if dtype == "float32" else "")
    return f"{kind}/{variant}" + ("/dropout" if dropout else "")


def coverage(items: list, dropped: set = frozenset()) -> list:
    """The kernel x variant x dtype kinds (and dropout per dtype kind) the reached runs cover:
    ``gpu_plan.coverage_key`` labels, in run order."""
    keys = [gpu_plan.coverage_key(r) for r in items
            if not isinstance(r, str) and r.label not in dropped]
    return [_coverage_label(k) for k in dict.fromkeys(keys)]


def missing_coverage(items: list, dropped: set) -> list:
    """The coverage labels of the plan that the reached runs miss."""
    reached = set(coverage(items, dropped))
    return [c for c in coverage(items) if c not in reached]


def _kernel_tests(pricer: Pricer) -> tuple:
    """The 8 bf16 GPU tests of tests/ (gpu_kernel_checks.kernel_tests): shrink and fused forward
    at (300, 257 or 264, 190 or 200); grad-shrink, fused dx, matmul_tn and lora_weight_grads
    with split_n = 3 at N = 1000; per-row gates, R = 21."""
    from types import SimpleNamespace as NS
    secs, compiles = 0.0, 0
    for variant in ("pointer",) + gpu_plan.TMA_VARIANTS:
        d_in, d_out = (257, 190) if variant == "pointer" else (264, 200)
        fwd = NS(lead=(300,), d_in=d_in, d_out=d_out, ranks=[16, 5], zero_gates=(), per_row=True,
                 bias=False, trainable=dict(x=False, lora_A=False, lora_B=False))
        bwd = NS(lead=(1000,), d_in=d_in, d_out=d_out, ranks=[16, 5], zero_gates=(),
                 per_row=True, bias=False,
                 trainable=dict(x=True, lora_A=True, lora_B=True, weight=True))
        ls = launches(fwd, "bfloat16", variant, False)[:2] + launches(
            bwd, "bfloat16", variant, True)[2:] + [("matmul_tn_sum_partials", "fixed",
                                                    ("bfloat16",), None)]
        new, s, _ = pricer.price(ls, autotune=False)
        compiles += new
        secs += s + 0.05
    return compiles, secs


def _steady(pricer: Pricer) -> Step:
    st = Step("steady", pricer.limits["steady"], PROCESS_START_S)
    c = gpu_plan.STEADY_CASE
    for kind in gpu_plan.STEADY_GATES:
        zero = (1,) if kind == "frozen-with-a-zero" else ()
        sc = dataclasses.replace(c, bias=True, per_row=kind == "per-row", zero_gates=zero,
                                 trainable=dict(x=False, weight=False, bias=False, lora_A=True,
                                                lora_B=True, gates=kind != "frozen-with-a-zero"))
        new, secs, _ = pricer.price(launches(sc, "bfloat16", "auto",
                                             kind != "frozen-with-a-zero"), autotune=False)
        st.compiles += new
        steps = 3 * (gpu_plan.STEADY_WARMUP_STEPS + gpu_plan.STEADY_CHECKED_STEPS) + 3
        st.items.append((kind, secs + 0.005 * steps))
    st.notes.append(f"{len(gpu_plan.STEADY_GATES)} gate kinds x (sync-debug, cuda-graph, "
                    f"(b) sync)")
    return st


def _bench_case_launches(bc) -> list:
    oc = gpu_plan.Case(lead=(bc.n,), d_in=bc.d_in, d_out=bc.d_out, ranks=[bc.r] * bc.k,
                       bias=False, zero_gates=tuple(range(1, bc.k, 2))[:bc.zero_gates],
                       trainable=dict(x=True, weight=False, bias=False, lora_A=True,
                                      lora_B=True, gates=bc.train_gates))
    ls = launches(oc, bc.dtype, "auto", bc.train_gates, dropout=bc.dropout)
    # tuning_record.base_gemm launches the fused GEMMs at the case's width: the same specs as
    # the op's kernels candidate (dx with the adapter columns even under dropout)
    if bc.dropout:
        ls += [lk for lk in launches(oc, bc.dtype, "auto", bc.train_gates) if lk[0] == "fused_dx"]
    return ls


def _benchmark(pricer: Pricer) -> Step:
    st = Step("benchmark", pricer.limits["benchmark"], PROCESS_START_S,
              margin_s=gpu_plan.BENCH_MARGIN_S)
    tuned, choices = set(), set()
    for bc in gpu_cases(gpu_plan.BENCH_GRID):
        snap = pricer.snapshot()
        new, secs, timed = pricer.price(_bench_case_launches(bc), autotune=True, tuned=tuned)
        bucket = (bc.n, bc.d_in, bc.d_out, bc.active_rank, bc.train_gates, bc.dropout)
        choice = choice_candidates() if bucket not in choices else 0
        choices.add(bucket)
        peers = [p for p in PEERS if applicable(bc, p)] + ["hybrid"]
        ref = roofline.cost(bc, "reference", "fwd_bwd")
        work = ref["flops"] / FP64_FLOPS + 2 * len(peers) * ref["seconds"]
        work += sum((timing.BENCH_ROUNDS + 1) * roofline.cost(bc, "ours", m)["seconds"]
                    for m in MODES)
        n_peer = len(peers) * len(MODES) + 6   # + tuning_record.base_gemm: 2 kernels x 3
        st.timed += timed + choice + n_peer
        st.add(bc.id, secs + (timed + choice) * TIMED_S + n_peer * PEER_TIMED_S + work, pricer,
               snap, new)
    st.notes.append(f"{len(st.items)} cases ({gpu_plan.BENCH_GRID} grid, run order) x "
                    f"{len(MODES)} modes; peers {', '.join(PEERS)}, hybrid; do_bench "
                    f"{timing.GPU_WARMUP_MS} + {timing.GPU_REP_MS} ms per timing")
    return st


def _sweep(pricer: Pricer) -> Step:
    import gpu_sweep
    st = Step("sweep", pricer.limits["sweep"], PROCESS_START_S,
              margin_s=gpu_plan.DEADLINE_MARGIN_S["sweep"])
    plan = gpu_sweep.plan()
    shapes, ranks = gpu_plan.SWEEP_SHAPES, gpu_plan.SWEEP_RANKS
    for R in ranks:
        # baselines: cuBLAS base and composite, the autotuned launch (compiled by the check
        # call's benchmark at R = 16 and 64 on the same machine)
        st.items.append((f"baselines R={R}", len(shapes) * 2 * (3 * PEER_TIMED_S + 0.05)))
        st.timed += len(shapes) * 2 * 3
        for k, (configs, _) in plan.items():
            for label, _, variant in configs:
                # one compile per config, and per BLOCK_R bucket where the variant takes one
                # (tma_ws); R_act = 16 and 64 share Triton's integer specialisation
                width = _pow2(R, cap=bucket_caps()[k]) if (k, variant) in pricer.bucketed else 0
                key = ("sweep", k, label, width)
                snap = pricer.snapshot()
                new = key not in pricer.compiled
                pricer.compiled.add(key)
                st.timed += len(shapes)
                st.add(f"{k} R={R} {label}",
                       (COMPILE_S["bfloat16"] if new and not pricer.warm else 0)
                       + len(shapes) * (PEER_TIMED_S + 0.05), pricer, snap, int(new))
    st.notes.append(", ".join(f"{k}: {len(c)} configs from {src}" for k, (c, src) in plan.items())
                    + f"; shapes {shapes}; R {ranks}")
    return st


def _block(pricer: Pricer) -> Step:
    from types import SimpleNamespace as NS
    b = gpu_plan.BLOCK
    st = Step("block", pricer.limits["block"], PROCESS_START_S,
              margin_s=gpu_plan.DEADLINE_MARGIN_S["block"])
    h, i, kv = b["hidden"], b["intermediate"], b["hidden"] * b["kv_heads"] // b["heads"]
    n = b["batch"] * b["seq"]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
    tuned = set()
    secs, new, timed = 0.0, 0, 0
    for name in gpu_plan.BLOCK_TARGETS:
        d_in, d_out = shapes[name]
        c = NS(lead=(n,), d_in=d_in, d_out=d_out, ranks=[b["rank"]], zero_gates=(),
               per_row=False, bias=False, trainable=dict(x=True, lora_A=True, lora_B=True))
        nw, s, t = pricer.price(launches(c, "bfloat16", "auto", False, dropout=b["dropout"]),
                                autotune=True, tuned=tuned)
        secs, new, timed = secs + s, new + nw, timed + t
    buckets = len(set(shapes.values()))
    timed += choice_candidates() * buckets
    st.compiles, st.timed = new, timed
    steps = b["warmup_steps"] + b["timed_steps"]
    st.items.append(("ours (inject)", BLOCK_BUILD_S + secs + timed * TIMED_S + steps * BLOCK_STEP_S))
    st.items.append(("peft", BLOCK_BUILD_S + steps * BLOCK_STEP_S * 1.5))
    st.notes.append(f"{len(gpu_plan.BLOCK_TARGETS)} LoRA layers in {buckets} shape buckets, "
                    f"{n} tokens, {steps} steps per implementation")
    return st


def _priced_until(name, warm: bool = None) -> tuple:
    """``(pricer, steps)``: the call's steps priced in run order up to and including ``name``
    (``None``: all), a step's compiles cached for the later ones. Cold: a fresh machine, the
    steps of ``gpu_plan.LIMITS``. Warm: the rerun on the same machine (the steps of
    ``gpu_plan.WARM_LIMITS``), its Triton cache holding what the cold call compiled (the items
    the cold call reached), so the items it did not reach still pay their compiles.
    ``warm=None``: as ``LITELORA_GPU_CHECK_WARM`` says (gpu_check.sh sets it on a rerun)."""
    if warm is None:
        from litelora_fast import settings
        warm = settings.gpu_check_warm()
    pricer = Pricer(kernel_configs())
    if warm:
        for _, price in STEPS:   # the cold call, which filled the cache
            price(pricer)
        pricer.limits = dict(gpu_plan.WARM_LIMITS)
    steps = []
    for step_name, price in STEPS:
        if step_name in pricer.limits:
            steps.append(price(pricer))
        if step_name == name:
            break
    return pricer, steps


def numerics_costs() -> list:
    """Estimated seconds of each item of ``gpu_plan.numerics_plan()``, in order (what
    ``gpu_numerics.py`` budgets with)."""
    return [s for _, s in _priced_until("numerics")[1][-1].items]


def bench_costs() -> dict:
    """``{case id: estimated seconds}`` of the benchmark's cases (their first mode pays the
    compiles and autotuning), priced after the numerics and steady steps as the call runs them
    (what ``harness.run_case`` budgets with), at the ceilings of this process's GPU."""
    roofline.use(roofline.device_ceilings())
    return dict(_priced_until("benchmark")[1][-1].items)


def block_costs() -> dict:
    """``{"ours" | "peft": estimated seconds}`` of the block step's implementations, priced after
    the steps before it (what ``gpu_block.py`` budgets with)."""
    items = dict(_priced_until("block")[1][-1].items)
    return {"ours": items["ours (inject)"], "peft": items["peft"]}


def _fixed(pricer: Pricer, name: str, work: float) -> Step:
    return Step(name, pricer.limits[name], PROCESS_START_S + work)


# The call's steps in run order (gpu_check.sh), each priced on one shared pricer.
STEPS = (("numerics", _numerics), ("steady", _steady), ("benchmark", _benchmark),
         ("report", lambda p: _fixed(p, "report", 2.0)),
         ("roofline", lambda p: _fixed(p, "roofline", 0.5)),
         ("block", _block), ("sweep", _sweep))


def estimate(warm: bool = False) -> tuple:
    """``(charged seconds, printed lines, steps)`` of one call of gpu_check.sh: on a fresh
    machine (``warm=False``: every compile paid, the steps of ``gpu_plan.LIMITS``) or rerun on
    the still-warm one (``gpu_plan.WARM_LIMITS``; the cold call's compiles cached; autotuning
    and the op's choices are timed again: the script's choice cache is fresh per run and the
    autotuner's lives in the process)."""
    if [n for n, _ in STEPS] != list(gpu_plan.LIMITS):
        raise ValueError(f"estimate steps {[n for n, _ in STEPS]} differ from the plan's "
                         f"limits {list(gpu_plan.LIMITS)} (update benchmarks/gpu/gpu_estimate.py)")
    limits = gpu_plan.limits(warm)
    over = {k: v for k, v in limits.items() if v <= 0}
    if over:
        raise ValueError(f"non-positive step limits: {over}")
    _, steps = _priced_until(None, warm=bool(warm))
    lines = [f"[setup] package copy, nvidia-smi, the probe (versions, limits, package files): "
             f"{SETUP_S:.0f} s"]
    for st in steps:
        lines += st.lines()
    skipped = [n for n in gpu_plan.LIMITS if n not in limits]
    if skipped:
        lines.append(f"not in this call (the cold call ran them): {', '.join(skipped)}")
    total = SETUP_S + sum(st.charged for st in steps)
    lines.append(f"sum of step limits: {sum(limits.values())} s + setup {SETUP_S:.0f} s (the "
                 f"call's ceiling: {gpu_plan.total_limit(warm)} s)")
    return total, lines, steps


def main(argv=None) -> int:
    print("gpu_check.sh estimate (no GPU): compiles, timed configs and work per step")
    totals = {}
    for warm in (False, True):
        total, lines, steps = estimate(warm)
        print(f"--- gpu_check.sh, {'rerun on the warm machine' if warm else 'cold'} ---")
        for line in lines:
            print(line)
        not_reached = [f"{st.name}: {len(st.dropped())}" for st in steps if st.dropped()]
        print("not reached: " + (", ".join(not_reached) if not_reached else "none"))
        totals[warm] = total
    print(f"estimated total (cold): {round(totals[False])} s of {gpu_plan.TOTAL_LIMIT_S} s")
    print(f"estimated total (warm): {round(totals[True])} s of {gpu_plan.WARM_LIMIT_S} s "
          f"(the rerun)")
    return 0 if (totals[False] <= gpu_plan.TOTAL_LIMIT_S
                 and totals[True] <= gpu_plan.WARM_LIMIT_S) else 1


if __name__ == "__main__":
    sys.exit(main())
