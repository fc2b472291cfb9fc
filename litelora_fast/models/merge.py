"""``merge_and_unload``: fold every gated layer's adapters into its base weight and hand back a
model of plain ``nn.Linear`` layers (PEFT's ``merge_and_unload``), for inference or export.

The per-layer operations are :meth:`GatedLoRALinear.merge` / :meth:`GatedLoRALinear.unmerge`
(reversible, gates zeroed while merged); this one is final: the adapters are gone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn

from .inject import _linear_of, _unload, injected_layers
from ..module.layer import GatedLoRALinear


def merge_and_unload(model: nn.Module, adapters: Optional[Sequence] = None,
                     verbose: bool = False) -> nn.Module:
    """Replace every ``GatedLoRALinear`` of ``model`` by an ``nn.Linear`` whose weight is
    ``W + sum_k g_k * (alpha_k / r_k) * B_k A_k``, in place, and return ``model``.

    ``adapters``: names or indices to fold (default: all; an adapter with gate 0 adds nothing).
    The gates in effect are used: a ``set_gates`` tensor (LiteLoRA's task gates) if one is set,
    else the layer's ``gates``; adapters already merged with ``layer.merge`` stay in. The sum is
    formed in float32 (float64 for a float64 base) and rounded once to the base dtype. The base
    weight Parameter is updated in place (it is shared with the ``nn.Linear`` ``inject``
    replaced) and gets back the ``requires_grad`` it had before ``inject``, as do the Parameters
    ``inject(freeze_base=True)`` froze. Per-row gates
    (``gate="per_row"`` without ``set_gates``) cannot be merged: ``ValueError`` naming the layer.
    ``model`` may be a ``GatedLoRALinear``: the ``nn.Linear`` is returned.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = {"": model} if isinstance(model, GatedLoRALinear) else injected_layers(model)
    known = {n for layer in layers.values() for n in layer.adapter_names}
    unknown = [a for a in adapters or () if isinstance(a, str) and a not in known]
    if unknown:
        raise KeyError(f"merge_and_unload: no layer has adapter(s) {unknown}; the adapters are "
                       f"{sorted(known)}")
    deltas = {}
    for name, layer in layers.items():     # every check before the first change
        try:
            gates = layer._gate_values("merge_and_unload")
            chosen = [k for k in range(layer.num_adapters) if layer._merged[k] is None] \
                if adapters is None else [layer.adapter_index(a) for a in adapters
                                          if not isinstance(a, str) or a in layer.adapter_names]
        except (ValueError, IndexError, TypeError, KeyError) as err:
            raise type(err)(f"layer {name or type(model).__name__!r}: {err}") from None
        deltas[name] = layer.delta_weight([k for k in chosen if layer._merged[k] is None], gates)
    for name, layer in layers.items():
        layer._add_to_weight(deltas[name])
    if isinstance(model, GatedLoRALinear):
        return _linear_of(model)
    return _unload(model, layers, _linear_of,
                   "merge_and_unload: merged GatedLoRALinear -> nn.Linear in", verbose)
