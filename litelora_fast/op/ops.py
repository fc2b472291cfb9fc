"""The public op ``gated_lora_linear``: validate, decide the active adapters, pick a backend, run.

Two dispatch paths run the same math (``op_math.forward``/``op_math.backward``), so they agree
bit for bit (``tests/test_dispatch_paths.py``):

- **direct** (a plain eager call): ``_GatedLoRA``, a ``torch.autograd.Function``. Calling a
  ``torch.library.custom_op`` from Python costs tens of microseconds of host time per call
  (boxing the arguments through the dispatcher, aliasing checks, and ``fill_defaults`` walking the
  schema once per argument); for a plain eager call nothing the dispatcher does changes the result.
  The forward keeps the active set and the backend; the backward re-packs the bank from them.
- **custom ops** (``litelora_fast::gated_lora_fwd`` and ``::gated_lora_bwd``, tied together by
  ``register_autograd``): whenever the dispatcher matters (``direct_ok`` is False): under
  ``torch.compile``/``torch.export`` tracing (their fake implementations give the shapes, no graph
  break), under a dispatch or torch-function mode (fake tensors, op counters), for tensor
  subclasses.

Under ``torch.func`` transforms the op computes through the unfused reference
(``_through_reference``): the custom op has no forward-mode or batching rule.

The active set is decided once per call, before either path, on the host (``plan.decide_active``:
no device read, nothing cached) and handed to the path as a list of ints. The backend is chosen
inside each path (``autotune.select``), where the tensors are real even under ``torch.compile``.
The direct path's backward is ``once_differentiable``: a double backward raises, as it does
through the custom ops (whose backward op has no autograd formula).

Saved for backward: ``x`` and ``S = x @ A_act^T`` (``N x R``), never per-adapter intermediates;
``S * G_E`` is recomputed from ``S`` when ``dB`` is needed. With LoRA dropout, one int64 seed
more: the mask is regenerated from it (``lora_dropout.py``), never stored. A
gradient-checkpointing recompute reuses the seed tensor its forward drew (``recompute_seeds.py``),
so the recompute's mask is the forward's whatever ``preserve_rng_state`` says.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

from . import autotune, lora_dropout, op_math, recompute_seeds
from .backends import BACKENDS
from .plan import PLAIN_TYPES, decide_active, pack
from .reference import gated_lora_linear_ref
from .validation import RankOffsets, Scaling, as_list, validate

__all__ = ["gated_lora_linear", "direct_ok"]


def _is_empty(x2d, lora_B) -> bool:
    # (D_out from lora_B: there is no weight in the LoRA-only op)
    return x2d.shape[0] == 0 or x2d.shape[1] == 0 or lora_B.shape[0] == 0


def _drop(p_drop: float, seed):
    """op_math's ``drop`` argument: ``(p, seed)``, or ``None`` without dropout."""
    return None if seed is None or p_drop <= 0 else (p_drop, seed)


# ------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("litelora_fast::gated_lora_fwd", mutates_args=())
def _gated_lora_fwd(x2d: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    rank_offsets: list[int], scaling: list[float], active: list[int],
                    grad_adapters: list[bool], backend: str, needs: list[bool], p_drop: float,
                    seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``y`` ``(N, D_out)`` and ``S`` ``(N, R)``: active adapters' S first, then zeros."""
    plan = pack(tuple(active), lora_A, lora_B, rank_offsets, scaling, x2d.dtype)
    drop = _drop(p_drop, seed)
    be = autotune.select(x2d, weight, plan, gates2d, needs, backend or None, drop)
    return op_math.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan, be, drop)


@_gated_lora_fwd.register_fake
def _(x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling, active, grad_adapters,
      backend, needs, p_drop, seed):
    n = x2d.shape[0]
    return x2d.new_empty(n, lora_B.shape[0]), x2d.new_empty(n, lora_A.shape[0])


