"""PEFT-style conveniences over a whole model: which adapters are on, what trains.

- :func:`set_active_adapters`: turn adapters on by name (``from_peft`` keeps PEFT's names) or
  index in every gated layer, the others off (gate 1 / gate 0, like PEFT's ``set_adapter``), or
  a weighted mix ``{"a": 0.7, "b": 0.3}`` (gate = weight);
- :func:`trainable_parameters`: the Parameters that require grad (for an optimizer);
- :func:`print_trainable_parameters`: PEFT's one-line summary.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch
import torch.nn as nn

from .inject import injected_layers

AdapterKey = Union[int, str]


def set_active_adapters(model: nn.Module, adapters: Union[AdapterKey, Sequence[AdapterKey],
                                                         Mapping[AdapterKey, float]]) -> None:
    """Set every per-adapter gate of ``model``'s gated layers to 1.0 for ``adapters`` (names or
    indices, one or a list) and 0.0 for the others; an adapter at gate 0 costs nothing. A dict
    ``{name or index: weight}`` is a weighted mix: each listed adapter's gate is its weight
    (a finite real number), the others 0, so a layer computes
    ``base + sum_k weight_k * (alpha_k / r_k) * B_k A_k x``.

    A name missing from some layers (an adapter that targets only some layers) is skipped there;
    a name no layer has raises ``KeyError`` listing the known ones. Trained gate values other
    than 1 are overwritten. Layers that take their gates from ``set_gates``, route per row, or
    hold merged adapters raise ``ValueError`` naming the layer (nothing is changed then).
    """
    if isinstance(adapters, Mapping):
        weights = dict(adapters)
        bad = {k: v for k, v in weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
        if bad:
            raise TypeError(f"set_active_adapters: the weights of a mix must be finite real "
                            f"numbers, got {bad!r}")
        keys = list(weights)
    else:
        keys = [adapters] if isinstance(adapters, (int, str)) else list(adapters)
        weights = {k: 1.0 for k in keys}
    if any(isinstance(k, bool) or not isinstance(k, (int, str)) for k in keys):
        raise TypeError(f"adapters must be names or indices, got {adapters!r}")
    layers = injected_layers(model)
    if not layers:
        raise ValueError(f"set_active_adapters: the {type(model).__name__} has no "
                         "GatedLoRALinear layer (llf.inject or llf.from_peft first)")
    known = {n for layer in layers.values() for n in layer.adapter_names}
    unknown = [k for k in keys if isinstance(k, str) and k not in known]
    if unknown:
        raise KeyError(f"no layer has adapter(s) {unknown}; the adapters are {sorted(known)}")
    plan = {}
    for name, layer in layers.items():      # every check before the first change
        problem = ("takes its gates from set_gates (set_gates(None) first)"
                   if layer.external_gates is not None else
                   "routes per row (gate='per_row')" if layer.gate_mode != "per_adapter" else
                   f"has merged adapters {layer.merged_adapters} (unmerge() first)"
                   if layer.merged_adapters else None)
        if problem:
            raise ValueError(f"set_active_adapters: layer {name!r} {problem}")
        try:
            plan[name] = {layer.adapter_index(k): float(weights[k]) for k in keys
                          if not isinstance(k, str) or k in layer.adapter_names}
        except IndexError as err:
            raise IndexError(f"set_active_adapters: layer {name!r}: {err}") from None
    for name, layer in layers.items():
        with torch.no_grad():
            # float64 on the host: a weight reaches float64 gates unrounded.
            layer.gates.copy_(torch.tensor([plan[name].get(k, 0.0)
                                            for k in range(layer.num_adapters)],
                                           dtype=torch.float64))


def trainable_parameters(model: nn.Module) -> list:
    """The Parameters of ``model`` that require grad, each once (tied ones too): hand them to an
    optimizer, ``torch.optim.AdamW(llf.trainable_parameters(model))``."""
    return [p for p in model.parameters() if p.requires_grad]


def print_trainable_parameters(model: nn.Module) -> tuple:
    """Print PEFT's line ``trainable params: T || all params: N || trainable%: P`` and return
    ``(T, N)`` (element counts; tied Parameters counted once)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    share = 100.0 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
          f"trainable%: {share:.4f}")
    return trainable, total
