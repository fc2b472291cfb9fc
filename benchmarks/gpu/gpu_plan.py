"""What ``benchmarks/gpu_check.sh`` runs, as data: the numerics runs, the steady-state runs, the
benchmark grid, the sweep and the block step, and each step's time limit (one call runs them
all). The GPU scripts (``gpu_numerics.py``, ``gpu_steady.py``, ``gpu_sweep.py``, ``gpu_block.py``) run these
lists and ``gpu_estimate.py`` prices the same lists, so the estimate stays true when the lists
(or the kernels' config lists) change.

Importable without a GPU (the estimate runs anywhere).
"""
from __future__ import annotations

import dataclasses
import os
import sys

# The GPU scripts run as files (PYTHONSAFEPATH=1 keeps their folder off sys.path: each puts it
# there itself, then imports this module), and import helpers of tests/ (op_cases, numerics) and
# of benchmarks/ (timing, peers, tuning_record: shared with the pytest benchmarks), one way only:
# nothing in benchmarks/ or tests/ imports these modules at import time.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (os.path.join(_HERE, "..", "..", "tests"), os.path.join(_HERE, "..")):
    _folder = os.path.normpath(_folder)
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from op_cases import CASES, Case  # noqa: E402

DTYPES = ("bfloat16", "float16", "float32")
POINTER = "pointer"
# The descriptor (TMA) variants of the fused GEMMs (kernels/, LITELORA_KERNEL_VARIANT): each
# is forced once per dtype on descriptor-legal inputs.
TMA_VARIANTS = ("tma", "tma_persistent", "tma_ws")

# GPU-sized shapes. The first is descriptor-legal (contiguous, 16-byte rows, at most 64 active
# columns, which the warp-specialized variant holds in one tile): a ragged bank whose 44 columns
# (36 with gate 1 at 0) are padded to 48, at an odd row count. Every variant runs it, so the
# kernels without variants (shrink, grad-shrink, weight grads) compile once for all of them.
# N = 2100 (not a multiple of 16) also makes the weight gradients split N in two chunks on an
# H200 (kernels/weight_grad.split_count: 20 output tiles < 132 SMs, N // 1024 = 2), so every run
# on this shape checks the split-N partial sums too.
TMA_CASE = "N2100-1024x1536-K4-ragged"
GPU_CASES = {
    TMA_CASE: Case(lead=(2100,), d_in=1024, d_out=1536, ranks=[16, 8, 16, 4], zero_gates=(1,)),
    "3d-perrow-N4x257-520x300-K4": Case(lead=(4, 257), d_in=520, d_out=300, ranks=[8] * 4,
                                        per_row=True, zero_gates=(2,)),
}
# bf16 only (see EDGE_CASES): an odd GPU-sized shape with a rank-0 adapter and a 64-rank one.
BF16_CASES = {
    "N1000-777x1100-K5-ragged-rank0": Case(lead=(1000,), d_in=777, d_out=1100,
                                           ranks=[16, 3, 64, 0, 9], zero_gates=(1,)),
}
# bf16 also gets the named edge cases of tests/op_cases.py that the GPU shapes do not cover (one
# row, D_in = 1, a strided x, a rank-0 adapter, no bias): the interpreter cannot run bf16 dots
# (triton issue 11584), so the GPU is the only place they are checked in bf16. fp16 and fp32 run
# every kernel on all edge cases on the CPU under the interpreter already.
EDGE_CASES = ("N1-K1", "Din1", "strided-x", "rank0-adapter", "zero-gates-perrow-nobias")
SEEDS_PER_RUN = 2
DROPOUT = 0.1


@dataclasses.dataclass(frozen=True)
class Run:
    """One numerics run: a case in a dtype, with gates trainable or frozen, the fused GEMMs
    forced to ``variant``."""

    name: str
    case: Case
    dtype: str
    variant: str
    gates: str             # "train" or "frozen"
    tf32: bool = False     # torch.backends.cuda.matmul.allow_tf32 during the run (fp32 only)
    dropout: float = 0.0   # LoRA dropout p (the reference gets the recorded mask)
    tier: int = 1          # run order: lower tiers first (value order; see numerics_runs)

    @property
    def label(self) -> str:
        extra = ("/tf32" if self.tf32 else "") + (f"/dropout{self.dropout:g}" if self.dropout else "")
        return f"{self.dtype}/{self.variant}{extra}/{self.name}/gates-{self.gates}"


def _gate_modes(case: Case):
    """Trainable gates always; frozen gates too where a gate is 0 (the zero-gate skipping path:
    frozen gates elsewhere only drop the gate gradient, which the trainable run covers)."""
    yield "train", case
    if case.zero_gates:
        yield "frozen", dataclasses.replace(case, trainable=dict(case.trainable, gates=False))