@torch.library.custom_op("litelora_fast::gated_lora_bwd", mutates_args=())
def _gated_lora_bwd(dy: torch.Tensor, x2d: torch.Tensor, weight: Optional[torch.Tensor],
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    S: torch.Tensor, rank_offsets: list[int], scaling: list[float],
                    active: list[int], grad_adapters: list[bool], backend: str,
                    needs: list[bool], fwd_needs: list[bool], p_drop: float,
                    seed: Optional[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor]:
    """Gradients ``(dx, dW, db, dA, dB, dg_rows)``; an unneeded one is an empty tensor.
    ``fwd_needs`` are the forward's gradient needs: the backend choice is keyed on them."""
    plan = pack(tuple(active), lora_A, lora_B, rank_offsets, scaling, x2d.dtype)
    drop = _drop(p_drop, seed)
    be = autotune.select(x2d, weight, plan, gates2d, fwd_needs, backend or None, drop)
    grads = op_math.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan, grad_adapters,
                             be, needs, drop)
    # Custom-op outputs must not alias each other: one fresh empty tensor per unneeded grad.
    return tuple(dy.new_empty(0) if g is None else g for g in grads)


@_gated_lora_bwd.register_fake
def _(dy, x2d, weight, lora_A, lora_B, gates2d, S, rank_offsets, scaling, active, grad_adapters,
      backend, needs, fwd_needs, p_drop, seed):
    no_w = weight is None      # the LoRA-only op: no dW (needs[1] is False)
    shapes = [x2d.shape, (0,) if no_w else weight.shape, (lora_B.shape[0],), lora_A.shape,
              lora_B.shape, gates2d.shape]
    dtypes = [dy.dtype, dy.dtype if no_w else weight.dtype, dy.dtype, lora_A.dtype, lora_B.dtype,
              gates2d.dtype]
    return tuple(dy.new_empty(s if need else (0,), dtype=dt)
                 for s, dt, need in zip(shapes, dtypes, needs))


def _setup_context(ctx, inputs, output):
    (x2d, weight, bias, lora_A, lora_B, gates2d, rank_offsets, scaling, active, grad_adapters,
     backend, needs, p_drop, seed) = inputs
    _, S = output
    ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S, seed)
    ctx.static = (rank_offsets, scaling, active, grad_adapters, backend, needs, p_drop)
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dS_unused):
    x2d, weight, lora_A, lora_B, gates2d, S, seed = ctx.saved_tensors
    rank_offsets, scaling, active, grad_adapters, backend, fwd_needs, p_drop = ctx.static
    needs = op_math.needed_grads(ctx.needs_input_grad, ctx.has_bias)
    if not any(needs):
        return (None,) * 14
    grads = _gated_lora_bwd(dy, x2d, weight, lora_A, lora_B, gates2d, S, rank_offsets, scaling,
                            active, grad_adapters, backend, needs, fwd_needs, p_drop, seed)
    return (*(g if n else None for g, n in zip(grads, needs)), *(None,) * 8)


_gated_lora_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------- direct path
def direct_ok(tensors) -> bool:
    """True when running the op's math directly is indistinguishable from dispatching the op."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    return all(t is None or type(t) in PLAIN_TYPES for t in tensors)


class _GatedLoRA(torch.autograd.Function):
    """Forward and backward of the op on plain tensors; saves what the custom op saves."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, lora_A, lora_B, gates2d, p, active, grad_adapters,
                backend, needs, p_drop, seed):
        plan = pack(active, lora_A, lora_B, p.rank_offsets, p.scaling, x2d.dtype)
        drop = _drop(p_drop, seed)
        be = autotune.select(x2d, weight, plan, gates2d, needs, backend or None, drop)
        y, S = op_math.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan, be, drop)
        # Only the active set and the backend are kept besides the saved tensors (no tensors
        # outside save_for_backward, so saved-tensor hooks see everything the backward holds).
        ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S, seed)
        ctx.static = (p.rank_offsets, p.scaling, active, grad_adapters, be, p_drop)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2d, weight, lora_A, lora_B, gates2d, S, seed = ctx.saved_tensors
        rank_offsets, scaling, active, grad_adapters, be, p_drop = ctx.static
        needs = op_math.needed_grads(ctx.needs_input_grad, ctx.has_bias)
        rest = (None,) * 7        # p, active, grad_adapters, backend, needs, p_drop, seed
        if not any(needs):
            return (None,) * 6 + rest
        plan = pack(active, lora_A, lora_B, rank_offsets, scaling, x2d.dtype)
        grads = op_math.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan,
                                 grad_adapters, be, needs, _drop(p_drop, seed))
        return (*grads, *rest)


# ------------------------------------------------------------------------------- torch.func
def _func_transform() -> bool:
    """True under a ``torch.func`` transform (grad, vjp, jacrev, jvp, jacfwd, vmap) in eager
    mode (Dynamo does not model functorch's interpreter stack; it traces the custom ops)."""
    if torch.compiler.is_compiling():
        return False
    interpreter = torch._C._functorch.peek_interpreter_stack()
    return (interpreter is not None
            and interpreter.key() != torch._C._functorch.TransformType.Functionalize)


