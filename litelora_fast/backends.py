"""The five primitives of the op (see docs/DESIGN.md), twice: plain PyTorch and Triton.

``TorchBackend`` is the CPU fast path: one packed shrink GEMM, the gate scaling, ``addmm`` into the
base output; its backward uses the same packed GEMMs. ``TritonBackend`` forwards to the launchers in
``litelora_fast.kernels``. Both take and return the same tensors, so the autograd op in ``ops.py``
is written once.
"""
from __future__ import annotations

import os
from typing import Optional

import torch


def expanded_gates(gates2d: torch.Tensor, col_adapter: torch.Tensor,
                   col_scale: torch.Tensor) -> torch.Tensor:
    """``G_E`` in ``col_scale``'s dtype (float32; float64 on the float64 path): ``(R_act,)`` for
    per-adapter gates (row stride 0), else ``(N, R_act)``."""
    # index_select takes the int32 table as is (no int64 copy of it per call).
    if gates2d.stride(0) == 0 or gates2d.shape[0] == 1:
        return as_dtype(gates2d[0], col_scale.dtype).index_select(0, col_adapter) * col_scale
    return as_dtype(gates2d, col_scale.dtype).index_select(1, col_adapter) * col_scale


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the dispatcher round trip when ``t`` already has that dtype."""
    return t if t.dtype == dtype else t.to(dtype)


class TorchBackend:
    """Packed plain-PyTorch GEMMs: the path CPU tensors take (and float64 everywhere).

    Gate arithmetic runs in ``col_scale``'s dtype: float32, or float64 for float64 inputs.
    """

    name = "torch"

    @staticmethod
    def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, S_out=None):
        S = x2d @ lora_A.t()
        if S_out is not None:
            S = S_out.copy_(S)
        G_E = expanded_gates(gates2d, col_adapter, col_scale)
        SG = as_dtype(as_dtype(S, col_scale.dtype) * G_E, x2d.dtype)
        return S, SG

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
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
    def fused_dx(dy, weight, dS, lora_A):
        dx = dy @ weight
        if dS is not None and dS.shape[1] > 0:
            dx.addmm_(dS, lora_A)
        return dx

    @staticmethod
    def matmul_tn(a, b, out_dtype):
        return as_dtype(a.t() @ b, out_dtype)


class TritonBackend:
    """The Triton kernels (compiled on CUDA, interpreted on the CPU under TRITON_INTERPRET=1)."""

    name = "triton"

    @staticmethod
    def shrink(x2d, lora_A, gates2d, col_adapter, col_scale, S_out=None):
        from .kernels import forward
        out = None
        if S_out is not None:
            out = (S_out, torch.empty_like(S_out, memory_format=torch.contiguous_format))
        return forward.shrink(x2d, lora_A, gates2d, col_adapter, col_scale, out=out)

    @staticmethod
    def fused_forward(x2d, weight, bias, SG, lora_B):
        from .kernels import forward
        return forward.fused_forward(x2d, weight, bias, SG, lora_B)

    @staticmethod
    def grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale, need_gate_grad):
        from .kernels import backward
        return backward.grad_shrink(dy, lora_B, S, gates2d, col_adapter, col_scale,
                                    need_gate_grad)

    @staticmethod
    def fused_dx(dy, weight, dS, lora_A):
        from .kernels import backward
        return backward.fused_dx(dy, weight, dS, lora_A)

    @staticmethod
    def matmul_tn(a, b, out_dtype):
        from .kernels import backward
        return backward.matmul_tn(a, b, out_dtype)


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` asks for the Triton kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def select_backend(x: torch.Tensor, override: Optional[str] = None):
    """CUDA -> Triton; CPU -> the PyTorch fast path unless the interpreter is requested.

    float64 always takes the PyTorch path: Hopper tensor cores have no fp64 mode worth a kernel,
    and float64 is the dtype of gradcheck and of the oracle.
    """
    if override is not None:
        return {"torch": TorchBackend, "triton": TritonBackend}[override]
    if x.dtype == torch.float64:
        return TorchBackend
    if x.is_cuda or (x.device.type == "cpu" and interpreter_requested()):
        return TritonBackend
    return TorchBackend
