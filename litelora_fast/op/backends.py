"""The op's six primitives (docs/DESIGN.md), three ways: plain PyTorch, the Triton kernels, and
the hybrid of the two.

- ``TorchBackend``: the CPU fast path and the cuBLAS composite on a GPU: one packed shrink GEMM,
  the gate scaling, ``addmm`` into the base output; its backward uses the same packed GEMMs.
- ``TritonBackend``: the kernels' launchers (``litelora_fast.kernels``), fused base-plus-adapter
  GEMMs included.
- ``HybridBackend``: cuBLAS for the compute-bound base GEMMs (``x W^T``, ``dy W``, ``dW``) and
  the kernels for the memory-bound LoRA work (the shrink with in-kernel dropout and gate scaling,
  the grad-shrink with gate-gradient partials, ``lora_weight_grads``, the masked dropout term of
  ``dx``): it never materialises the dropped ``x``, even where the fused GEMMs lose to cuBLAS.

All three take and return the same tensors, so the op's math (``op_math.py``) is written once
over any of them. Which one a call takes is decided in one place, ``autotune.implementation``.
"""
from __future__ import annotations

import torch

from . import lora_dropout
from .. import settings
from .op_math import as_dtype, expanded_gates, gated_columns


def launchers():
    """The kernels' launchers: the one place the backends reach ``litelora_fast.kernels``, the
    package that exports them lazily (importing triton costs about a second and a CPU-only run
    never needs it)."""
    from .. import kernels

    return kernels


