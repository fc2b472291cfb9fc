"""The five primitives of the op (see docs/DESIGN.md), twice: plain PyTorch and Triton.

``TorchBackend`` is the CPU fast path and the cuBLAS composite on a GPU: one packed shrink GEMM,
the gate scaling, ``addmm`` into the base output; its backward uses the same packed GEMMs.
``TritonBackend`` forwards to the launchers in ``litelora_fast.kernels``. Both take and return the
same tensors, so the op's math (``op_math.py``) is written once over either.

``select_backend`` holds the fixed rules (device, dtype, interpreter, empty problems, a forced
choice); on CUDA, ``autotune.py`` then picks between the two by measurement.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from . import lora_dropout
from .op_math import as_dtype, expanded_gates, gated_columns


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
        keep = lora_dropout.keep_mask(seed, dS.shape[0], lora_A.shape[1], p)
        term = (dS @ lora_A) * keep.to(dS.dtype) * (1.0 / (1.0 - p))
        return term if weight is None else (dy @ weight).add_(term)

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
    """The Triton kernels (compiled on CUDA, interpreted on the CPU under TRITON_INTERPRET=1)."""

    name = "triton"

    @staticmethod
    def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, S_out=None, dropout=None):
        from .kernels import forward
        # SG stays the launcher's own padded buffer (16-byte aligned rows for the TMA kernels).
        out = (S_out, None) if S_out is not None else None
        return forward.shrink(x2d, lora_A, gates2d, col_adapter, col_scale, out=out,
                              dropout=dropout)

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
        from .kernels import forward
        if weight is None:
            # The LoRA-only op: the fused tile with an empty base stretch (zero-width x and
            # weight: its loop over D_in takes no step), y written once. The pointer kernel:
            # a descriptor cannot address a zero-width operand.
            empty_w = lora_B.new_empty((lora_B.shape[0], 0))
            return forward.fused_forward(x2d[:, :0], empty_w, None, SG, lora_B, variant="pointer")
        return forward.fused_forward(x2d, weight, bias, SG, lora_B)

    @staticmethod
    def grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad):
        from .kernels import backward
        return backward.grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale,
                                    need_gate_grad)

    @staticmethod
    def fused_dx(dy, weight, dS, lora_A, dropout=None):
        from .kernels import backward
        if weight is None and dropout is None:
            # The LoRA-only op: the fused tile with an empty base stretch, as in fused_forward.
            return backward.fused_dx(dy[:, :0], lora_A.new_empty((0, lora_A.shape[1])), dS,
                                     lora_A, variant="pointer")
        if dropout is None or dS is None or dS.shape[1] == 0:
            return backward.fused_dx(dy, weight, dS, lora_A)
        # Only the adapter term is masked: base-only fused GEMM (zeros without a base), then
        # the masked term in place.
        from .kernels.dropout import masked_addmm_
        p, seed = dropout
        dx = (backward.fused_dx(dy, weight, None, None) if weight is not None else
              torch.zeros(dy.shape[0], lora_A.shape[1], dtype=dy.dtype, device=dy.device))
        return masked_addmm_(dx, dS, lora_A, seed, p)

    @staticmethod
    def matmul_tn(a, b, out_dtype):
        from .kernels import backward
        return backward.matmul_tn(a, b, out_dtype)

    @staticmethod
    def lora_weight_grads(x2d, dy, dS, SG, out_dtype, gates=None, dropout=None):
        """``(dS^T @ x2d, dy^T @ SG)``: both LoRA weight gradients from one GEMM launch. With
        ``gates=(gates2d, col_adapter, col_scale)`` the fourth operand is ``S`` and the kernel
        forms ``SG = S * G_E`` itself (no elementwise launches before it). ``dropout=(p, seed)``:
        ``dA = dS^T @ drop(x2d)``, the mask regenerated in the kernel."""
        from .kernels import backward
        return backward.lora_weight_grads(x2d, dy, dS, SG, out_dtype, gates=gates,
                                          dropout=dropout)


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` asks for the Triton kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


BACKENDS = {"torch": TorchBackend, "triton": TritonBackend}
_warned_bf16 = False


def _triton_unusable(x: torch.Tensor) -> Optional[str]:
    """Why the Triton kernels cannot run on ``x``'s device and dtype, or ``None``."""
    if x.device.type == "cuda":
        return None
    if x.device.type != "cpu":
        return f"the Triton kernels run on CUDA tensors only, got a {x.device.type} tensor"
    if not interpreter_requested():
        return ("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 (set before triton "
                "is imported) to run them on CPU tensors; got CPU tensors without it")
    if x.dtype == torch.bfloat16:
        return ("Triton's interpreter computes bfloat16 tl.dot wrongly (triton issue 11584), so "
                "bfloat16 CPU tensors cannot take the kernels under TRITON_INTERPRET=1")
    return None


def select_backend(x: torch.Tensor, override: Optional[str] = None, empty: bool = False):
    """The fixed part of the choice: CUDA -> Triton; CPU -> the PyTorch fast path unless the
    interpreter is requested.

    Always the PyTorch path: float64 (Hopper tensor cores have no fp64 mode worth a kernel, and
    float64 is the dtype of gradcheck and of the oracle), meta tensors, and ``empty`` problems
    (a zero-size N, D_in or D_out: nothing for a kernel to do, even when ``"triton"`` is forced).
    bfloat16 under the interpreter warns once and takes the PyTorch path. ``override`` forces one;
    a forced ``"triton"`` that cannot run raises ``ValueError`` saying why (instead of a crash
    inside Triton).
    """
    if override is not None:
        if override not in BACKENDS:
            raise ValueError(f"backend must be None, 'torch' or 'triton', got {override!r}")
        if override == "triton":
            why = _triton_unusable(x)
            if why is not None:
                raise ValueError(f"backend='triton': {why}")
            if empty:
                return TorchBackend        # nothing to launch: zeros and the bias, in PyTorch
        return BACKENDS[override]
    if x.dtype == torch.float64 or empty or x.is_meta:
        return TorchBackend
    if x.is_cuda:
        return TritonBackend
    if x.device.type == "cpu" and interpreter_requested():
        if x.dtype == torch.bfloat16:
            global _warned_bf16
            if not _warned_bf16:
                _warned_bf16 = True
                warnings.warn("TRITON_INTERPRET=1 with bfloat16 tensors: Triton's interpreter "
                              "computes bfloat16 tl.dot wrongly (triton issue 11584), so these "
                              "calls take the PyTorch path", RuntimeWarning, stacklevel=3)
            return TorchBackend
        return TritonBackend
    return TorchBackend