def ws_runs_dx(dtype: str) -> bool:
    """Whether the warp-specialized variant ships a fused-dx kernel for ``dtype`` on
    ``TMA_CASE`` (``kernels.ws_fits``: triton 3.6 cannot lower the fp32 one). Where it does
    not, the forced ``tma_ws`` runs keep ``x`` frozen, so only the forward is forced."""
    from litelora_fast import kernels

    case = GPU_CASES[TMA_CASE]
    return kernels.ws_fits(sum(case.ranks), dtype == "float32", b_kmajor=False)


# The dtype kinds, each with the fused-GEMM variants its launchers can pick on sm_90
# (kernels.tuning.choose_variant): exact fp32 takes the pointer kernel only; fp32 reaches the
# descriptor kernels with TF32 on. ``(dtype, tf32, variants)``.
DTYPE_KINDS = (("bfloat16", False, (POINTER,) + TMA_VARIANTS),
               ("float16", False, (POINTER,) + TMA_VARIANTS),
               ("float32", True, (POINTER,) + TMA_VARIANTS),
               ("float32", False, (POINTER,)))

# Run order (gpu_numerics.py runs the items of numerics_plan() in this order, skipping an item
# whose estimated cost no longer fits the step's time, and lists what it did not run). Coverage
# before depth: tier 1 runs every kernel x variant x dtype kind once, on the one shape
# TMA_CASE (split-N weight gradients, descriptor-legal), with LoRA dropout once per dtype kind,
# before any second shape of anything; then a non-first launch config of each fused GEMM and the
# kernels' 8 bf16 GPU tests of tests/ (CHECK_TIERS); 2 = bf16 frozen gates (the zero-gate
# skipping path) on TMA_CASE; 3 = bf16 on the other GPU shapes and the named edge cases (the
# interpreter cannot check bf16 dots: triton issue 11584); fp16 and fp32 run every kernel on all
# edge cases on the CPU under the interpreter already.
TIER_COVERAGE, TIER_FROZEN, TIER_SHAPES = 1, 2, 3
CHECK_TIERS = {"non_first_configs": 1.5, "kernel_tests": 1.8}


def numerics_plan() -> list:
    """The numerics step's items in run order: ``Run`` objects and the names of the kernel
    checks (``gpu_kernel_checks``: ``"non_first_configs"``, ``"kernel_tests"``)."""
    items = [(r.tier, 0, i, r) for i, r in enumerate(numerics_runs())]
    items += [(t, 1, 0, name) for name, t in CHECK_TIERS.items()]
    return [item for *_, item in sorted(items, key=lambda x: x[:3])]


def item_tier(item) -> float:
    """The tier of one item of ``numerics_plan()``."""
    return CHECK_TIERS[item] if isinstance(item, str) else item.tier


def coverage_key(run: "Run") -> tuple:
    """What one run covers: ``(dtype, tf32, variant, dropout)``."""
    return (run.dtype, run.tf32, run.variant, bool(run.dropout))


def _variant_case(dtype: str, variant: str) -> Case:
    case = GPU_CASES[TMA_CASE]
    if variant == "tma_ws" and not ws_runs_dx(dtype):   # no fused dx kernel: forward only
        case = dataclasses.replace(case, trainable=dict(case.trainable, x=False))
    return case


def numerics_runs() -> list:
    """Every kernel x variant x dtype kind (``DTYPE_KINDS``) on ``TMA_CASE`` with trainable
    gates, and LoRA dropout per dtype kind (tier 1); then bf16 with frozen gates on it (tier 2);
    then bf16's pointer path on the other GPU shapes and the named edge cases of
    ``tests/op_cases.py``, gates trainable and frozen (tier 3)."""
    runs = []
    for dtype, tf32, variants in DTYPE_KINDS:
        for variant in variants:
            runs.append(Run(TMA_CASE, _variant_case(dtype, variant), dtype, variant, "train",
                            tf32=tf32, tier=TIER_COVERAGE))
        # LoRA dropout: the in-kernel mask in the shrink and dA, and the masked dx term
        runs.append(Run(TMA_CASE, GPU_CASES[TMA_CASE], dtype, POINTER, "train", tf32=tf32,
                        dropout=DROPOUT, tier=TIER_COVERAGE))
    for variant in (POINTER,) + TMA_VARIANTS:
        for gates, c in list(_gate_modes(_variant_case("bfloat16", variant)))[1:]:
            runs.append(Run(TMA_CASE, c, "bfloat16", variant, gates, tier=TIER_FROZEN))
    shapes = {**{n: CASES[n] for n in EDGE_CASES}, **BF16_CASES,
              **{n: c for n, c in GPU_CASES.items() if n != TMA_CASE}}
    for name, case in shapes.items():
        for gates, c in _gate_modes(case):
            runs.append(Run(name, c, "bfloat16", POINTER, gates, tier=TIER_SHAPES))
    return sorted(runs, key=lambda r: r.tier)   # stable: the order above within a tier


