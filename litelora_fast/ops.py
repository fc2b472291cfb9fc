"""The public op ``gated_lora_linear``: validate, pick a backend, run the registered custom op.

The forward and backward are two ``torch.library.custom_op`` s (``litelora_fast::gated_lora_fwd``
and ``::gated_lora_bwd``) tied together by ``register_autograd``. Being opaque custom ops, they can
read gate values on the host (zero-gate skipping decides launch sizes) and still be traced by
``torch.compile`` without graph breaks; their fake implementations give the output shapes. Their
math lives in ``compute.py``; a plain eager call runs that math without the dispatcher
(``eager.py``), which saves tens of microseconds of host time per call.

One implementation serves every device: it picks the backend at call time (``backends.py``), so
interpreter-mode tests on CPU tensors really run the Triton kernels (no CPU kernel is registered
that would route them to the fallback).

Saved for backward: ``x`` and ``S = x @ A_act^T`` (``N x R``), never per-adapter intermediates;
``S * G_E`` is recomputed from ``S`` when ``dB`` is needed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import backends, compute, eager
from .plan import make_plan
from .validation import Problem, RankOffsets, Scaling, validate


def _problem_from(x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling) -> Problem:
    # The op's arguments are already normalised; rebuild the Problem the planner reads.
    return Problem(x2d=x2d, lead_shape=(x2d.shape[0],), weight=weight, bias=bias, lora_A=lora_A,
                   lora_B=lora_B, gates=gates2d, gates2d=gates2d, per_row_gates=True,
                   rank_offsets=list(rank_offsets), scaling=list(scaling))


@torch.library.custom_op("litelora_fast::gated_lora_fwd", mutates_args=())
def _gated_lora_fwd(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    rank_offsets: list[int], scaling: list[float], keep_zero_gates: bool,
                    grad_adapters: list[bool], backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``y`` ``(N, D_out)`` and ``S`` ``(N, R)``: active adapters' S first, then zeros."""
    p = _problem_from(x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling)
    plan = make_plan(p, keep_zero_gates)
    be = None if plan is None else backends.select_backend(x2d, backend or None)
    return compute.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan, be)


@_gated_lora_fwd.register_fake
def _(x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling, keep_zero_gates,
      grad_adapters, backend):
    n = x2d.shape[0]
    return x2d.new_empty(n, weight.shape[0]), x2d.new_empty(n, lora_A.shape[0])


@torch.library.custom_op("litelora_fast::gated_lora_bwd", mutates_args=())
def _gated_lora_bwd(dy: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor,
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    S: torch.Tensor, rank_offsets: list[int], scaling: list[float],
                    keep_zero_gates: bool, grad_adapters: list[bool], backend: str,
                    needs: list[bool]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor]:
    """Gradients ``(dx, dW, db, dA, dB, dg_rows)``; an unneeded one is an empty tensor."""
    p = _problem_from(x2d, weight, None, lora_A, lora_B, gates2d, rank_offsets, scaling)
    plan = make_plan(p, keep_zero_gates)
    be = backends.select_backend(dy, backend or None)
    grads = compute.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan, grad_adapters,
                             be, needs)
    # Custom-op outputs must not alias each other: one fresh empty tensor per unneeded grad.
    return tuple(dy.new_empty(0) if g is None else g for g in grads)


@_gated_lora_bwd.register_fake
def _(dy, x2d, weight, lora_A, lora_B, gates2d, S, rank_offsets, scaling, keep_zero_gates,
      grad_adapters, backend, needs):
    shapes = [x2d.shape, weight.shape, (weight.shape[0],), lora_A.shape, lora_B.shape,
              gates2d.shape]
    dtypes = [dy.dtype, weight.dtype, dy.dtype, lora_A.dtype, lora_B.dtype, gates2d.dtype]
    return tuple(dy.new_empty(s if need else (0,), dtype=dt)
                 for s, dt, need in zip(shapes, dtypes, needs))


