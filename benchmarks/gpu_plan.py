"""What ``benchmarks/gpu_check.sh`` runs, as data: the numerics runs, the steady-state runs, the
benchmark grid and each step's time limit. The GPU scripts (``gpu_numerics.py``,
``gpu_steady.py``) run these lists and ``gpu_estimate.py`` prices the same lists, so the estimate
stays true when the lists (or the kernels' config lists) change.

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
TMA_CASE = "N1000-1024x1536-K4-ragged"
GPU_CASES = {
    TMA_CASE: Case(lead=(1000,), d_in=1024, d_out=1536, ranks=[16, 8, 16, 4], zero_gates=(1,)),
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


def numerics_runs() -> list:
    """Every kernel in every dtype: the pointer path on the GPU shapes (and, in bf16, the named
    edge cases of ``tests/op_cases.py``); each descriptor variant of the fused GEMMs on
    ``TMA_CASE`` (``tma_ws`` without the fused dx where it is not shipped: ``ws_runs_dx``)."""
    runs = []
    for dtype in DTYPES:
        edge = ({**{n: CASES[n] for n in EDGE_CASES}, **BF16_CASES}
                if dtype in EDGE_CASE_DTYPES else {})
        cases = {**edge, **GPU_CASES}
        for name, case in cases.items():
            for gates, c in _gate_modes(case):
                runs.append(Run(name, c, dtype, POINTER, gates))
        # fp32 reaches the descriptor kernels only with TF32 on (exact fp32 takes the pointer
        # kernel: kernels.tuning.choose_variant), so the forced variants run with it on.
        tf32 = dtype == "float32"
        for variant in TMA_VARIANTS:
            case = GPU_CASES[TMA_CASE]
            if variant == "tma_ws" and not ws_runs_dx(dtype):
                case = dataclasses.replace(case, trainable=dict(case.trainable, x=False))
            for gates, c in _gate_modes(case):
                runs.append(Run(TMA_CASE, c, dtype, variant, gates, tf32=tf32))
        # LoRA dropout: the in-kernel mask in the shrink and dA, and the masked dx term
        runs.append(Run(TMA_CASE, GPU_CASES[TMA_CASE], dtype, POINTER, "train", dropout=DROPOUT))
    return runs


# Steady state (gpu_steady.py): one layer shape, bf16, the three gate kinds; training steps under
# torch.cuda.set_sync_debug_mode("error") and one step captured in a CUDA graph. The shape is a
# numerics shape so the compiled kernels come from the cache.
STEADY_CASE = GPU_CASES[TMA_CASE]
STEADY_GATES = ("frozen-with-a-zero", "train", "per-row")
STEADY_WARMUP_STEPS, STEADY_CHECKED_STEPS = 3, 4

# Step time limits of gpu_check.sh (seconds; the script reads them from here): their sum plus the
# setup stays under 6 minutes.
LIMITS = {"numerics": 195, "steady": 25, "benchmark": 110, "report": 15, "roofline": 10}
BENCH_GRID = "headline"