# Steady state (gpu_steady.py): one layer shape, bf16, the three gate kinds; training steps under
# torch.cuda.set_sync_debug_mode("error") and one step captured in a CUDA graph. The shape is a
# numerics shape so the compiled kernels come from the cache.
STEADY_CASE = GPU_CASES[TMA_CASE]
STEADY_GATES = ("frozen-with-a-zero", "train", "per-row")
STEADY_WARMUP_STEPS, STEADY_CHECKED_STEPS = 3, 4

# Step time limits of gpu_check.sh, in run order (seconds; the script reads them from here, after
# the package copy is on the path, and stops if it cannot). One call runs every step: the GPU
# machine stays warm only 30 s after a command, so a second call would start a fresh machine
# with a cold compile cache. The call must end within TOTAL_LIMIT_S cold, setup included, and a
# rerun on the still-warm machine (Triton's cache holding every compile) within WARM_LIMIT_S:
# a start of 1-2 minutes + 450 + 200 stays inside a lease's 15 minutes.
LIMITS = {"numerics": 182, "steady": 15, "benchmark": 167, "report": 9, "roofline": 8,
          "block": 38, "sweep": 16}
TOTAL_LIMIT_S = 450
# The rerun (gpu_check.sh finds this kernels version's marker in Triton's cache: the cold call
# ran here) repeats the steps in the same order, fresh seeds, its cached items quick, and so
# reaches the items the cold call had no time for (the numerics' edge cases, the last benchmark
# rows, most of the sweep); the block step, which the cold call ran whole, is left out.
WARM_LIMITS = {"numerics": 62, "steady": 10, "benchmark": 62, "report": 9, "roofline": 8,
               "sweep": 34}
WARM_LIMIT_S = 200
SETUP_LIMIT_S = 15          # the script's own setup before the first step (versions, copy)
BENCH_GRID = "headline"
# The benchmark stops starting cases this long before its limit, so pytest writes its JSON.
BENCH_MARGIN_S = 8
# The steps whose scripts stop starting work this long before their limit (their deadline).
DEADLINE_MARGIN_S = {"numerics": 3, "block": 3, "sweep": 5}


def limits(warm: bool = False) -> dict:
    """The step limits of one call of gpu_check.sh in run order: cold or the warm rerun."""
    return dict(WARM_LIMITS if warm else LIMITS)


def total_limit(warm: bool = False) -> int:
    return WARM_LIMIT_S if warm else TOTAL_LIMIT_S


def shell_limits(warm: bool = False) -> str:
    """For the script's ``eval``: ``STEPS`` (this call's steps in run order), ``LIMIT_<step>``,
    ``LIMIT_total``, ``BENCH_MARGIN`` and ``MARGIN_<step>`` lines."""
    lim = limits(warm)
    lines = [f"STEPS='{' '.join(lim)}'"] + [f"LIMIT_{k}={int(v)}" for k, v in lim.items()]
    lines.append(f"LIMIT_total={int(total_limit(warm))}")
    lines.append(f"BENCH_MARGIN={int(BENCH_MARGIN_S)}")
    lines += [f"MARGIN_{k}={int(v)}" for k, v in DEADLINE_MARGIN_S.items()]
    return "\n".join(lines)


# The sweep (gpu_sweep.py): the fused GEMMs' SWEEP_CONFIGS (kernels/fused_xw_sgb.py,
# kernels/fused_dyw_dsa.py), each launched alone (the launchers' ``config=``) at the headline shapes, against
# cuBLAS; N = 8192, bf16, R_act = 16 (K = 1) and 64 (K = 4).
SWEEP_SHAPES = ((4096, 4096), (4096, 14336))
SWEEP_N = 8192
SWEEP_RANKS = (16, 64)
# per kernel: the sweep's bound (its compiles dominate its time), taken in SWEEP_VARIANT_ORDER:
# the 12 + 11 SWEEP_CONFIGS overran the 90 s step by ~4 s (gpu_estimate), so the last pointer
# configs go (at these descriptor-legal bf16 shapes "auto" never picks the pointer kernel)
SWEEP_MAX_CONFIGS = 10
# value order: the variant untuned "auto" takes at the sweep's shapes (more tiles than SMs) first
SWEEP_VARIANT_ORDER = ("tma_persistent", "tma", "tma_ws", "pointer")

# The block step (gpu_block.py): one training step of a Llama-like decoder block.
BLOCK = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, batch=4, seq=2048,
             rank=16, alpha=32, dropout=0.1, warmup_steps=2, timed_steps=5)
BLOCK_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