def _through_reference(x, weight, bias, lora_A, lora_B, gates, p, grad_adapters, p_drop):
    """The op under a ``torch.func`` transform: the unfused reference, whose plain PyTorch ops
    every transform supports (the custom op has no forward-mode or batching rule: ``jvp`` got
    a zero tangent, ``grad`` and ``vmap`` raised from inside torch). Same math; frozen adapters'
    columns (``trainable_adapters``) are detached so their gradient is zero, as on the fast
    paths. With dropout the reference draws its own mask (``vmap`` then needs ``randomness=``)."""
    if not all(grad_adapters):
        o = p.rank_offsets
        train = torch.tensor([grad_adapters[k] for k in range(len(o) - 1)
                              for _ in range(o[k + 1] - o[k])], dtype=torch.bool,
                             device=lora_A.device)
        lora_A = torch.where(train[:, None], lora_A, lora_A.detach())
        lora_B = torch.where(train[None, :], lora_B, lora_B.detach())
    return gated_lora_linear_ref(x, weight, bias, lora_A, lora_B, gates, p.rank_offsets,
                                 p.scaling, dropout=p_drop)


# ------------------------------------------------------------------------------- public op
# Device types -> whether autocast exists for them (meta has none: asking it raises). Filled
# ahead for the usual types because Dynamo cannot trace ``torch.amp.is_autocast_available`` on
# torch 2.11 (``torch.compile(fullgraph=True)`` raised there), while a dict lookup it traces.
_AUTOCAST_AVAILABLE = {t: torch.amp.is_autocast_available(t) for t in ("cpu", "cuda", "meta")}


def _autocast(tensors, device_type: str):
    """Follow autocast like ``F.linear``: the matmul operands run in the autocast dtype."""
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:                   # another device type: asked once, outside tracing
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(
            device_type)
    if not available or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors]


def _flags(name: str, values, K: int) -> list:
    flags = [bool(v) for v in as_list(values, name, "K booleans (a list or tuple)")]
    if len(flags) != K:
        raise ValueError(f"{name} must have K = {K} entries (K = gates.shape[-1]), "
                         f"got {len(flags)}")
    return flags


