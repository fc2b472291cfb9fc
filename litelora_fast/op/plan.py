"""One call's plan: which adapters are active (zero-gate skipping), the call's LoRA dropout seed,
and the per-column tables the kernels read.

``plan_call`` is the op's planning step, run once per call on the host between validation and
dispatch: it decides the gradient needs, the active set (``decide_active``) and the dropout seed,
and returns them with the rest of the op's non-tensor arguments as one ``OpArgs``. ``pack`` runs
later, inside whichever path the op dispatches to, where the tensors are real even under
``torch.compile``.

An adapter is active when its rank is > 0 and its gate is not zero for every row. A trainable gate
keeps its adapter active even at zero, because the gate's gradient ``s_k * sum_j dS_g * S`` needs
that adapter's ``S``. The active columns are packed so kernels always see a dense bank: a view
when they are one contiguous stretch of ``R``, an ``index_select`` otherwise (autograd scatters the
gradients back into the full ``lora_A``/``lora_B``).

Which zero gates are skipped, and which multiply (exact either way), with no device-to-host read
per call (a read stalls the launch queue on a GPU and makes CUDA-graph capture impossible) and no
host copy kept between calls (a copy keyed on the tensor's version counter misses writes that do
not bump it: ``g.data[k] = 0``, fused optimizers, ``torch.from_numpy`` arrays):

- per-adapter ``(K,)`` gates that do not train and live on the CPU are read at every call (free:
  no device there) and their zeros skipped;
- gates on a device (CUDA) are never read: their zeros multiply, unless the caller's host-side hint
  ``nonzero_gates`` rules adapters out;
- per-row gates (a new tensor every call) are never read: every ranked adapter is active, unless
  ``nonzero_gates`` rules some out;
- trainable gates never skip (their gradient needs every adapter's ``S``), nor do tensors whose
  values cannot be read (meta, fake, tensor subclasses) or gates seen while ``torch.compile``
  traces.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from . import lora_dropout, recompute_seeds
from .validation import Call, Problem

# Exact types only: a subclass may override dispatch (FakeTensor, DTensor); nn.Parameter does not.
PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


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


class OpArgs(NamedTuple):
    """The op's arguments after its six tensors ``(x2d, weight, bias, lora_A, lora_B, gates2d)``,
    named once: both custom ops take them in this order after their tensors (``ops.py``; a test
    pins the schemas to these fields), the direct path takes them the same way, and autograd's
    ``None`` for each of them is counted from here."""

    rank_offsets: list                # (K+1,) ints
    scaling: list                     # (K,) floats
    active: list                      # active adapter indices, ascending
    grad_adapters: list               # (K,) booleans: whose dA/dB are computed
    backend: str                      # a forced backend name, "" to choose per call
    needs: list                       # the forward's gradient needs over the six tensors
    p_drop: float                     # LoRA dropout probability; 0.0 when no seed was drawn
    seed: Optional[torch.Tensor]      # the call's int64 dropout seed, or None

    @property
    def drop(self):
        """op_math's ``drop`` argument: ``(p, seed)``, or ``None`` without dropout."""
        return None if self.seed is None or self.p_drop <= 0 else (self.p_drop, self.seed)


def plan_call(call: Call) -> OpArgs:
    """The plan of one validated call: gradient needs, active set and dropout seed (host only,
    no device read)."""
    p = call.problem
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t is not None and t.requires_grad
             for t in (p.x2d, p.weight, p.bias, p.lora_A, p.lora_B, p.gates2d)]
    # (inf/NaN gates take the same path as any other: every spelling of the gates gives the
    # same IEEE result, docs/MATH.md#4-public-api-contract)
    active = decide_active(p, needs[5], call.nonzero_gates)
    # A seed only when an adapter is active (else nothing to drop) and there is data.
    # (D_out from lora_B: there is no weight in the LoRA-only op)
    n, d_in = p.x2d.shape
    seed, p_drop = None, call.p_drop
    if p_drop > 0 and active and n != 0 and d_in != 0 and p.lora_B.shape[0] != 0:
        # (the original forward's seed in a gradient-checkpointing recompute; the warning it
        # may give points at the op's caller: call_seed <- plan_call <- gated_lora_linear)
        seed = recompute_seeds.call_seed(p.x2d.device, stacklevel=4)
        lora_dropout.record(seed, n, d_in, p_drop)
    else:
        p_drop = 0.0
    return OpArgs(rank_offsets=p.rank_offsets, scaling=p.scaling, active=list(active),
                  grad_adapters=call.grad_adapters, backend=call.backend or "", needs=needs,
                  p_drop=p_drop, seed=seed)


