"""What a ``GatedLoRALinear`` can wrap (the kinds of base layer) and the adapters' dtype rule.

Three kinds of base, told apart by :func:`base_kind`:

- ``"linear"``: an ``nn.Linear`` (or a subclass that keeps ``nn.Linear.forward``) with a floating
  weight ``(D_out, D_in)``. The fused kernels read ``W`` itself: one op for base and bank.
- ``"conv1d"``: Hugging Face's ``Conv1D`` (GPT-2 and its kin), ``y = x @ W + b`` with ``W``
  ``(D_in, D_out)``: PEFT's ``fan_in_fan_out``. The fused kernels read ``W^T``, a strided view
  (no copy), and the layer keeps the Conv1D's own Parameter, so state-dict keys do not change.
- ``"module"``: any other linear-like module, one the kernels cannot read: bitsandbytes
  ``Linear4bit`` / ``Linear8bitLt`` (QLoRA), other quantized layers, an ``nn.Linear`` subclass
  with its own ``forward``. The layer runs the base module's forward and adds the bank through the
  op's LoRA-only form (``weight=None``): the base is a black box that the adapters sit beside.

The adapter dtype rule (PEFT's ``autocast_adapter_dtype=True``): adapters and gates are float32
beside a float16/bfloat16 base, and beside a base whose weight is not floating (a quantized
one); otherwise they take the base's dtype. ``adapter_dtype=`` overrides it (e.g. the base's own
``torch.bfloat16`` to keep the whole model in bfloat16).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn as nn

KINDS = ("linear", "conv1d", "module")
HALF_DTYPES = (torch.float16, torch.bfloat16)


def conv1d_class():
    """transformers' ``Conv1D`` class when transformers is loaded (a model that holds one has
    imported it), else ``None``: nothing here imports transformers."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    cls = conv1d_class()
    return cls is not None and isinstance(module, cls)


def _floating_weight(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 2 and w.dtype.is_floating_point


def base_kind(module: nn.Module) -> Optional[str]:
    """``"linear"``, ``"conv1d"``, ``"module"`` (see the module docstring), or ``None`` when
    ``module`` is not linear-like (no ``in_features``/``out_features`` and not a Conv1D)."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward \
            and _floating_weight(module):
        return "linear"
    if is_conv1d(module):
        return "conv1d" if _floating_weight(module) and type(module).forward is \
            conv1d_class().forward else "module"
    if isinstance(module, nn.Linear) or all(
            isinstance(getattr(module, a, None), int) for a in ("in_features", "out_features")):
        return "module"
    return None


def is_linear_like(module: nn.Module) -> bool:
    """What PEFT's ``"all-linear"`` selects: ``nn.Linear`` (quantized subclasses included) and
    ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def features(module: nn.Module, kind: str) -> tuple:
    """``(in_features, out_features)`` of a base of ``kind``."""
    if kind == "conv1d":
        d_in, d_out = module.weight.shape
        return int(d_in), int(d_out)
    return int(module.in_features), int(module.out_features)


def default_adapter_dtype(base_dtype: Optional[torch.dtype]) -> torch.dtype:
    """float32 beside a half-precision or non-floating (quantized) base, else the base dtype."""
    if base_dtype is None or not base_dtype.is_floating_point or base_dtype in HALF_DTYPES:
        return torch.float32
    return base_dtype


def check_adapter_dtype(adapter_dtype) -> Optional[torch.dtype]:
    if adapter_dtype is not None and (not isinstance(adapter_dtype, torch.dtype)
                                      or not adapter_dtype.is_floating_point):
        raise TypeError(f"adapter_dtype must be None (the rule: float32 beside a half-precision "
                        f"or quantized base) or a floating torch.dtype, got {adapter_dtype!r}")
    return adapter_dtype