class _Launcher:
    """A backend attribute that is the kernels' launcher of the same name (resolved on first
    use, so importing the backends imports no triton)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return getattr(launchers(), self.name)


class TorchBackend:
    """Packed plain-PyTorch GEMMs: the path CPU tensors take (and float64 everywhere).

    Gate arithmetic runs in ``col_scale``'s dtype: float32, or float64 for float64 inputs.
    """

    name = "torch"

    @staticmethod
    def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, S_out=None, dropout=None):
        if dropout is not None:
            x2d = lora_dropout.dropped(x2d, dropout[1], dropout[0])
        S = x2d @ lora_A.t()
        if S_out is not None:
            S = S_out.copy_(S)
        G_E = expanded_gates(gates2d, col_adapter, col_scale)
        SG = as_dtype(as_dtype(S, col_scale.dtype) * G_E, x2d.dtype)
        return S, SG

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
        if weight is None:             # the LoRA-only op: the adapter term alone (no bias)
            return SG @ lora_B.t()
        y = torch.addmm(bias, x2d, weight.t()) if bias is not None else x2d @ weight.t()
        if SG.shape[1] > 0:
            y.addmm_(SG, lora_B.t())
        return y

    @staticmethod
    def grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad):
        dS_g = as_dtype(dy @ lora_B, col_scale.dtype)
        dS = as_dtype(dS_g * expanded_gates(gates2d, col_adapter, col_scale), dy.dtype)
        P = dS_g * as_dtype(S, col_scale.dtype) * col_scale if need_gate_grad else None
        return dS, P

    @staticmethod
    def fused_dx(dy, weight, dS, lora_A, dropout=None):
        # weight None (the LoRA-only op) comes with active adapters (op_math): dx is their term.
        if dS is None or dS.shape[1] == 0:
            return dy @ weight
        if dropout is None:
            return dS @ lora_A if weight is None else (dy @ weight).addmm_(dS, lora_A)
        # The adapter term flows back through drop(x): mask it.
        p, seed = dropout
        keep = lora_dropout.scaled_keep(seed, dS.shape[0], lora_A.shape[1], p, dS.dtype,
                                        last_use=True)   # dx is a call's last use of its mask
        term = dS @ lora_A
        return term.mul_(keep) if weight is None else (dy @ weight).addcmul_(term, keep)

    @staticmethod
    def matmul_tn(a, b, out_dtype):
        return as_dtype(a.t() @ b, out_dtype)

    @staticmethod
    def lora_weight_grads(x2d, dy, dS, SG, out_dtype, gates=None, dropout=None):
        """``(dS^T @ drop(x2d), dy^T @ SG)``; with ``gates=(gates2d, col_adapter, col_scale)``
        the fourth operand is ``S`` and ``SG = S * G_E`` is formed here (as the kernel does)."""
        x_lora = x2d if dropout is None else lora_dropout.dropped(x2d, dropout[1], dropout[0])
        if gates is not None:
            SG = gated_columns(SG, *gates, SG.dtype)
        return as_dtype(dS.t() @ x_lora, out_dtype), as_dtype(dy.t() @ SG, out_dtype)


class TritonBackend:
    """The Triton kernels (compiled on CUDA, interpreted on the CPU under TRITON_INTERPRET=1).
    ``grad_shrink``, ``lora_weight_grads`` and ``matmul_tn`` are the launchers themselves."""

    name = "triton"
    grad_shrink = _Launcher()
    lora_weight_grads = _Launcher()
    matmul_tn = _Launcher()

    @staticmethod
    def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, S_out=None, dropout=None):
        # SG stays the launcher's own padded buffer (16-byte aligned rows for the TMA kernels).
        out = (S_out, None) if S_out is not None else None
        return launchers().shrink(x2d, lora_A, gates2d, col_adapter, col_scale, out=out,
                                  dropout=dropout)

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
        if weight is None:
            # The LoRA-only op: the fused tile with an empty base stretch (zero-width x and
            # weight: its loop over D_in takes no step), y written once. The pointer kernel:
            # a descriptor cannot address a zero-width operand.
            empty_w = lora_B.new_empty((lora_B.shape[0], 0))
            return launchers().fused_forward(x2d[:, :0], empty_w, None, SG, lora_B,
                                             variant="pointer")
        return launchers().fused_forward(x2d, weight, bias, SG, lora_B)

    @staticmethod
    def fused_dx(dy, weight, dS, lora_A, dropout=None):
        k = launchers()
        if weight is None and dropout is None:
            # The LoRA-only op: the fused tile with an empty base stretch, as in fused_forward.
            return k.fused_dx(dy[:, :0], lora_A.new_empty((0, lora_A.shape[1])), dS, lora_A,
                              variant="pointer")
        if dropout is None or dS is None or dS.shape[1] == 0:
            return k.fused_dx(dy, weight, dS, lora_A)
        # Only the adapter term is masked: base-only fused GEMM (zeros without a base), then
        # the masked term in place.
        dx = (k.fused_dx(dy, weight, None, None) if weight is not None else
              torch.zeros(dy.shape[0], lora_A.shape[1], dtype=dy.dtype, device=dy.device))
        return k.masked_addmm_(dx, dS, lora_A, dropout[1], dropout[0])


class HybridBackend(TritonBackend):
    """cuBLAS where it wins, the kernels where they win: ``TorchBackend``'s base GEMMs (``x W^T``
    with the expand ``addmm``-ed into it, ``dy W``, ``dW``) around the kernels' shrink,
    grad-shrink and ``lora_weight_grads``; with dropout the masked term of ``dx`` is the kernels'
    ``masked_addmm_``, so the dropped ``x`` is never materialised."""

    name = "hybrid"
    fused_forward = staticmethod(TorchBackend.fused_forward)
    matmul_tn = staticmethod(TorchBackend.matmul_tn)

    @staticmethod
    def fused_dx(dy, weight, dS, lora_A, dropout=None):
        if dropout is None or dS is None or dS.shape[1] == 0:
            return TorchBackend.fused_dx(dy, weight, dS, lora_A)
        dx = (dy @ weight if weight is not None else
              torch.zeros(dy.shape[0], lora_A.shape[1], dtype=dy.dtype, device=dy.device))
        return launchers().masked_addmm_(dx, dS, lora_A, dropout[1], dropout[0])


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` (read as triton reads it, ``settings.interpret``) asks for
    the Triton kernels on CPU tensors."""
    return settings.interpret()


# True while Triton's interpreter computes bfloat16 tl.dot correctly: only the test suite's
# patch (tests/bf16_interpreter.py) sets it. Unpatched, the interpreter multiplies bf16 bit
# patterns as integers (triton issue 11584), so bf16 CPU tensors take the PyTorch path.
INTERPRETER_BF16_EXACT = False


def interpreter_runs(dtype: torch.dtype) -> bool:
    """The interpreter computes the kernels right in ``dtype`` (bf16 only when patched)."""
    return dtype != torch.bfloat16 or INTERPRETER_BF16_EXACT


BACKENDS = {"torch": TorchBackend, "triton": TritonBackend, "hybrid": HybridBackend}
KERNEL_BACKENDS = ("triton", "hybrid")      # the ones that launch the kernels


def kernels_unusable(device: torch.device, dtype: torch.dtype):
    """Why the Triton kernels cannot run on this device and dtype, or ``None``."""
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the Triton kernels run on CUDA tensors only, got a {device.type} tensor"
    if not interpreter_requested():
        return ("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 (set before triton "
                "is imported) to run them on CPU tensors; got CPU tensors without it")
    if not interpreter_runs(dtype):
        return ("Triton's interpreter computes bfloat16 tl.dot wrongly (triton issue 11584), so "
                "bfloat16 CPU tensors cannot take the kernels under TRITON_INTERPRET=1")
    return None