def readable(t: torch.Tensor) -> bool:
    """True when ``t``'s values can be read on the host (not meta/fake/a subclass, not tracing)."""
    return not torch.compiler.is_compiling() and type(t) in PLAIN_TYPES and not t.is_meta


def free_to_read(t: torch.Tensor) -> bool:
    """True when reading ``t``'s values costs no device sync: a readable CPU tensor."""
    return t.device.type == "cpu" and readable(t)


def decide_active(p: Problem, gates_need_grad: bool,
                  nonzero_gates: Optional[tuple] = None) -> tuple:
    """The adapters (ascending indices) that contribute to the output or to a needed gradient.

    ``nonzero_gates``: optional ``K`` booleans from the caller; ``False`` promises that adapter
    ``k``'s gate is zero in every row (it is skipped without reading the gates). Ignored when the
    gates train: a zero gate's gradient still needs its adapter's ``S``.
    """
    offsets = tuple(p.rank_offsets)
    # (dynamo traces this function; it does not go through the lru_cache wrapper)
    ranked = _ranked_of(offsets) if torch.compiler.is_compiling() else _ranked(offsets)
    if gates_need_grad or not ranked:
        return ranked
    if nonzero_gates is not None:
        ranked = tuple(k for k in ranked if nonzero_gates[k])
    if p.per_row_gates or not free_to_read(p.gates) or p.gates.numel() == 0:
        return ranked
    values = p.gates.detach().tolist()
    return tuple(k for k in ranked if values[k] != 0)


def _ranked_of(offsets: tuple) -> tuple:
    """Adapters with rank > 0."""
    return tuple(k for k in range(len(offsets) - 1) if offsets[k + 1] > offsets[k])


_ranked = functools.lru_cache(maxsize=256)(_ranked_of)


def pack(active: tuple, lora_A: torch.Tensor, lora_B: torch.Tensor, rank_offsets: list,
         scaling: list, x_dtype: torch.dtype) -> Optional[Plan]:
    """The plan of a known active set (no host read); ``None`` when it is empty. The backward
    re-packs the bank from the forward's ``active`` instead of holding packed copies of it."""
    if not active:
        return None
    scale_dtype = torch.float64 if x_dtype == torch.float64 else torch.float32
    spans, stretch, cols, col_adapter, col_scale = _layout(
        tuple(active), tuple(rank_offsets), tuple(scaling), scale_dtype, lora_A.device)
    if stretch is not None:
        lo, hi = stretch
        if lo != 0 or hi != lora_A.shape[0]:   # (the whole bank is used as it is: no view ops)
            lora_A, lora_B = lora_A[lo:hi], lora_B[:, lo:hi]
    else:
        lora_A, lora_B = lora_A.index_select(0, cols), lora_B.index_select(1, cols)
    return Plan(active=tuple(active), spans=spans, lora_A=lora_A, lora_B=lora_B,
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

    Returns ``(local, full)`` tuples: their positions in the packed bank and in the full ``R``.
    In continual learning only the newest adapter trains, so this is usually one short stretch.
    """
    return _weight_grad_columns(plan.active, plan.spans, tuple(grad_adapters))


@functools.lru_cache(maxsize=256)
def _weight_grad_columns(active: tuple, spans: tuple, grad_adapters: tuple) -> tuple:
    # Cached (the tuples are only read): the loop is pure layout, the same every training step.
    local, full, pos = [], [], 0
    for k, (a, b) in zip(active, spans):
        if grad_adapters[k]:
            local.extend(range(pos, pos + b - a))
            full.extend(range(a, b))
        pos += b - a
    return tuple(local), tuple(full)
