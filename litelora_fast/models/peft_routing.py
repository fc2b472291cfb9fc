"""``llf.route`` on a patched PEFT model: each row of the batch to its adapter, in training too.

PEFT's own ``adapter_names=`` refuses a model in training mode; under ``llf.patch_peft()`` the
routing is per-row gates of one ``gated_lora_linear`` call per layer, which trains like any
other. ``adapter_ids`` are adapter names (PEFT names its adapters) or ``None`` for the base,
``(batch,)`` per sample or ``(batch, seq)`` per token; or floating weights ``(batch, K)`` /
``(batch, seq, K)`` whose columns are the adapters ``names``. A row gets
``base(x) + sum_c w_c * scaling_c * B_c A_c x`` over the adapters ``c`` it is routed to.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from . import peft_patch
from .dist_tensors import unwrap


def peft_lora_layers(model: nn.Module) -> dict:
    """``{name: layer}`` of the PEFT LoRA linear layers (the classes the patch covers)."""
    return dict(peft_patch._lora_layers(unwrap(model)))


class PeftRouting:
    """The plan of one ``route`` block on a PEFT model: the routing columns' weights per unit
    (sample or token) and, per layer, its adapters' gates built from them once."""

    def __init__(self, model: nn.Module, adapter_ids, names: Optional[Sequence[str]],
                 parse_ids):
        layers = peft_lora_layers(model)
        unpatched = [n for n, m in layers.items() if not peft_patch.is_patched(m)]
        if unpatched:
            raise ValueError(f"route: PEFT layer {unpatched[0]!r} is not patched; PEFT routes "
                             "only with adapter_names= in eval mode (llf.patch_peft() or "
                             "llf.patch_peft_model(model) first)")
        merged = [n for n, m in layers.items() if m.merged]
        if merged:
            raise ValueError(f"route: PEFT layer {merged[0]!r} has merged adapters (inside its "
                             "base weight, so every row would get them); unmerge first")
        known = {a for m in layers.values() for a in m.lora_A.keys()}
        self.unit, self.batch_shape, spec = parse_ids(adapter_ids)
        if self.unit == "weights":
            self.unit = "sample" if len(self.batch_shape) == 1 else "token"
            cols = self._weight_columns(spec, names)
            weights = spec
        else:
            if names is not None:
                raise ValueError("route: names= labels the columns of a weighted (batch, K) "
                                 "routing; with names in adapter_ids leave it out")
            bad = [k for k in spec if k is not None and not isinstance(k, str)]
            if bad:
                raise TypeError(f"route: a PEFT model's adapters are named; got index {bad[0]!r} "
                                f"(use one of {sorted(known)})")
            cols = sorted({k for k in spec if k is not None})
            index = {c: i for i, c in enumerate(cols)}
            flat = torch.zeros(len(spec), len(cols))
            for row, k in enumerate(spec):
                if k is not None:
                    flat[row, index[k]] = 1.0
            weights = flat.reshape(*self.batch_shape, len(cols))
        unknown = sorted(set(cols) - known)
        if unknown:
            raise KeyError(f"route: no layer has adapter(s) {unknown}; the adapters are "
                           f"{sorted(known)}")
        self.columns, self.weights = cols, weights
        self.peft_layers = {id(m): n for n, m in layers.items()}
        self._gates: dict = {}

    def _weight_columns(self, weights, names):
        if names is None:
            raise ValueError("route: a weighted routing on a PEFT model needs names= (one "
                             "adapter name per column of the weights)")
        names = list(names)
        if len(names) != weights.shape[-1] or not all(isinstance(n, str) for n in names):
            raise ValueError(f"route: names must be {weights.shape[-1]} adapter names, one per "
                             f"column of the weights {tuple(weights.shape)}; got {names!r}")
        return names

    def forward(self, layer, x):
        """(What a ``GatedLoRALinear`` asks a routing: none of its layers is routed here.)"""
        return None

    def gates(self, layer, x: torch.Tensor, names: list) -> torch.Tensor:
        """Per-row gates ``x.shape[:-1] + (K,)`` for ``layer``'s adapters ``names``."""
        lname = self.peft_layers[id(layer)]
        if self.unit == "sample" and (x.dim() < 2 or x.shape[0] != self.batch_shape[0]):
            raise ValueError(f"route: layer {lname!r} got input {tuple(x.shape)}, whose batch "
                             f"dimension is not the routing's {self.batch_shape[0]} samples")
        if self.unit == "token" and tuple(x.shape[:-1]) != self.batch_shape:
            raise ValueError(f"route: layer {lname!r} got input {tuple(x.shape)}; a (batch, seq) "
                             f"routing {self.batch_shape} needs (batch, seq, D) inputs")
        A = layer.lora_A[names[0]].weight
        key = (tuple(names), A.device, A.dtype)
        if key not in self._gates:
            # the routing columns -> this layer's adapters (a column it lacks: no adapter)
            P = torch.zeros(len(self.columns), len(names), dtype=A.dtype, device=A.device)
            for c, col in enumerate(self.columns):
                if col in names:
                    P[c, names.index(col)] = 1.0
            self._gates[key] = self.weights.to(device=A.device, dtype=A.dtype) @ P
        g = self._gates[key]
        g = g.reshape(g.shape[0], *([1] * (x.dim() - g.dim())), *g.shape[1:])
        return g.expand(*x.shape[:-1], len(names))


def for_model(model: nn.Module, adapter_ids, names, parse_ids) -> Optional[PeftRouting]:
    """A :class:`PeftRouting` when ``model`` holds PEFT LoRA layers and no ``GatedLoRALinear``
    (``llf.inject``'s layers route as before), else ``None``. ``parse_ids``: ``routing.py``'s
    reading of ``adapter_ids`` (passed in: this module does not import ``routing``)."""
    from .inject import injected_layers

    inner = unwrap(model)
    if injected_layers(inner) or not peft_lora_layers(inner):
        return None
    return PeftRouting(model, adapter_ids, names, parse_ids)
