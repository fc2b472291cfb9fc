"""What ``benchmarks/gpu_check.sh`` runs, as data: the numerics runs, the steady-state runs, the
benchmark grid, the ``--tune`` call's sweep and block step, and each step's time limit. The GPU
scripts (``gpu_numerics.py``, ``gpu_steady.py``, ``gpu_sweep.py``, ``gpu_block.py``) run these
lists and ``gpu_estimate.py`` prices the same lists, so the estimate stays true when the lists
(or the kernels' config lists) change.

Importable without a GPU (the estimate runs anywhere).
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

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
EDGE_CASE_DTYPES = ("bfloat16",)
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


# bf16 (the benchmark dtype, and the one the interpreter cannot check) runs everything above;
# fp16 and fp32, whose math the interpreter checks on the CPU for every kernel and case, run the
# compiled kernels once each on TMA_CASE: the pointer path (fp32: exact products, torch's
# default), LoRA dropout, and the descriptor variants of OTHER_DTYPE_VARIANTS (fp32 with TF32 on).
# Each fp32 compile costs several times a bf16 one, so the list stays short.
FULL_DTYPES = ("bfloat16",)
OTHER_DTYPE_VARIANTS = ("tma_ws", "tma_persistent")


# Value order of the numerics (gpu_numerics.py runs the items of numerics_plan() in this order,
# skipping an item whose estimated cost no longer fits the step's time, and lists what it did
# not run): tier 1 = bf16 on the descriptor-legal GPU shape (split-N weight gradients), pointer
# path and every descriptor variant, and LoRA dropout; then a non-first launch config of each
# fused GEMM (CHECK_TIERS); the kernels' 8 bf16 GPU tests of tests/ (bf16: the interpreter
# cannot check them); 2 = fp16 and fp32 (exact products) on the pointer path; 4 = bf16 on the
# other GPU shapes and the edge cases, fp16/fp32 descriptor variants and dropout.
CHECK_TIERS = {"non_first_configs": 1.5, "kernel_tests": 1.8}
# The first call (gpu_check.sh) runs the items up to this tier, so the benchmark gets the time;
# the second (--tune) runs the rest after its block step and sweep.
CHECK_CALL_MAX_TIER = 1.5


def numerics_part(part: str) -> list:
    """The items of ``numerics_plan()`` one call runs: ``"check"`` (tiers up to
    ``CHECK_CALL_MAX_TIER``), ``"tune"`` (the others) or ``"all"``."""
    if part not in ("check", "tune", "all"):
        raise ValueError(f"part must be 'check', 'tune' or 'all', got {part!r}")
    items = numerics_plan()
    if part == "all":
        return items
    tier = (lambda i: CHECK_TIERS[i] if isinstance(i, str) else i.tier)
    return [i for i in items if (tier(i) <= CHECK_CALL_MAX_TIER) == (part == "check")]


def _tier(dtype: str, name: str, variant: str, dropout: float) -> int:
    if dtype in FULL_DTYPES:
        return 1 if name == TMA_CASE else 4
    return 2 if variant == POINTER and not dropout else 4


def numerics_plan() -> list:
    """The numerics step's items in run order: ``Run`` objects and the names of the kernel
    checks (``gpu_kernel_checks``: ``"non_first_configs"``, ``"kernel_tests"``)."""
    items = [(r.tier, 0, i, r) for i, r in enumerate(numerics_runs())]
    items += [(t, 1, 0, name) for name, t in CHECK_TIERS.items()]
    return [item for *_, item in sorted(items, key=lambda x: x[:3])]


def numerics_runs() -> list:
    """Every kernel in every dtype, in value order (``tier``): in bf16 the pointer path on the
    GPU shapes and the named edge cases of ``tests/op_cases.py``, each descriptor variant of the
    fused GEMMs on ``TMA_CASE`` (``tma_ws`` without the fused dx where it is not shipped:
    ``ws_runs_dx``), gates trainable and frozen; in fp16 and fp32 the pointer path and
    ``OTHER_DTYPE_VARIANTS`` on ``TMA_CASE``; LoRA dropout in every dtype."""
    runs = []
    for dtype in DTYPES:
        full = dtype in FULL_DTYPES
        edge = ({**{n: CASES[n] for n in EDGE_CASES}, **BF16_CASES}
                if dtype in EDGE_CASE_DTYPES else {})
        cases = {**edge, **GPU_CASES} if full else {TMA_CASE: GPU_CASES[TMA_CASE]}
        for name, case in cases.items():
            for gates, c in (_gate_modes(case) if full else [("train", case)]):
                runs.append(Run(name, c, dtype, POINTER, gates,
                                tier=_tier(dtype, name, POINTER, 0.0)))
        # fp32 reaches the descriptor kernels only with TF32 on (exact fp32 takes the pointer
        # kernel: kernels.tuning.choose_variant), so the forced variants run with it on.
        tf32 = dtype == "float32"
        for variant in (TMA_VARIANTS if full else OTHER_DTYPE_VARIANTS):
            case = GPU_CASES[TMA_CASE]
            if variant == "tma_ws" and not ws_runs_dx(dtype):
                case = dataclasses.replace(case, trainable=dict(case.trainable, x=False))
            for gates, c in (_gate_modes(case) if full else [("train", case)]):
                runs.append(Run(TMA_CASE, c, dtype, variant, gates, tf32=tf32,
                                tier=_tier(dtype, TMA_CASE, variant, 0.0)))
        # LoRA dropout: the in-kernel mask in the shrink and dA, and the masked dx term
        runs.append(Run(TMA_CASE, GPU_CASES[TMA_CASE], dtype, POINTER, "train", dropout=DROPOUT,
                        tier=_tier(dtype, TMA_CASE, POINTER, DROPOUT)))
    return sorted(runs, key=lambda r: r.tier)   # stable: the order above within a tier


# Steady state (gpu_steady.py): one layer shape, bf16, the three gate kinds; training steps under
# torch.cuda.set_sync_debug_mode("error") and one step captured in a CUDA graph. The shape is a
# numerics shape so the compiled kernels come from the cache.
STEADY_CASE = GPU_CASES[TMA_CASE]
STEADY_GATES = ("frozen-with-a-zero", "train", "per-row")
STEADY_WARMUP_STEPS, STEADY_CHECKED_STEPS = 3, 4

# Step time limits of gpu_check.sh (seconds; the script reads them from here, after the package
# copy is on the path, and stops if it cannot). The first call (no option) must end within
# TOTAL_LIMITS["check"] cold, setup included; the second (--tune) within TOTAL_LIMITS["tune"].
LIMITS = {"numerics": 66, "steady": 15, "benchmark": 182, "report": 9, "roofline": 8}
TUNE_LIMITS = {"block": 50, "sweep": 90, "numerics": 80}
TOTAL_LIMITS = {"check": 300, "tune": 240}
SETUP_LIMIT_S = 15          # the script's own setup before the first step (versions, copy)
BENCH_GRID = "headline"
# The benchmark stops starting cases this long before its limit, so pytest writes its JSON.
BENCH_MARGIN_S = 8


def limits(mode: str) -> dict:
    """The step limits of one call of gpu_check.sh: ``"check"`` (no option) or ``"tune"``."""
    if mode not in TOTAL_LIMITS:
        raise ValueError(f"mode must be one of {sorted(TOTAL_LIMITS)}, got {mode!r}")
    return dict(LIMITS if mode == "check" else TUNE_LIMITS)


def shell_limits(mode: str) -> str:
    """``LIMIT_<step>=<s>`` lines (and ``LIMIT_total``, ``BENCH_MARGIN``) for the script's
    ``eval``."""
    lines = [f"LIMIT_{k}={int(v)}" for k, v in limits(mode).items()]
    lines.append(f"LIMIT_total={int(TOTAL_LIMITS[mode])}")
    lines.append(f"BENCH_MARGIN={int(BENCH_MARGIN_S)}")
    return "\n".join(lines)


# --tune, the sweep (gpu_sweep.py): the fused GEMMs' SWEEP_CONFIGS (kernels/fused_xw_sgb.py,
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

# --tune, the block step (gpu_block.py): one training step of a Llama-like decoder block.
BLOCK = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, batch=4, seq=2048,
             rank=16, alpha=32, dropout=0.1, warmup_steps=2, timed_steps=5)
BLOCK_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
