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

One call enters each step once, in order (docs/DESIGN.md, "Dispatch"): ``validation.validate_call``
(every argument) -> under ``torch.func``, the reference, and stop -> ``plan.plan_call`` (gradient
needs, the active set, the dropout seed: on the host, no device read, nothing cached) ->
``_dispatch`` (direct or custom ops) -> ``_forward`` (``plan.pack`` and ``autotune.select``, inside
the path, where the tensors are real even under ``torch.compile``) -> ``op_math.forward`` -> the
backend. The non-tensor arguments travel as one ``plan.OpArgs``, in its field order.

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

from . import autotune, op_math
from .backends import BACKENDS
from .plan import PLAIN_TYPES, OpArgs, pack, plan_call
from .reference import gated_lora_linear_ref
from .validation import Call, RankOffsets, Scaling, validate_call

__all__ = ["gated_lora_linear", "direct_ok"]

# Autograd's answer for the OpArgs after the six tensors: no gradient.
_NO_GRADS = (None,) * len(OpArgs._fields)


def _plan_and_backend(x2d, weight, lora_A, lora_B, gates2d, args: OpArgs):
    """The packed active bank of the call and its backend (keyed on the forward's needs)."""
    plan = pack(args.active, lora_A, lora_B, args.rank_offsets, args.scaling, x2d.dtype)
    be = autotune.select(x2d, weight, plan, gates2d, args.needs, args.backend or None, args.drop)
    return plan, be


def _forward(x2d, weight, bias, lora_A, lora_B, gates2d, args: OpArgs):
    """``(y, S, backend)``: the op's forward on either path."""
    plan, be = _plan_and_backend(x2d, weight, lora_A, lora_B, gates2d, args)
    y, S = op_math.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan, be, args.drop)
    return y, S, be


# ------------------------------------------------------------------------------- custom ops
# Their schemas list the six tensors, then OpArgs' fields in order (tests/test_op_path.py).
@torch.library.custom_op("litelora_fast::gated_lora_fwd", mutates_args=())
def _gated_lora_fwd(x2d: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    rank_offsets: list[int], scaling: list[float], active: list[int],
                    grad_adapters: list[bool], backend: str, needs: list[bool], p_drop: float,
                    seed: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``y`` ``(N, D_out)`` and ``S`` ``(N, R)``: active adapters' S first, then zeros."""
    args = OpArgs(rank_offsets, scaling, active, grad_adapters, backend, needs, p_drop, seed)
    y, S, _ = _forward(x2d, weight, bias, lora_A, lora_B, gates2d, args)
    return y, S


@_gated_lora_fwd.register_fake
def _(x2d, weight, bias, lora_A, lora_B, gates2d, *args):
    n = x2d.shape[0]
    return x2d.new_empty(n, lora_B.shape[0]), x2d.new_empty(n, lora_A.shape[0])


@torch.library.custom_op("litelora_fast::gated_lora_bwd", mutates_args=())
def _gated_lora_bwd(dy: torch.Tensor, x2d: torch.Tensor, weight: Optional[torch.Tensor],
                    lora_A: torch.Tensor, lora_B: torch.Tensor, gates2d: torch.Tensor,
                    S: torch.Tensor, grad_needs: list[bool], rank_offsets: list[int],
                    scaling: list[float], active: list[int], grad_adapters: list[bool],
                    backend: str, needs: list[bool], p_drop: float, seed: Optional[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor]:
    """Gradients ``(dx, dW, db, dA, dB, dg_rows)``; an unneeded one (``grad_needs``) is an empty
    tensor. ``needs`` are the forward's gradient needs: the backend choice is keyed on them."""
    args = OpArgs(rank_offsets, scaling, active, grad_adapters, backend, needs, p_drop, seed)
    plan, be = _plan_and_backend(x2d, weight, lora_A, lora_B, gates2d, args)
    grads = op_math.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan, grad_adapters,
                             be, grad_needs, args.drop)
    # Custom-op outputs must not alias each other: one fresh empty tensor per unneeded grad.
    return tuple(dy.new_empty(0) if g is None else g for g in grads)


@_gated_lora_bwd.register_fake
def _(dy, x2d, weight, lora_A, lora_B, gates2d, S, grad_needs, *args):
    no_w = weight is None      # the LoRA-only op: no dW (grad_needs[1] is False)
    shapes = [x2d.shape, (0,) if no_w else weight.shape, (lora_B.shape[0],), lora_A.shape,
              lora_B.shape, gates2d.shape]
    dtypes = [dy.dtype, dy.dtype if no_w else weight.dtype, dy.dtype, lora_A.dtype, lora_B.dtype,
              gates2d.dtype]
    return tuple(dy.new_empty(s if need else (0,), dtype=dt)
                 for s, dt, need in zip(shapes, dtypes, grad_needs))


def _split(inputs) -> tuple:
    """A custom op's or the direct path's inputs: ``(the six tensors, OpArgs)``."""
    return inputs[:-len(_NO_GRADS)], OpArgs(*inputs[-len(_NO_GRADS):])


def _setup_context(ctx, inputs, output):
    (x2d, weight, bias, lora_A, lora_B, gates2d), args = _split(inputs)
    _, S = output
    ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S, args.seed)
    ctx.args = args._replace(seed=None)      # the seed is a saved tensor
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dS_unused):
    x2d, weight, lora_A, lora_B, gates2d, S, seed = ctx.saved_tensors
    needs = op_math.needed_grads(ctx.needs_input_grad, ctx.has_bias)
    if not any(needs):
        return (None,) * len(needs) + _NO_GRADS
    grads = _gated_lora_bwd(dy, x2d, weight, lora_A, lora_B, gates2d, S, needs,
                            *ctx.args._replace(seed=seed))
    return (*(g if n else None for g, n in zip(grads, needs)), *_NO_GRADS)


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
    """Forward and backward of the op on plain tensors; takes and saves what the custom op does."""

    @staticmethod
    def forward(ctx, *inputs):
        (x2d, weight, bias, lora_A, lora_B, gates2d), args = _split(inputs)
        y, S, be = _forward(x2d, weight, bias, lora_A, lora_B, gates2d, args)
        # Only the plan's arguments and the backend are kept besides the saved tensors (no
        # tensors outside save_for_backward, so saved-tensor hooks see everything the backward
        # holds).
        ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S, args.seed)
        ctx.args, ctx.backend = args._replace(seed=None), be
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x2d, weight, lora_A, lora_B, gates2d, S, seed = ctx.saved_tensors
        args = ctx.args._replace(seed=seed)
        needs = op_math.needed_grads(ctx.needs_input_grad, ctx.has_bias)
        if not any(needs):
            return (None,) * len(needs) + _NO_GRADS
        # (the forward's backend, not chosen again; the bank re-packed from the active set)
        plan = pack(args.active, lora_A, lora_B, args.rank_offsets, args.scaling, x2d.dtype)
        grads = op_math.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan,
                                 args.grad_adapters, ctx.backend, needs, args.drop)
        return (*grads, *_NO_GRADS)


