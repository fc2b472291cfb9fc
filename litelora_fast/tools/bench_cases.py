"""The benchmark cases: one ``Case`` per shape, bank, gate pattern and dtype, and the GPU grids.

Shared by the roofline model (``roofline``), the benchmarks (``benchmarks/``) and the report
(``report``), so all three always talk about the same cases. The peers are named here too:

- ``ours``: ``gated_lora_linear`` (on CUDA the op's measured choice between its Triton kernels
  and the cuBLAS composite; on the CPU the PyTorch fast path);
- ``reference`` (a): ``gated_lora_linear_ref``, the loop over adapters;
- ``packed`` (b): the best plain-PyTorch path (``benchmarks/peers.py``);
- ``base`` (c): ``F.linear`` alone (the floor);
- ``peft``: PEFT's own ``LoraLayer`` with the K adapters active at once (frozen gates only:
  PEFT has no gates, so each gate is folded into that adapter's scaling and zero-gate adapters
  are left inactive, as a PEFT user would).

A case with ``dropout`` > 0 runs LoRA dropout in every peer that has it: ours (the mask drawn
in-kernel), (a), (b) (``F.dropout`` on ``x``: the dropped copy is materialised and saved) and
PEFT (its ``lora_dropout``); the base (c) has no adapter branch and runs as usual.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

PEERS = ("ours", "reference", "packed", "base", "peft")
MODES = ("forward", "backward", "fwd_bwd")


@dataclass(frozen=True)
class Case:
    """One benchmark case: shapes, bank, gate pattern and dtype.

    ``sparsity`` is the share of gates set to exactly 0 (every other adapter, so the active
    columns are not contiguous); ``train_gates`` makes the gates require grad, which keeps every
    adapter active (see docs/DESIGN.md).
    """

    d_in: int
    d_out: int
    n: int
    k: int
    r: int
    sparsity: float = 0.0
    train_gates: bool = False
    dtype: str = "bfloat16"
    device: str = "cuda"
    dropout: float = 0.0

    @property
    def zero_gates(self) -> int:
        return int(self.k * self.sparsity)

    @property
    def rank(self) -> int:
        return self.k * self.r

    @property
    def active_rank(self) -> int:
        """Columns ours and the packed peer compute (zero gates skipped unless gates train)."""
        return self.rank if self.train_gates else (self.k - self.zero_gates) * self.r

    @property
    def id(self) -> str:
        return (f"{self.device}-{self.dtype}-{self.d_in}x{self.d_out}-N{self.n}-K{self.k}-r{self.r}"
                f"-s{round(self.sparsity * 100)}-{'gtrain' if self.train_gates else 'gfrozen'}"
                + (f"-p{self.dropout:g}" if self.dropout else ""))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def applicable(case: Case, peer: str) -> bool:
    """Whether ``peer`` computes ``case`` at all: PEFT has no gates to train."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    return not (peer == "peft" and case.train_gates)


# --- the GPU grids (targets in docs/MATH.md, section 6) --------------------------------------

GPU_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096))
GPU_N = (2048, 8192, 16384)
GPU_K = (1, 4, 8, 16)
GPU_R = (16, 64)
HEADLINE_K = (1, 4, 8)
HEADLINE_DROPOUT = (0.1, 0.05)   # what LoRA users train with (PEFT's usual lora_dropout values)
GRIDS = ("headline", "default", "full")


def headline_cases() -> list:
    """The headline grid in the order it is run, most valuable first, so that the rows a short
    budget drops are the least important ones: the 4096x14336 (MLP) shape and the LoRA-dropout
    rows first, K = 4 (a typical bank) before K = 8; the 4096x4096 rows without dropout, and
    p = 0.05 beside p = 0.1, last."""
    big, square = (4096, 14336), (4096, 4096)
    return [Case(*big, 8192, 4, 16), Case(*big, 8192, 1, 16, dropout=0.1),
            Case(*square, 8192, 1, 16, dropout=0.1), Case(*big, 8192, 1, 16),
            Case(*square, 8192, 4, 16), Case(*big, 8192, 8, 16),
            Case(*square, 8192, 1, 16), Case(*square, 8192, 8, 16),
            Case(*square, 8192, 1, 16, dropout=0.05)]


def dropout_cases() -> list:
    """The LoRA-dropout rows every grid has: K = 1 at p = 0.1 and 0.05 on both headline shapes,
    and K = 4 at p = 0.1 on 4096x4096."""
    out = [Case(d_in, d_out, 8192, 1, 16, dropout=p) for d_in, d_out in GPU_SHAPES[:2]
           for p in HEADLINE_DROPOUT]
    return out + [Case(4096, 4096, 8192, 4, 16, dropout=0.1)]


def gpu_cases(grid: str = "default") -> list:
    """The GPU cases of one grid:

    - ``headline``: what ``benchmarks/gpu_check.sh`` times in its budget (``headline_cases``,
      most valuable first): N = 8192, r = 16, K = 1, 4, 8 at 4096x4096 and 4096x14336, bf16,
      frozen gates, and LoRA dropout 0.1 (K = 1 at both shapes) and 0.05 (K = 1, 4096x4096,
      last: each p compiles kernels of its own);
    - ``default``: the headline and the dropout rows plus K = 16, trainable and half-zero gates at K = 8, one each of
      14336x4096, r = 64, N = 2048 and N = 16384 (under 5 minutes on an H200);
    - ``full``: the whole grid (shapes x N x K x r x sparsity x trainable gates), plus the
      dropout rows (``dropout_cases``).
    """
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if grid == "full":
        out = []
        for (d_in, d_out), n, k, r, s, t in itertools.product(
                GPU_SHAPES, GPU_N, GPU_K, GPU_R, (0.0, 0.5), (False, True)):
            if s and k == 1:
                continue  # half of one gate is no gate pattern
            out.append(Case(d_in, d_out, n, k, r, s, t))
        return out + dropout_cases()
    if grid == "headline":
        return headline_cases()
    out = [Case(d_in, d_out, 8192, k, 16) for d_in, d_out in GPU_SHAPES[:2] for k in GPU_K]
    out += dropout_cases()
    out += [Case(4096, 4096, 8192, 8, 16, train_gates=True),
            Case(4096, 4096, 8192, 8, 16, sparsity=0.5),
            Case(4096, 4096, 8192, 16, 16, sparsity=0.5),
            Case(14336, 4096, 8192, 8, 16),
            Case(4096, 4096, 8192, 8, 64),
            Case(4096, 4096, 2048, 8, 16),
            Case(4096, 4096, 16384, 8, 16)]
    return out
