"""Adapter management over a whole model, as PEFT's ``PeftModel`` offers it: turn the adapters off
for a block, add or delete an adapter in every gated layer, merge and unmerge.

- ``with disable_adapters(model):`` the exact base output inside (every gate 0 through
  ``set_gates``, merged adapters unmerged, any ``llf.route`` routing suspended); on exit each
  layer gets back its ``set_gates`` tensor (or none), its merged adapters and its routing;
- :func:`add_adapter` / :func:`delete_adapter`: by name, in every gated layer (or the ones
  ``target_modules`` selects);
- :func:`merge_adapters` / :func:`unmerge_adapters`: ``GatedLoRALinear.merge``/``unmerge`` in
  every layer (reversible, unlike ``llf.merge_and_unload``).

The weighted mix ``llf.set_active_adapters(model, {"a": 0.7, "b": 0.3})`` is in ``model_utils``;
``llf.load_adapters(model, dir, name="b")`` (beside the bank) in ``adapter_files``.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..module import routing_state
from .inject import _normalize_targets, injected_layers
from .dist_tensors import unwrap as _unwrap


def _layers(model: nn.Module, what: str) -> dict:
    layers = injected_layers(_unwrap(model))
    if not layers:
        raise ValueError(f"{what}: the {type(model).__name__} has no GatedLoRALinear layer "
                         "(llf.inject or llf.from_peft first)")
    return layers


def _known(layers: dict) -> list:
    return sorted({n for layer in layers.values() for n in layer.adapter_names})


@contextlib.contextmanager
def disable_adapters(model: nn.Module):
    """Run the block on the base model: every gated layer returns exactly its base output.

    Inside, each layer's gates are zeros given through ``set_gates`` (a zero gate makes its adapter
    inactive: the layer computes ``linear(x)`` alone), merged adapters are unmerged from ``W``,
    and an ``llf.route`` routing in effect is suspended. On exit, even after an exception, each
    layer gets back the ``set_gates`` tensor it had (or none) and its merged adapters are merged
    again; the ``gates`` Parameters are never written."""
    layers = _layers(model, "disable_adapters")
    saved = []
    try:
        for layer in layers.values():
            if layer.num_adapters == 0:
                continue
            merged = layer.merged_adapters
            layer.unmerge()
            saved.append((layer, layer.external_gates, merged))
            A = layer.lora_A[0]
            layer.set_gates(torch.zeros(layer.num_adapters, dtype=A.dtype, device=A.device))
        with routing_state.installed(None):
            yield model
    finally:
        for layer, external, merged in saved:
            layer.set_gates(None)
            if merged:
                layer.merge(merged)
            layer.set_gates(external)


def add_adapter(model: nn.Module, name: str, rank: Optional[int] = None,
                alpha: Optional[float] = None, target_modules=None) -> list:
    """Recruit adapter ``name`` in every gated layer of ``model`` (or those whose name
    ``target_modules`` selects, PEFT's matching rule) and return the layer names. ``rank`` and
    ``alpha`` default to each layer's. ``B`` starts at zero (the output is unchanged) and the gate
    at 1.0; the adapter trains (freeze it with ``layer.freeze_adapter``). ``ValueError`` when a
    layer already holds ``name`` (nothing is added then). Add adapters before wrapping the model in
    DDP/FSDP and before building the optimizer (they fix the parameter set)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    layers = _layers(model, "add_adapter")
    if target_modules is not None:
        match = _normalize_targets(target_modules)
        layers = {n: layer for n, layer in layers.items() if match(n)}
        if not layers:
            raise ValueError(f"add_adapter: target_modules={target_modules!r} selects none of "
                             f"the gated layers")
    taken = [n for n, layer in layers.items() if name in layer.adapter_names]
    if taken:
        raise ValueError(f"add_adapter: layer(s) {taken[:4]} already hold an adapter named "
                         f"{name!r}")
    for layer in layers.values():
        layer.add_adapter(rank=rank, alpha=alpha, name=name)
    return list(layers)


def delete_adapter(model: nn.Module, name: str) -> list:
    """Remove adapter ``name`` from every gated layer holding it and return those layer names;
    later adapters shift down by one index. ``KeyError`` when no layer holds it, ``ValueError``
    when it is merged somewhere (``unmerge_adapters`` first); nothing is removed then."""
    layers = _layers(model, "delete_adapter")
    holding = {n: layer for n, layer in layers.items() if name in layer.adapter_names}
    if not holding:
        raise KeyError(f"delete_adapter: no layer has adapter {name!r}; the adapters are "
                       f"{_known(layers)}")
    merged = [n for n, layer in holding.items()
              if layer.adapter_index(name) in layer.merged_adapters]
    if merged:
        raise ValueError(f"delete_adapter: adapter {name!r} is merged in layer(s) {merged[:4]}; "
                         "call llf.unmerge_adapters(model) first")
    for layer in holding.values():
        layer.remove_adapter(name)
    return list(holding)


def merge_adapters(model: nn.Module, adapters: Optional[Sequence[str]] = None) -> dict:
    """Fold adapters into every gated layer's base weight (``GatedLoRALinear.merge``: the output
    is unchanged up to one rounding of ``W``, merged adapters cost nothing, their gates read 0)
    and return ``{layer name: merged indices}``. ``adapters``: names (default: every adapter
    with a non-zero gate). Undo with :func:`unmerge_adapters`; ``llf.merge_and_unload`` is the
    final form. A layer using ``set_gates`` gates raises ``ValueError`` (nothing merged)."""
    layers = _layers(model, "merge_adapters")
    if adapters is not None:
        adapters = [adapters] if isinstance(adapters, str) else list(adapters)
        unknown = [a for a in adapters if a not in _known(layers)]
        if unknown:
            raise KeyError(f"merge_adapters: no layer has adapter(s) {unknown}; the adapters "
                           f"are {_known(layers)}")
    external = [n for n, layer in layers.items() if layer.external_gates is not None]
    if external:
        raise ValueError(f"merge_adapters: layer(s) {external[:4]} take their gates from "
                         "set_gates; call set_gates(None) first or use llf.merge_and_unload")
    done = {}
    for lname, layer in layers.items():
        chosen = None if adapters is None else [a for a in adapters if a in layer.adapter_names]
        if chosen == []:
            continue
        done[lname] = layer.merge(chosen)
    return done


def unmerge_adapters(model: nn.Module) -> dict:
    """Undo :func:`merge_adapters` in every gated layer; returns ``{layer name: indices}``."""
    return {n: layer.unmerge() for n, layer in _layers(model, "unmerge_adapters").items()}
