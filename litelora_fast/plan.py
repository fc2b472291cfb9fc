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

    active: tuple                     # active adapter indices, ascending
    spans: tuple                      # (start, stop) of each active adapter in the full R
    lora_A: torch.Tensor              # (R_act, D_in)
    lora_B: torch.Tensor              # (D_out, R_act)
    col_adapter: torch.Tensor         # (R_act,) int32: adapter index of each column
    col_scale: torch.Tensor           # (R_act,) float32 (float64 for float64 x): scaling s_k

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


def active_adapters(p: Problem, gates_need_grad: bool) -> tuple:
    """Indices of the adapters that contribute to the output or to a needed gradient."""
    ranked = _ranked(tuple(p.rank_offsets))
    if gates_need_grad or not ranked:
        return ranked
    # One host sync: the set of live adapters decides the launch sizes.
    if p.per_row_gates:
        live = (p.gates.reshape(-1, p.num_adapters) != 0).any(dim=0)
    else:
        live = p.gates != 0
    live = live.tolist()
    return tuple(k for k in ranked if live[k])


@functools.lru_cache(maxsize=256)
def _ranked(offsets: tuple) -> tuple:
    return tuple(k for k in range(len(offsets) - 1) if offsets[k + 1] > offsets[k])


def make_plan(p: Problem, gates_need_grad: bool) -> Optional[Plan]:
    """Pack the active adapters' columns; ``None`` when no adapter is active."""
    active = active_adapters(p, gates_need_grad)
    if not active:
        return None
    return pack(active, p.lora_A, p.lora_B, p.rank_offsets, p.scaling, p.x2d.dtype)


def pack(active: tuple, lora_A: torch.Tensor, lora_B: torch.Tensor, rank_offsets: list,
         scaling: list, x_dtype: torch.dtype) -> Plan:
    """The plan of a known, non-empty active set (no host sync): the backward re-packs the bank
    from the forward's ``active`` instead of holding packed copies of it in between."""
    scale_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    spans, stretch, cols, col_adapter, col_scale = _layout(
        active, tuple(rank_offsets), tuple(scaling), scale_dtype, lora_A.device)
    if stretch is not None:
        lo, hi = stretch
        lora_A, lora_B = lora_A[lo:hi], lora_B[:, lo:hi]
    else:
        lora_A, lora_B = lora_A.index_select(0, cols), lora_B.index_select(1, cols)
    return Plan(active=active, spans=spans, lora_A=lora_A, lora_B=lora_B,
                col_adapter=col_adapter, col_scale=col_scale)


@functools.lru_cache(maxsize=256)
def _layout(active: tuple, offsets: tuple, scales: tuple, scale_dtype: torch.dtype,
            device: torch.device):
    """Everything about the packed bank that depends only on the bank's layout, not its values.

    Cached: rebuilding it costs Python loops and host-to-device copies per call, and a training
    loop asks for the same few layouts over and over. The tensors are never written to.
    Returns ``(spans, stretch, cols, col_adapter, col_scale)``: ``stretch`` is ``(lo, hi)`` when
    the active columns are one contiguous stretch (then ``cols`` is ``None``), else ``None`` and
    ``cols`` indexes them.
    """
    spans = tuple((offsets[k], offsets[k + 1]) for k in active)
    if all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1)):
        stretch, cols = (spans[0][0], spans[-1][1]), None
    else:
        stretch = None
        cols = torch.cat([torch.arange(a, b) for a, b in spans]).to(device)
    col_adapter = torch.cat([torch.full((b - a,), k, dtype=torch.int32)
                             for k, (a, b) in zip(active, spans)])
    col_scale = torch.cat([torch.full((b - a,), scales[k], dtype=scale_dtype)
                           for k, (a, b) in zip(active, spans)])
    return spans, stretch, cols, col_adapter.to(device), col_scale.to(device)


def weight_grad_columns(plan: Plan, grad_adapters: list) -> tuple:
    """Columns whose ``dA``/``dB`` are computed: the active adapters that train.

    Returns ``(local, full)``: their positions in the packed bank and in the full ``R``. In
    continual learning only the newest adapter trains, so this is usually one short stretch.
    """
    return _weight_grad_columns(plan.active, plan.spans, tuple(grad_adapters))


@functools.lru_cache(maxsize=256)
def _weight_grad_columns(active: tuple, spans: tuple, grad_adapters: tuple) -> tuple:
    # Cached (the lists are only read): the loop is pure layout, the same every training step.
    local, full, pos = [], [], 0
    for k, (a, b) in zip(active, spans):
        if grad_adapters[k]:
            local.extend(range(pos, pos + b - a))
            full.extend(range(a, b))
        pos += b - a
    return local, full