def gated_lora_linear(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      lora_A: torch.Tensor, lora_B: torch.Tensor, gates: torch.Tensor,
                      rank_offsets: RankOffsets = None, scaling: Scaling = None,
                      *, trainable_adapters: Optional[Sequence[bool]] = None,
                      nonzero_gates: Optional[Sequence[bool]] = None,
                      dropout: float = 0.0,
                      backend: Optional[str] = None) -> torch.Tensor:
    """``y = x @ W^T + b + sum_k g_k * s_k * (drop(x) @ A_k^T) @ B_k^T`` through the fused path.

    Args:
        x: ``(..., D_in)`` input.
        weight: ``(D_out, D_in)`` base weight; ``bias``: ``(D_out,)`` or ``None``. ``weight=None``
            (then ``bias`` must be ``None``) is the LoRA-only op: the adapter term alone,
            ``(S * G_E) @ B_cat^T`` with ``D_out`` from ``lora_B``, for a base the kernels
            cannot read (a quantized layer runs its own forward and adds this).
        lora_A: ``(R, D_in)`` packed down-projections; ``lora_B``: ``(D_out, R)`` packed
            up-projections, ``R = sum r_k``.
        gates: ``(K,)`` one gate per adapter, or ``x.shape[:-1] + (K,)`` one per row and adapter.
        rank_offsets: ``(K+1,)`` ints, adapter ``k`` owns columns ``[o_k, o_{k+1})``; ``None``
            means equal ranks ``R // K``.
        scaling: per-adapter ``s_k``, finite real numbers (``(K,)`` tensor, list or float);
            ``None`` means 1.0.
        trainable_adapters: optional ``K`` booleans: ``dA``/``dB`` are computed only for these
            adapters' columns (the others' gradient is zero). In continual learning the module
            passes its unfrozen adapters, so frozen ones cost no weight-gradient GEMM even though
            ``lora_A``/``lora_B`` as a whole require grad. ``None``: every adapter.
        nonzero_gates: optional ``K`` booleans, a host-side hint: ``False`` promises that
            adapter ``k``'s gate is zero in every row, so it is skipped without reading the
            gates (useful for per-row gates, which are never read). Ignored when gates train.
        dropout: LoRA dropout probability ``p`` in ``[0, 1)`` on the adapters' input only (as in
            PEFT): ``drop(x) = x * keep / (1 - p)``, one fresh mask per call shared by the
            adapters, never stored (``lora_dropout.py``). The op applies it whenever ``p > 0``;
            the module passes ``p`` in training mode only.
        backend: ``"torch"``, ``"triton"`` or ``"hybrid"`` to force one (testing, benchmarks);
            ``None`` picks by device (``autotune.implementation``; CUDA: the fastest of the
            three, measured once per shape bucket; CPU: PyTorch, or the kernels under
            ``TRITON_INTERPRET=1``).

    Differentiable in ``x``, ``weight``, ``bias``, ``lora_A``, ``lora_B`` and ``gates``, each only
    where it requires grad. Under ``torch.func`` transforms (``grad``, ``jacrev``, ``jvp``,
    ``jacfwd``, ``vmap``) the op computes through the unfused reference, which they support.
    Adapters whose gate is exactly zero everywhere (and does not require grad) are skipped
    entirely where the host knows it without a device read: frozen per-adapter gates on the CPU
    (read at every call) or ``nonzero_gates``; elsewhere a zero gate multiplies (``plan.py``).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {tuple(BACKENDS)}, got {backend!r}")
    if isinstance(x, torch.Tensor):
        x, weight, bias, lora_A, lora_B = _autocast([x, weight, bias, lora_A, lora_B],
                                                    x.device.type)
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    if lora_A.dtype != x.dtype:
        # A float32 bank beside a half-precision x (PEFT's adapter dtype): the kernels read one
        # dtype, so the bank is rounded to x's; autograd casts dA/dB back to float32.
        lora_A, lora_B = lora_A.to(x.dtype), lora_B.to(x.dtype)
    K = p.num_adapters
    grad_adapters = [True] * K if trainable_adapters is None else _flags(
        "trainable_adapters", trainable_adapters, K)
    hint = None if nonzero_gates is None else _flags("nonzero_gates", nonzero_gates, K)
    p_drop = lora_dropout.check_p(dropout)
    if _func_transform():
        return _through_reference(x, weight, bias, lora_A, lora_B, gates, p, grad_adapters,
                                  p_drop)
    x2d, gates2d = p.x2d, p.gates2d
    grad_on = torch.is_grad_enabled()
    needs = [grad_on and t is not None and t.requires_grad
             for t in (x2d, weight, bias, lora_A, lora_B, gates2d)]
    # (inf/NaN gates take the same path as any other: every spelling of the gates gives the
    # same IEEE result, docs/MATH.md#4-public-api-contract)
    active, _ = decide_active(p, needs[5], hint)
    # A seed only when an adapter is active (else nothing to drop) and there is data.
    seed = None
    if p_drop > 0 and active and not _is_empty(x2d, lora_B):
        # (the original forward's seed in a gradient-checkpointing recompute)
        seed = recompute_seeds.call_seed(x2d.device)
        lora_dropout.record(seed, x2d.shape[0], x2d.shape[1], p_drop)
    else:
        p_drop = 0.0
    if direct_ok((x, weight, bias, lora_A, lora_B, gates)):
        if any(needs):
            y2d = _GatedLoRA.apply(x2d, weight, bias, lora_A, lora_B, gates2d, p, active,
                                   grad_adapters, backend or "", needs, p_drop, seed)
        else:
            plan = pack(active, lora_A, lora_B, p.rank_offsets, p.scaling, x2d.dtype)
            drop = _drop(p_drop, seed)
            be = autotune.select(x2d, weight, plan, gates2d, needs, backend, drop)
            y2d, _ = op_math.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan, be, drop)
    else:
        y2d, _ = _gated_lora_fwd(x2d, weight, bias, lora_A, lora_B, gates2d, p.rank_offsets,
                                 p.scaling, list(active), grad_adapters, backend or "", needs,
                                 p_drop, seed)
    # Not a view of y2d (what matmul does too): FSDP2 warns that in-place ops on a returned view
    # would bypass its pre-backward hook.
    return torch.ops.aten._unsafe_view(y2d, (*p.lead_shape, lora_B.shape[0]))
