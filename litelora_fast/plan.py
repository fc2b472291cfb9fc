"""Zero-gate skipping: which adapters are active, and the per-column tables the kernels read.

An adapter is active when its rank is > 0 and its gate is not zero for every row. A trainable gate
keeps its adapter active even at zero, because the gate's gradient ``s_k * sum_j dS_g * S`` needs
that adapter's ``S``. The active columns are packed so kernels always see a dense bank: a view
when they are one contiguous stretch of ``R``, an ``index_select`` otherwise (autograd scatters the
gradients back into the full ``lora_A``/``lora_B``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

from .validation import Problem


@dataclass
class Plan:
    """The packed active bank of one call."""

    active: list                      # active adapter indices, ascending
    spans: list                       # (start, stop) of each active adapter in the full R
    lora_A: torch.Tensor              # (R_act, D_in)
    lora_B: torch.Tensor              # (D_out, R_act)
    col_adapter: torch.Tensor         # (R_act,) int32: adapter index of each column
    col_scale: torch.Tensor           # (R_act,) float32 (float64 for float64 x): scaling s_k

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


def active_adapters(p: Problem, gates_need_grad: bool) -> list:
    """Indices of the adapters that contribute to the output or to a needed gradient."""
    ranked = [k for k, r in enumerate(p.ranks) if r > 0]
    if gates_need_grad or not ranked:
        return ranked
    # One host sync: the set of live adapters decides the launch sizes.
    if p.per_row_gates:
        live = (p.gates.reshape(-1, p.num_adapters) != 0).any(dim=0)
    else:
        live = p.gates != 0
    live = live.tolist()
    return [k for k in ranked if live[k]]


def make_plan(p: Problem, gates_need_grad: bool) -> Optional[Plan]:
    """Pack the active adapters' columns; ``None`` when no adapter is active."""
    active = active_adapters(p, gates_need_grad)
    if not active:
        return None
    offsets, device = p.rank_offsets, p.lora_A.device
    spans = [(offsets[k], offsets[k + 1]) for k in active]
    contiguous = all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    if contiguous:
        lo, hi = spans[0][0], spans[-1][1]
        lora_A, lora_B = p.lora_A[lo:hi], p.lora_B[:, lo:hi]
    else:
        cols = torch.cat([torch.arange(a, b, device=device) for a, b in spans])
        lora_A, lora_B = p.lora_A.index_select(0, cols), p.lora_B.index_select(1, cols)
    scale_dtype = torch.float64 if p.x2d.dtype == torch.float64 else torch.float32
    col_adapter, col_scale = _column_tables(tuple(active), tuple(spans),
                                            tuple(p.scaling[k] for k in active), scale_dtype,
                                            str(device))
    return Plan(active=active, spans=spans, lora_A=lora_A, lora_B=lora_B,
                col_adapter=col_adapter, col_scale=col_scale)


@functools.lru_cache(maxsize=256)
def _column_tables(active: tuple, spans: tuple, scales: tuple, scale_dtype: torch.dtype,
                   device: str):
    # Cached: building the tables costs a host-to-device copy per call, and a training loop asks
    # for the same few bank layouts over and over. The tensors are never written to.
    col_adapter = torch.cat([torch.full((b - a,), k, dtype=torch.int32)
                             for k, (a, b) in zip(active, spans)])
    col_scale = torch.cat([torch.full((b - a,), s, dtype=scale_dtype)
                           for s, (a, b) in zip(scales, spans)])
    return col_adapter.to(device), col_scale.to(device)


def weight_grad_columns(plan: Plan, grad_adapters: list) -> tuple:
    """Columns whose ``dA``/``dB`` are computed: the active adapters that train.

    Returns ``(local, full)``: their positions in the packed bank and in the full ``R``. In
    continual learning only the newest adapter trains, so this is usually one short stretch.
    """
    local, full, pos = [], [], 0
    for k, (a, b) in zip(plan.active, plan.spans):
        if grad_adapters[k]:
            local.extend(range(pos, pos + b - a))
            full.extend(range(a, b))
        pos += b - a
    return local, full
