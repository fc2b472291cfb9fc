"""The eager dispatch path: the op's math called directly, without the custom-op dispatcher.

Calling a ``torch.library.custom_op`` from Python costs tens of microseconds of host time per call
(boxing 11 arguments through the dispatcher, aliasing checks and, when autograd records the call,
``torch._library.utils.fill_defaults``, which walks the schema once per argument). On the GPU the
forward then waits for the zero-gate host sync, so that time is not hidden behind kernels.

For a plain eager call nothing the dispatcher does changes the result, so ``gated_lora_linear``
runs ``compute.forward`` inside a ``torch.autograd.Function`` instead. The forward decides the
active adapters once and the backward re-packs that set (no second host sync). The custom ops
stay the path whenever the dispatcher matters (``direct_ok`` is False): under ``torch.compile`` or
``torch.export`` tracing, under a dispatch or torch-function mode (fake tensors, profilers that
count ops), under functorch transforms, for tensor subclasses; and for a double backward.
"""
from __future__ import annotations

import torch

from . import backends, compute
from .plan import make_plan, pack

# Exact types only: a subclass may override dispatch (FakeTensor, DTensor); nn.Parameter does not.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def direct_ok(tensors) -> bool:
    """True when running the op's math directly is indistinguishable from dispatching the op."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return False
    return all(t is None or type(t) in _PLAIN_TYPES for t in tensors)


def run(p, weight, bias, lora_A, lora_B, keep_zero: bool, grad_adapters: list,
        backend: str) -> torch.Tensor:
    """``y2d`` of the validated problem ``p``, recording the autograd function when needed."""
    x2d, gates2d = p.x2d, p.gates2d
    # (plain Python rather than torch._C._any_requires_grad: the GPU machine runs an older torch)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x2d, weight, bias, lora_A, lora_B, gates2d)):
        return _GatedLoRA.apply(x2d, weight, bias, lora_A, lora_B, gates2d, p, keep_zero,
                                grad_adapters, backend)
    plan = make_plan(p, keep_zero)
    y, _ = compute.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan,
                           backends.select_backend(x2d, backend or None))
    return y


class _GatedLoRA(torch.autograd.Function):
    """Forward and backward of the op on plain tensors; saves what the custom op saves."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, lora_A, lora_B, gates2d, p, keep_zero, grad_adapters,
                backend):
        plan = make_plan(p, keep_zero)
        y, S = compute.forward(x2d, weight, bias, lora_A, lora_B, gates2d, plan,
                               backends.select_backend(x2d, backend or None))
        ctx.save_for_backward(x2d, weight, lora_A, lora_B, gates2d, S)
        # Only the active set is kept (no tensors outside save_for_backward, so saved-tensor
        # hooks see everything the backward holds); the backward re-packs without a host sync.
        ctx.active = () if plan is None else plan.active
        ctx.static = (p.rank_offsets, p.scaling, keep_zero, grad_adapters, backend)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, lora_A, lora_B, gates2d, S = ctx.saved_tensors
        rank_offsets, scaling, keep_zero, grad_adapters, backend = ctx.static
        need = ctx.needs_input_grad
        needs = [need[0], need[1], ctx.has_bias and need[2], need[3], need[4], need[5]]
        none = (None,) * 4                 # p, keep_zero, grad_adapters, backend
        if not any(needs):
            return (None,) * 6 + none
        if torch.is_grad_enabled() or not direct_ok((dy,)):
            # create_graph, or a mode entered for the backward only: the registered op, as the
            # custom op's own autograd formula calls it (it re-plans from the saved gates).
            grads = torch.ops.litelora_fast.gated_lora_bwd(
                dy, x2d, weight, lora_A, lora_B, gates2d, S, rank_offsets, scaling, keep_zero,
                grad_adapters, backend, needs)
            return (*(g if n else None for g, n in zip(grads, needs)), *none)
        plan = (pack(ctx.active, lora_A, lora_B, rank_offsets, scaling, x2d.dtype)
                if ctx.active else None)
        grads = compute.backward(dy, x2d, weight, lora_A, lora_B, gates2d, S, plan,
                                 grad_adapters, backends.select_backend(dy, backend or None),
                                 needs)
        return (*grads, *none)
