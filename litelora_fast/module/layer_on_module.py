"""``GatedLoRAOnModule``: a ``GatedLoRALinear`` over a base module the kernels cannot read.

A QLoRA base (bitsandbytes ``Linear4bit``, ``Linear8bitLt``) stores its weight quantized, so the
fused kernels, which read ``W``, cannot run it. Here the base is a black box, as in PEFT: the
layer runs the base module's own forward and adds the bank through the op's LoRA-only form,
``gated_lora_linear(x, None, None, lora_A, lora_B, gates, ...)`` (the shrink and the gated
expand, in-kernel dropout, every adapter and gate gradient; no ``W`` in the kernel):

    y = base(x) + sum_k g_k * s_k * (drop(x) @ A_k^T) @ B_k^T

Everything the bank does on an ``nn.Linear`` works here too (recruit, freeze, remove, gates,
``set_gates``, per-row routing, dropout, LiteLoRA, state dict), except folding adapters into a
weight that is stored quantized: :meth:`merge` raises and says what to do instead.

Precision follows PEFT's bitsandbytes layers: the adapters are float32 (``base_layers``); without
autocast ``x`` is cast to the adapters' dtype for the adapter term and the term back to the base
output's dtype; under autocast the term runs in the autocast dtype.

The base module is registered as ``base_layer`` (state-dict keys ``...base_layer.weight`` and the
quantization state bitsandbytes writes, as under PEFT); ``layer.weight``/``layer.bias`` read the
base's.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import base_layers, bnb_cpu_packing
from .packed_bank import cat_bank
from .layer import GatedLoRALinear
from ..op.ops import gated_lora_linear
from ..op.reference import gated_lora_linear_ref


class GatedLoRAOnModule(GatedLoRALinear):
    """``y = base_layer(x) + sum_k g_k * (alpha_k / r_k) * (x @ A_k^T) @ B_k^T``; build it with
    ``GatedLoRALinear.from_linear(base)`` (or :func:`litelora_fast.models.inject`)."""

    fan_in_fan_out = False

    @property
    def weight(self):
        return self.base_layer.weight

    @property
    def bias(self):
        return getattr(self.base_layer, "bias", None)

    @classmethod
    def wrap(cls, base: nn.Module, rank: int = 8, alpha: float = 16, num_adapters: int = 0,
             gate: str = "per_adapter", dropout: float = 0.0,
             adapter_dtype: Optional[torch.dtype] = None) -> "GatedLoRAOnModule":
        """Wrap ``base`` (kept as ``base_layer``, frozen; not copied)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        d_in, d_out = base_layers.features(base, "module")
        layer._init_settings(d_in, d_out, rank, alpha, num_adapters, gate, dropout)
        layer.base_layer = base
        base.requires_grad_(False)
        layer._init_bank(adapter_dtype, num_adapters)
        return layer

    def base_weight(self) -> torch.Tensor:
        raise TypeError(f"the base is a {type(self.base_layer).__name__}, whose weight the "
                        "kernels cannot read; the layer runs its forward instead")

    def _base_dtype(self) -> Optional[torch.dtype]:
        dtype = getattr(self.base_layer, "compute_dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else self.weight.dtype

    def _reset_base(self) -> None:
        """The base module is someone else's (possibly quantized): never re-initialised."""

    def _check_dtype(self, x: torch.Tensor) -> None:
        """The base module casts its input itself (bitsandbytes: to its compute dtype)."""

    def _adapter_compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """Autocast's dtype when it is on, else the adapters' (PEFT's bitsandbytes rule)."""
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return self.adapter_dtype

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        bnb_cpu_packing.unpack_for_grad(self.base_layer, x)
        return self.base_layer(x)

    def forward(self, x: torch.Tensor, gates: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input(x)
        routed = self._routed_forward(x, gates) if self.num_adapters else None
        if routed is not None:
            return routed
        y = self._base_forward(x)
        if self.num_adapters == 0:
            return y
        g = self._gates_for(x, gates)
        dtype = self._adapter_compute_dtype(x)
        lora_A, lora_B = self.packed_bank(dtype)
        delta = gated_lora_linear(x.to(dtype), None, None, lora_A, lora_B, g, self.rank_offsets,
                                  self.scaling, trainable_adapters=self._trainable(),
                                  dropout=self.dropout if self.training else 0.0)
        return y + delta.to(y.dtype)

    def reference_forward(self, x: torch.Tensor, gates: Optional[torch.Tensor] = None,
                          dropout_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The base module's forward plus the bank through the unfused reference."""
        self._check_input(x)
        y = self._base_forward(x)
        if self.num_adapters == 0:
            return y
        lora_A, lora_B = cat_bank(self.lora_A, self.lora_B)
        p = self.dropout if self.training else 0.0
        delta = gated_lora_linear_ref(x.to(lora_A.dtype), None, None, lora_A, lora_B,
                                      self._gates_for(x, gates), self.rank_offsets,
                                      self.scaling, dropout=p,
                                      dropout_mask=dropout_mask if p > 0 else None)
        return y + delta.to(y.dtype)

    def merge(self, adapters: Optional[Sequence] = None) -> list:
        raise ValueError(
            f"merge: the base is a {type(self.base_layer).__name__}, whose weight is stored "
            "quantized; folding the adapters into it would re-quantize them. Merge on a "
            "non-quantized copy instead: load the base model in float, llf.inject it the same "
            "way, copy the adapters in (llf.save_adapters / llf.load_adapters), then merge")

    def extra_repr(self) -> str:
        kind = type(self.base_layer).__name__
        return super().extra_repr().replace("base=", f"base_layer={kind} ", 1)


GatedLoRALinear.on_module_class = GatedLoRAOnModule
