"""Swap ``nn.Linear`` layers of any model for ``GatedLoRALinear`` (:func:`inject`) and back
(:func:`extract_base`), choosing the layers by name the way PEFT's ``target_modules`` does.

Name matching (PEFT's rules, so a PEFT config's ``target_modules`` works unchanged):

- a list (tuple, set) of strings: a module matches when its full name equals an entry or ends with
  ``"." + entry`` (``"query"`` matches ``encoder.layer.0.attention.self.query``);
- one string: a regular expression that must match the *whole* name (``re.fullmatch``), e.g.
  ``r".*\\.(query|value)"``.

Only modules of type ``nn.Linear`` are swapped; other matches (containers such as ``attention``)
are left alone and listed in the summary. A ``GatedLoRALinear`` shares its base weight and bias
Parameters with the ``nn.Linear`` it replaces (no copy), so injection costs no memory and
:func:`extract_base` hands back the very same base Parameters.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Iterable, Union

import torch.nn as nn

from .layer import GatedLoRALinear

logger = logging.getLogger(__name__)

TargetModules = Union[str, Iterable[str]]

# Attribute set on the model by inject / extract_base: the names swapped, in module order.
INJECTED_ATTR = "llf_injected"
# Attribute set on each injected layer: the base Parameters' requires_grad before injection
# (from_linear freezes them), restored by extract_base.
_BASE_GRAD_ATTR = "_llf_base_requires_grad"


def _normalize_targets(target_modules: TargetModules):
    """Return a ``name -> bool`` predicate for ``target_modules``; bad values raise here."""
    if isinstance(target_modules, str):
        try:
            pattern = re.compile(target_modules)
        except re.error as err:
            raise ValueError(f"target_modules {target_modules!r} is not a valid regular "
                             f"expression: {err}") from None
        return lambda name: pattern.fullmatch(name) is not None
    if target_modules is None or not isinstance(target_modules, Iterable):
        raise TypeError("target_modules must be a list of module names or a regex string, "
                        f"got {type(target_modules).__name__}")
    targets = list(target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name at least one module (e.g. ['q_proj'])")
    bad = [t for t in targets if not isinstance(t, str) or not t]
    if bad:
        raise TypeError(f"target_modules entries must be non-empty strings, got {bad!r}")
    exact = set(targets)
    return lambda name: name in exact or any(name.endswith("." + t) for t in targets)


def _all_names(model: nn.Module) -> dict:
    """``id(module) -> [every name it is reachable by]``: a module shared by two parents (tied
    weights) is swapped once and re-attached under every name."""
    names: dict = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _short_list(names: list, limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _summary(verb: str, names: list) -> str:
    """``"swapped 12 layers (query x6, value x6): encoder.layer.0..., ..."``."""
    kinds = Counter(n.rpartition(".")[2] for n in names)
    kinds_text = ", ".join(f"{k} x{c}" for k, c in kinds.items())
    return f"{verb} {len(names)} layer(s) ({kinds_text}): {_short_list(names, 4)}"


def _report(message: str, verbose: bool) -> None:
    logger.info(message)
    if verbose:
        print(message)


def find_targets(model: nn.Module, target_modules: TargetModules) -> list:
    """Full names of the ``nn.Linear`` modules of ``model`` that ``target_modules`` selects.

    Raises ``ValueError`` when nothing is selected, listing the ``nn.Linear`` names the model has
    (so a typo such as ``"q_proj"`` on a BERT model, whose projections are ``query``/``value``,
    says what to write instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("inject swaps layers inside a model; wrap a bare nn.Linear with "
                        "GatedLoRALinear.from_linear instead")
    matches = _normalize_targets(target_modules)
    all_names = _all_names(model)
    linear, other, seen = [], [], set()
    for name, module in model.named_modules():
        if id(module) in seen or not any(matches(n) for n in all_names[id(module)] if n):
            continue
        seen.add(id(module))
        (linear if isinstance(module, nn.Linear) else other).append((name, module))
    for name, _ in linear:
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly and never calls its forward:
            # a swapped layer would be silently ignored.
            raise ValueError(f"target_modules matched {name!r}, the output projection of an "
                             "nn.MultiheadAttention, which never calls that module's forward; "
                             "it cannot be adapted by swapping the module")
    if not linear:
        available = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        injected = [n for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]
        message = f"target_modules={target_modules!r} matched no nn.Linear in the model"
        if other:
            message += (f"; it matched modules of other types, left alone: "
                        f"{_short_list([f'{n} ({type(m).__name__})' for n, m in other])}")
        if injected:
            message += f"; already injected: {_short_list(injected)}"
        message += (f". The model's nn.Linear modules are: {_short_list(available, 10)}"
                    if available else ". The model has no nn.Linear module")
        raise ValueError(message)
    return [name for name, _ in linear]


def inject(model: nn.Module, target_modules: TargetModules, rank: int = 8, alpha: float = 16,
           num_adapters: int = 0, gate: str = "per_adapter", verbose: bool = False) -> nn.Module:
    """Swap the ``nn.Linear`` layers that ``target_modules`` selects for ``GatedLoRALinear`` in
    place, and return ``model``.

    Args:
        model: any ``nn.Module`` (a Hugging Face model, a timm ViT, your own).
        target_modules: names as PEFT matches them (module docstring): a list of exact names or
            suffixes (``["query", "value"]``), or one regex matched against the whole name.
        rank, alpha: defaults of the adapters each layer will recruit (scaling ``alpha / rank``).
        num_adapters: adapters recruited right away in every swapped layer (``B`` at zero, so the
            output does not change); with 0 (the default) each layer returns exactly
            ``linear(x)`` until adapters are added.
        gate: ``"per_adapter"`` or ``"per_row"`` (see ``GatedLoRALinear``).
        verbose: also print the summary (it is always logged at INFO on ``litelora_fast.inject``).

    What was swapped is reported three ways: the summary line (logged, printed if ``verbose``),
    ``model.llf_injected`` (the list of swapped names, cumulative over calls), and
    :func:`injected_layers` (the ``GatedLoRALinear`` modules by name). The base Parameters are
    shared with the old layers and frozen; :func:`extract_base` restores their ``requires_grad``.
    Only the swapped layers are frozen: for adapter-only training call
    ``model.requires_grad_(False)`` before ``inject`` (adapters recruited later are trainable).
    """
    names = find_targets(model, target_modules)
    all_names = _all_names(model)
    for name in names:
        linear = model.get_submodule(name)
        base_grad = (linear.weight.requires_grad,
                     None if linear.bias is None else linear.bias.requires_grad)
        layer = GatedLoRALinear.from_linear(linear, rank=rank, alpha=alpha,
                                            num_adapters=num_adapters, gate=gate)
        setattr(layer, _BASE_GRAD_ATTR, base_grad)
        layer.train(linear.training)
        for alias in all_names[id(linear)]:
            _set_module(model, alias, layer)
    previous = [n for n in getattr(model, INJECTED_ATTR, []) if n not in names]
    setattr(model, INJECTED_ATTR, previous + names)
    _report(_summary(f"inject: swapped nn.Linear -> GatedLoRALinear (rank={rank}, "
                     f"alpha={alpha:g}) in", names), verbose)
    return model


def injected_layers(model: nn.Module) -> dict:
    """``{name: GatedLoRALinear}`` for every gated layer of ``model`` (each shared module once)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedLoRALinear)}


def extract_base(model: nn.Module, verbose: bool = False) -> nn.Module:
    """Undo :func:`inject`: replace every ``GatedLoRALinear`` of ``model`` by an ``nn.Linear``
    holding its base weight and bias (the same Parameters, no copy), in place, and return
    ``model``. The adapters are dropped, not merged. The base Parameters get back the
    ``requires_grad`` they had before ``inject`` (layers made another way keep theirs).

    ``model`` may itself be a ``GatedLoRALinear``: the ``nn.Linear`` is returned.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, GatedLoRALinear):
        return _to_linear(model)
    all_names = _all_names(model)
    layers = injected_layers(model)
    for layer in layers.values():
        linear = _to_linear(layer)
        for alias in all_names[id(layer)]:
            _set_module(model, alias, linear)
    if hasattr(model, INJECTED_ATTR):
        delattr(model, INJECTED_ATTR)
    _report(_summary("extract_base: restored GatedLoRALinear -> nn.Linear in", list(layers)),
            verbose)
    return model


def _to_linear(layer: GatedLoRALinear) -> nn.Linear:
    # Built on the meta device, then handed the layer's own Parameters: nothing is allocated.
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device="meta", dtype=layer.weight.dtype)
    linear.weight = layer.weight
    linear.bias = layer.bias
    base_grad = getattr(layer, _BASE_GRAD_ATTR, None)
    if base_grad is not None:
        layer.weight.requires_grad_(base_grad[0])
        if layer.bias is not None and base_grad[1] is not None:
            layer.bias.requires_grad_(base_grad[1])
    linear.train(layer.training)
    return linear