# ------------------------------------------------------------------------------- dispatch
def _dispatch(call: Call, args: OpArgs) -> torch.Tensor:
    """``y2d``: the op on the direct path when the dispatcher cannot matter, else through the
    custom ops (``direct_ok``); without any gradient need the direct path needs no autograd."""
    p = call.problem
    tensors = (p.x2d, p.weight, p.bias, p.lora_A, p.lora_B, p.gates2d)
    if not direct_ok((call.x, p.weight, p.bias, p.lora_A, p.lora_B, p.gates)):
        return _gated_lora_fwd(*tensors, *args)[0]
    if any(args.needs):
        return _GatedLoRA.apply(*tensors, *args)
    return _forward(*tensors, args)[0]


# ------------------------------------------------------------------------------- torch.func
def _func_transform() -> bool:
    """True under a ``torch.func`` transform (grad, vjp, jacrev, jvp, jacfwd, vmap) in eager
    mode (Dynamo does not model functorch's interpreter stack; it traces the custom ops)."""
    if torch.compiler.is_compiling():
        return False
    interpreter = torch._C._functorch.peek_interpreter_stack()
    return (interpreter is not None
            and interpreter.key() != torch._C._functorch.TransformType.Functionalize)


def _through_reference(call: Call) -> torch.Tensor:
    """The op under a ``torch.func`` transform: the unfused reference, whose plain PyTorch ops
    every transform supports (the custom op has no forward-mode or batching rule: ``jvp`` got
    a zero tangent, ``grad`` and ``vmap`` raised from inside torch). Same math; frozen adapters'
    columns (``trainable_adapters``) are detached so their gradient is zero, as on the fast
    paths. With dropout the reference draws its own mask (``vmap`` then needs ``randomness=``)."""
    p, grad_adapters = call.problem, call.grad_adapters
    lora_A, lora_B = p.lora_A, p.lora_B
    if not all(grad_adapters):
        o = p.rank_offsets
        train = torch.tensor([grad_adapters[k] for k in range(len(o) - 1)
                              for _ in range(o[k + 1] - o[k])], dtype=torch.bool,
                             device=lora_A.device)
        lora_A = torch.where(train[:, None], lora_A, lora_A.detach())
        lora_B = torch.where(train[None, :], lora_B, lora_B.detach())
    return gated_lora_linear_ref(call.x, p.weight, p.bias, lora_A, lora_B, p.gates,
                                 p.rank_offsets, p.scaling, dropout=call.p_drop)


# ------------------------------------------------------------------------------- public op
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
    call = validate_call(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling,
                         trainable_adapters, nonzero_gates, dropout, backend, BACKENDS)
    if _func_transform():
        return _through_reference(call)
    y2d = _dispatch(call, plan_call(call))
    # Not a view of y2d (what matmul does too): FSDP2 warns that in-place ops on a returned view
    # would bypass its pre-backward hook.
    p = call.problem
    return torch.ops.aten._unsafe_view(y2d, (*p.lead_shape, p.lora_B.shape[0]))