def _setup_context(ctx, inputs, output):
    (x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling, keep_zero,
     grad_adapters, backend) = inputs
    _, S = output
    ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S)
    ctx.static = (rank_offsets, scaling, keep_zero, grad_adapters, backend)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dS_unused):
    x2d, weight, lora_A, lora_B, gates2d, S = ctx.saved_tensors
    rank_offsets, scaling, keep_zero, grad_adapters, backend = ctx.static
    need = ctx.needs_input_grad
    needs = [need[0], need[1], ctx.has_bias and need[2], need[3], need[4], need[5]]
    if not any(needs):
        return (None,) * 11
    grads = _gated_lora_bwd(dy, x2d, weight, lora_A, lora_B, gates2d, S, rank_offsets, scaling,
                            keep_zero, grad_adapters, backend, needs)
    out = [g if n else None for g, n in zip(grads, needs)]
    return (*out[:6], None, None, None, None, None)


_gated_lora_fwd.register_autograd(_backward, setup_context=_setup_context)


def _autocast(tensors, device_type: str):
    """Follow autocast like ``F.linear``: the matmul operands run in the autocast dtype."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def gated_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      lora_A: torch.Tensor, lora_B: torch.Tensor, gates: torch.Tensor,
                      rank_offsets: RankOffsets = None, scaling: Scaling = None,
                      *, trainable_adapters: Optional[Sequence[bool]] = None,
                      backend: Optional[str] = None) -> torch.Tensor:
    """``y = x @ W^T + b + sum_k g_k * s_k * (x @ A_k^T) @ B_k^T`` through the fused path.

    Args:
        x: ``(..., D_in)`` input.
        weight: ``(D_out, D_in)`` base weight; ``bias``: ``(D_out,)`` or ``None``.
        lora_A: ``(R, D_in)`` packed down-projections; ``lora_B``: ``(D_out, R)`` packed
            up-projections, ``R = sum r_k``.
        gates: ``(K,)`` one gate per adapter, or ``x.shape[:-1] + (K,)`` one per row and adapter.
        rank_offsets: ``(K+1,)`` ints, adapter ``k`` owns columns ``[o_k, o_{k+1})``; ``None``
            means equal ranks ``R // K``.
        scaling: per-adapter ``s_k`` (``(K,)`` tensor, list or float); ``None`` means 1.0.
        trainable_adapters: optional ``K`` booleans: ``dA``/``dB`` are computed only for these
            adapters' columns (the others' gradient is zero). In continual learning the module
            passes its unfrozen adapters, so frozen ones cost no weight-gradient GEMM even though
            ``lora_A``/``lora_B`` as a whole require grad. ``None``: every adapter.
        backend: ``"torch"`` or ``"triton"`` to force one (testing, benchmarks); ``None`` picks
            Triton for CUDA tensors and for CPU tensors under ``TRITON_INTERPRET=1``.

    Differentiable in ``x``, ``weight``, ``bias``, ``lora_A``, ``lora_B`` and ``gates``, each only
    where it requires grad. Adapters whose gate is exactly zero everywhere (and does not require
    grad) are skipped entirely.
    """
    if backend not in (None, "torch", "triton"):
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")
    if isinstance(x, torch.Tensor):
        x, weight, bias, lora_A, lora_B = _autocast([x, weight, bias, lora_A, lora_B],
                                                    x.device.type)
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    keep_zero = bool(gates.requires_grad and torch.is_grad_enabled())
    K = p.num_adapters
    if trainable_adapters is None:
        grad_adapters = [True] * K
    else:
        grad_adapters = [bool(v) for v in trainable_adapters]
        if len(grad_adapters) != K:
            raise ValueError(f"trainable_adapters must have K = {K} entries (K = gates.shape[-1]), "
                             f"got {len(grad_adapters)}")
    if eager.direct_ok((x, weight, bias, lora_A, lora_B, gates)):
        # Plain eager call: the same math without the custom-op dispatch (see eager.py).
        y2d = eager.run(p, weight, bias, lora_A, lora_B, keep_zero, grad_adapters, backend or "")
    else:
        y2d, _ = _gated_lora_fwd(p.x2d, weight, bias, lora_A, lora_B, p.gates2d, p.rank_offsets,
                                 p.scaling, keep_zero, grad_adapters, backend or "")
    # Not a view of y2d (what matmul does too): FSDP2 warns that in-place ops on a returned view
    # would bypass its pre-backward hook.
    return torch.ops.aten._unsafe_view(y2d, (*p.lead_shape, weight.shape[0]))
