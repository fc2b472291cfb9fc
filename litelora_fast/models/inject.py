"""Swap ``nn.Linear`` layers of any model for ``GatedLoRALinear`` (:func:`inject`) and back
(:func:`extract_base`), choosing the layers by name the way PEFT's ``target_modules`` does.

Name matching (PEFT's rules, so a PEFT config's ``target_modules`` works unchanged):

- a list (tuple, set) of strings: a module matches when its full name equals an entry or ends with
  ``"." + entry`` (``"query"`` matches ``encoder.layer.0.attention.self.query``);
- one string: a regular expression that must match the *whole* name (``re.fullmatch``), e.g.
  ``r".*\\.(query|value)"``.

- ``"all-linear"``: PEFT's wildcard, every linear-like layer except the output head
  (``peft_config.all_linear_names``); a ``peft.LoraConfig`` in place of ``target_modules`` brings
  its other fields too (``peft_config``).

Only linear-like modules are swapped: ``nn.Linear`` (fused), HF ``Conv1D`` and quantized
``nn.Linear`` subclasses such as bitsandbytes' ``Linear4bit`` (``base_layers``). A match that
PEFT would adapt and we cannot (``nn.Embedding``, ``nn.Conv1d/2d/3d``) raises ``ValueError``;
other matches (containers such as ``attention``) are left alone and listed in the error when
nothing else matched. ``layers_to_transform``/``layers_pattern`` with a string
``target_modules`` raise, as PEFT's ``LoraConfig`` does.

As PEFT does, :func:`inject` freezes everything but the adapters by default
(``freeze_base=True``), except the ``modules_to_save`` (e.g. a classifier head), which train;
:func:`extract_base` gives the frozen Parameters their ``requires_grad`` back. A
``GatedLoRALinear`` shares its base weight and bias Parameters with the ``nn.Linear`` it replaces
(no copy), so injection costs no memory and :func:`extract_base` hands back the very same base
Parameters.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from collections import Counter
from typing import Iterable, Optional, Union

import torch
import torch.nn as nn

from ..module import base_layers, routing_state
from ..module.layer import GatedLoRALinear
from ..op.validation import as_list
from .peft_config import (ALL_LINEAR, SEQ_CLS_HEAD_NAMES, all_linear_names, config_kwargs,
                          default_targets, excluded, is_lora_config, layer_index_ok,
                          layer_rank_alpha)

logger = logging.getLogger(__name__)

TargetModules = Union[str, Iterable[str]]
# Layers PEFT's LoRA adapts and ours does not: a target that matches one is refused (left alone,
# it would train fewer parameters than the same config in PEFT, silently).
PEFT_ONLY_TYPES = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Attribute set on the model by inject / extract_base: the names swapped, in module order.
INJECTED_ATTR = "llf_injected"
# Attribute set on the model by inject(freeze_base=True): names of the Parameters it froze
# (extract_base unfreezes them).
FROZEN_ATTR = "llf_frozen_by_inject"
# Attribute set on the model by inject / from_peft: names of the modules trained beside the
# adapters (PEFT's modules_to_save); to_peft and save_adapters carry them.
MODULES_TO_SAVE_ATTR = "llf_modules_to_save"
# Attribute set on the model by inject(LoraConfig) / from_peft: PEFT's task_type (to_peft hands
# it back).
TASK_TYPE_ATTR = "llf_peft_task_type"
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
    targets = as_list(target_modules, "target_modules",
                      "a list of module names or a regex string (a set too)",
                      ordered=False)
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


def find_targets(model: nn.Module, target_modules: TargetModules, *, exclude_modules=None,
                 layers_to_transform=None, layers_pattern=None, task_type=None,
                 modules_to_save=()) -> list:
    """Full names of the linear-like modules of ``model`` (``nn.Linear`` and its quantized
    subclasses, HF ``Conv1D``) that ``target_modules`` selects, by PEFT's rules: a list of names
    or suffixes, a regex matched against the whole name, or ``"all-linear"`` (every one but the
    output head; ``modules_to_save`` are left out). ``exclude_modules``,
    ``layers_to_transform``/``layers_pattern`` (list targets only, as in PEFT: with a string
    they raise) narrow it. A matched embedding or convolution (``PEFT_ONLY_TYPES``) raises.

    Raises ``ValueError`` when nothing is selected, listing the linear names the model has
    (so a typo such as ``"q_proj"`` on a BERT model, whose projections are ``query``/``value``,
    says what to write instead).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("inject swaps layers inside a model; wrap a bare nn.Linear with "
                        "GatedLoRALinear.from_linear instead")
    if isinstance(target_modules, str):
        for arg, value in (("layers_to_transform", layers_to_transform),
                           ("layers_pattern", layers_pattern)):
            if value is not None:
                # PEFT's LoraConfig raises the same (it would otherwise be ignored).
                raise ValueError(f"{arg}={value!r} cannot be used when target_modules is a str "
                                 f"({target_modules!r}); give target_modules as a list of names")
    gated = [n for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]
    wildcard = isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR
    if wildcard:
        chosen = set(all_linear_names(model, task_type, tuple(modules_to_save) + tuple(gated)))
        matches = chosen.__contains__
    else:
        matches = _normalize_targets(target_modules)
    by_index = not isinstance(target_modules, str)     # PEFT: layers_to_transform with lists only
    all_names = _all_names(model)
    linear, other, seen = [], [], set()
    for name, module in model.named_modules():
        aliases = [n for n in all_names[id(module)] if n]
        if id(module) in seen or not any(matches(n) for n in aliases):
            continue
        if any(n.startswith(g + ".") for n in aliases for g in gated):
            continue            # inside a gated layer (its base_layer): never wrapped twice
        if any(excluded(n, exclude_modules) for n in aliases):
            continue
        if by_index and not any(layer_index_ok(n, layers_to_transform, layers_pattern)
                                for n in aliases):
            continue
        seen.add(id(module))
        (linear if base_layers.is_linear_like(module) else other).append((name, module))
    for name, _ in linear:
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.MultiheadAttention):
            # MultiheadAttention reads out_proj.weight directly and never calls its forward:
            # a swapped layer would be silently ignored.
            raise ValueError(f"target_modules matched {name!r}, the output projection of an "
                             "nn.MultiheadAttention, which never calls that module's forward; "
                             "it cannot be adapted by swapping the module")
    peft_only = [f"{n} ({type(m).__name__})" for n, m in other if isinstance(m, PEFT_ONLY_TYPES)]
    if peft_only:
        raise ValueError(f"target_modules={target_modules!r} matched {_short_list(peft_only)}: "
                         "PEFT puts LoRA on such layers, GatedLoRALinear adapts linear layers "
                         "only. Leave them out of target_modules, or train them in full with "
                         "modules_to_save=[...]")
    if not linear:
        available = [n for n, m in model.named_modules() if base_layers.is_linear_like(m)]
        injected = [n for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]
        message = (f"target_modules={target_modules!r} matched no nn.Linear (or other "
                   f"linear-like layer) in the model")
        if other:
            message += (f"; it matched modules of other types, left alone: "
                        f"{_short_list([f'{n} ({type(m).__name__})' for n, m in other])}")
        if injected:
            message += f"; already injected: {_short_list(injected)}"
        message += (f". The model's nn.Linear modules are: {_short_list(available, 10)}"
                    if available else ". The model has no nn.Linear module")
        raise ValueError(message)
    return [name for name, _ in linear]


def find_modules_to_save(model: nn.Module, modules_to_save) -> list:
    """Full names of the modules ``modules_to_save`` selects (PEFT's rule: a name equal to an
    entry or ending with ``"." + entry``); ``ValueError`` listing the model's top modules when an
    entry selects nothing."""
    found = []
    for entry in as_list(modules_to_save, "modules_to_save", "a list of module names (a set too)",
                         ordered=False):
        if not isinstance(entry, str) or not entry:
            raise TypeError(f"modules_to_save entries must be non-empty strings, got {entry!r}")
        names = [n for n, _ in model.named_modules()
                 if n and (n == entry or n.endswith("." + entry))]
        if not names:
            top = [n for n, _ in model.named_children()]
            raise ValueError(f"modules_to_save entry {entry!r} matched no module; the model's "
                             f"top-level modules are: {_short_list(top, 10)}")
        found += [n for n in names if n not in found]
    return found


def _freeze_all_but_adapters(model: nn.Module, keep: list) -> list:
    """Freeze every Parameter except those of the gated layers' banks (adapters, gates, router)
    and of the modules ``keep`` (made trainable); return the names of those it froze."""
    adapter_params = {id(p) for m in model.modules() if isinstance(m, GatedLoRALinear)
                      for n, p in m.named_parameters()
                      if n not in ("weight", "bias") and not n.startswith("base_layer.")}
    for name in keep:
        model.get_submodule(name).requires_grad_(True)
    kept = {id(p) for name in keep for p in model.get_submodule(name).parameters()}
    frozen = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in adapter_params and id(p) not in kept:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


_PEFT_NAMES = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
_KEYWORD_DEFAULTS = {"rank": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": (),
                     "use_rslora": False, "rank_pattern": None, "alpha_pattern": None,
                     "layers_to_transform": None, "layers_pattern": None,
                     "exclude_modules": None, "init_lora_weights": True}


def inject(model: nn.Module, target_modules=None, rank: int = 8, alpha: float = 16,
           num_adapters: Optional[int] = None, gate: str = "per_adapter", dropout: float = 0.0,
           freeze_base: bool = True,
           modules_to_save: Iterable[str] = (), verbose: bool = False, *,
           adapter_dtype=None, adapter_name: Optional[str] = None, use_rslora: bool = False,
           rank_pattern: Optional[dict] = None, alpha_pattern: Optional[dict] = None,
           layers_to_transform=None, layers_pattern=None, exclude_modules=None,
           init_lora_weights=True, **peft_names) -> nn.Module:
    """Swap the linear-like layers that ``target_modules`` selects for ``GatedLoRALinear`` in
    place, and return ``model``.

    Two spellings, one result::

        llf.inject(model, "all-linear", rank=8, alpha=16, num_adapters=1, dropout=0.05)
        llf.inject(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                          target_modules="all-linear"))

    Args:
        model: any ``nn.Module`` (a Hugging Face model, a timm ViT, your own).
        target_modules: names as PEFT matches them (module docstring): a list of exact names or
            suffixes (``["q_proj", "v_proj"]``), one regex matched against the whole name,
            ``"all-linear"`` (PEFT's rule: every ``nn.Linear``/``Conv1D`` but the output head),
            ``None`` (PEFT's default targets for the model type), or a ``peft.LoraConfig``,
            whose fields then give every adapter setting (``peft_config``; a field the bank
            cannot honour is a ``ValueError`` naming it).
        rank, alpha: the adapters' rank and alpha (scaling ``alpha / rank``); PEFT's names
            ``r=`` and ``lora_alpha=`` are accepted too (one of each pair).
        num_adapters: adapters recruited right away in every swapped layer (``B`` at zero: the
            output does not change). Default: 1 with a ``LoraConfig`` (PEFT creates its adapter),
            else 0, and then, if nothing in the model trains, a ``UserWarning`` says so; pass
            ``num_adapters=0`` to say the adapters come later (``layer.add_adapter``).
        gate: ``"per_adapter"`` or ``"per_row"`` (see ``GatedLoRALinear``).
        dropout: LoRA dropout ``p`` (PEFT's ``lora_dropout=``; training mode only).
        freeze_base: freeze every Parameter of ``model`` except the adapters (and their gates)
            and ``modules_to_save``, as PEFT does (default). ``False``: only the swapped layers'
            base weight and bias are frozen; the rest keeps its ``requires_grad``.
        modules_to_save: modules trained beside the adapters, e.g. ``["classifier"]`` (matched
            like PEFT's: full name or last components). They are made trainable, recorded in
            ``model.llf_modules_to_save``, written by ``save_adapters`` and handed to PEFT by
            ``to_peft``.
        verbose: also print the summary (it is always logged at INFO on ``litelora_fast.models.inject``).
        adapter_dtype: the adapters' dtype (default float32 beside a half-precision or quantized
            base, as PEFT; ``base_layers``).
        adapter_name: name of the first recruited adapter (default ``adapter_0``; ``"default"``,
            PEFT's name, with a ``LoraConfig``).
        use_rslora, rank_pattern, alpha_pattern, layers_to_transform, layers_pattern,
            exclude_modules, init_lora_weights: as in PEFT's ``LoraConfig`` (``peft_config``);
            ``init_lora_weights`` is ``True`` (A kaiming-uniform, B zero), ``"gaussian"`` (A
            normal with std ``1/r``, B zero) or ``False`` (B random too: the output changes).

    What was swapped is reported three ways: the summary line (logged, printed if ``verbose``),
    ``model.llf_injected`` (the list of swapped names, cumulative over calls), and
    :func:`injected_layers` (the ``GatedLoRALinear`` modules by name). The base Parameters are
    shared with the old layers and frozen; :func:`extract_base` restores their ``requires_grad``
    and that of the Parameters ``freeze_base`` froze. Adapters recruited later are trainable.
    """
    given = dict(rank=rank, alpha=alpha, dropout=dropout, modules_to_save=modules_to_save,
                 use_rslora=use_rslora, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                 layers_to_transform=layers_to_transform, layers_pattern=layers_pattern,
                 exclude_modules=exclude_modules, init_lora_weights=init_lora_weights)
    for peft_name, value in peft_names.items():
        if peft_name not in _PEFT_NAMES:
            raise TypeError(f"inject() got an unexpected keyword argument {peft_name!r}")
        ours = _PEFT_NAMES[peft_name]
        if given[ours] != _KEYWORD_DEFAULTS[ours]:
            raise ValueError(f"inject: {ours}= and PEFT's {peft_name}= name the same setting; "
                             "give one")
        given[ours] = value
    task_type, freeze_adapters = None, False
    if is_lora_config(target_modules):
        twice = [k for k, v in given.items() if v != _KEYWORD_DEFAULTS[k]
                 and not (k == "modules_to_save" and not v)]
        if twice:
            raise ValueError(f"inject(model, LoraConfig) takes the adapter settings from the "
                             f"config; these keyword arguments were given too: {twice}")
        given, task_type = config_kwargs(target_modules)
        freeze_adapters = given.pop("freeze_adapters")
        target_modules = given.pop("target_modules")
        num_adapters = 1 if num_adapters is None else num_adapters
        adapter_name = "default" if adapter_name is None else adapter_name
        if task_type == "SEQ_CLS":
            # As PEFT's PeftModelForSequenceClassification: the classification head trains.
            given["modules_to_save"] += [h for h in SEQ_CLS_HEAD_NAMES if h not in
                                         given["modules_to_save"] and any(
                                             n == h or n.endswith("." + h)
                                             for n, _ in model.named_modules())]
    explicit_count = num_adapters is not None
    num_adapters = 0 if num_adapters is None else num_adapters
    if given["init_lora_weights"] not in (True, False, "gaussian"):
        raise ValueError(f"init_lora_weights must be True, False or 'gaussian', got "
                         f"{given['init_lora_weights']!r}")
    if target_modules is None:
        target_modules = default_targets(model)
    keep = find_modules_to_save(model, given["modules_to_save"] or ())
    names = find_targets(model, target_modules, exclude_modules=given["exclude_modules"],
                         layers_to_transform=given["layers_to_transform"],
                         layers_pattern=given["layers_pattern"], task_type=task_type,
                         modules_to_save=keep)
    clash = [n for n in keep if any(t == n or t.startswith(n + ".") for t in names)]
    if clash:
        raise ValueError(f"modules_to_save {clash} contain layers that target_modules swaps; "
                         "a module is either adapted or trained in full, not both")
    all_names = _all_names(model)
    for name in names:
        linear = model.get_submodule(name)
        base_grad = (linear.weight.requires_grad,
                     None if getattr(linear, "bias", None) is None else linear.bias.requires_grad)
        r, a = layer_rank_alpha(name, given["rank"], given["alpha"], given["rank_pattern"],
                                given["alpha_pattern"], given["use_rslora"])
        layer = GatedLoRALinear.from_linear(linear, rank=r, alpha=a, gate=gate,
                                            dropout=given["dropout"], adapter_dtype=adapter_dtype)
        for i in range(num_adapters):
            k = layer.add_adapter(name=adapter_name if i == 0 else None)
            init_adapter(layer, k, given["init_lora_weights"])
            if freeze_adapters:
                layer.freeze_adapter(k)
        setattr(layer, _BASE_GRAD_ATTR, base_grad)
        layer.train(linear.training)
        for alias in all_names[id(linear)]:
            _set_module(model, alias, layer)
    previous = [n for n in getattr(model, INJECTED_ATTR, []) if n not in names]
    setattr(model, INJECTED_ATTR, previous + names)
    saved = getattr(model, MODULES_TO_SAVE_ATTR, [])
    setattr(model, MODULES_TO_SAVE_ATTR, saved + [n for n in keep if n not in saved])
    if task_type is not None:
        setattr(model, TASK_TYPE_ATTR, task_type)
    if freeze_base:
        frozen = _freeze_all_but_adapters(model, getattr(model, MODULES_TO_SAVE_ATTR))
        setattr(model, FROZEN_ATTR, getattr(model, FROZEN_ATTR, []) + frozen)
    elif keep:
        for name in keep:
            model.get_submodule(name).requires_grad_(True)
    routing_state.refuse_unaccepted_input(model)
    _report(_summary(f"inject: swapped -> GatedLoRALinear (rank={given['rank']}, "
                     f"alpha={given['alpha']:g}) in", names), verbose)
    if not explicit_count and not any(p.requires_grad for p in model.parameters()):
        warnings.warn("inject: the model has 0 trainable parameters: no adapter was created "
                      "(num_adapters defaults to 0 with the keyword API). Pass num_adapters=1 "
                      "(PEFT creates one adapter), or num_adapters=0 to say you recruit them "
                      "later (layer.add_adapter)", UserWarning, stacklevel=2)
    return model


def init_adapter(layer: GatedLoRALinear, k: int, how) -> None:
    """PEFT's ``init_lora_weights`` for adapter ``k``: ``True`` leaves ``add_adapter``'s init
    (PEFT's default: A kaiming-uniform, B zero); ``"gaussian"``: A normal with std ``1/r``;
    ``False``: B kaiming-uniform too, as an untouched ``nn.Linear`` (the output changes)."""
    A, B = layer.adapter(k)
    with torch.no_grad():
        if how == "gaussian":
            nn.init.normal_(A, std=1.0 / A.shape[0])
        elif how is False:
            nn.init.kaiming_uniform_(B, a=math.sqrt(5))


def injected_layers(model: nn.Module) -> dict:
    """``{name: GatedLoRALinear}`` for every gated layer of ``model`` (each shared module once)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedLoRALinear)}


def extract_base(model: nn.Module, verbose: bool = False) -> nn.Module:
    """Undo :func:`inject`: replace every ``GatedLoRALinear`` of ``model`` by an ``nn.Linear``
    holding its base weight and bias (the same Parameters, no copy), in place, and return
    ``model``. The adapters are dropped, not merged. The base Parameters get back the
    ``requires_grad`` they had before ``inject`` (layers made another way keep theirs), and so do
    the Parameters that ``inject(freeze_base=True)`` froze.

    ``model`` may itself be a ``GatedLoRALinear``: the ``nn.Linear`` is returned.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, GatedLoRALinear):
        return _to_linear(model)
    return _unload(model, injected_layers(model), _to_linear,
                   "extract_base: restored GatedLoRALinear -> nn.Linear in", verbose)


def _unload(model: nn.Module, layers: dict, to_linear, message: str, verbose: bool) -> nn.Module:
    """Swap each of ``layers`` for ``to_linear(layer)`` under every name it has, forget the
    injection (unfreeze, drop attributes), report, return ``model``."""
    all_names = _all_names(model)
    for layer in layers.values():
        linear = to_linear(layer)
        for alias in all_names[id(layer)]:
            _set_module(model, alias, linear)
    _forget_injection(model)
    _report(_summary(message, list(layers)), verbose)
    return model


def _forget_injection(model: nn.Module) -> None:
    """Unfreeze what ``inject(freeze_base=True)`` froze and drop inject's model attributes."""
    for name in getattr(model, FROZEN_ATTR, []):
        model.get_parameter(name).requires_grad_(True)
    for attr in (INJECTED_ATTR, FROZEN_ATTR, MODULES_TO_SAVE_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)


def _to_linear(layer: GatedLoRALinear) -> nn.Linear:
    # Merged adapters are subtracted first: extract_base hands back the base, not a merged one.
    layer.unmerge()
    return _linear_of(layer)


def _linear_of(layer: GatedLoRALinear) -> nn.Module:
    """The base module again: the wrapped module itself for a base the kernels cannot read, else
    an ``nn.Linear`` (a ``Conv1D`` for ``fan_in_fan_out``) holding the layer's own Parameters."""
    base_grad = getattr(layer, _BASE_GRAD_ATTR, None)
    if hasattr(layer, "base_layer"):
        linear = layer.base_layer
    elif layer.fan_in_fan_out:
        conv1d = base_layers.conv1d_class()
        with torch.device("meta"):
            linear = conv1d(layer.out_features, layer.in_features)
        linear.weight = layer.weight
        linear.bias = layer.bias
    else:
        # Built on the meta device, then handed the layer's own Parameters: nothing is allocated.
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device="meta", dtype=layer.weight.dtype)
        linear.weight = layer.weight
        linear.bias = layer.bias
    if base_grad is not None:
        layer.weight.requires_grad_(base_grad[0])
        if layer.bias is not None and base_grad[1] is not None:
            layer.bias.requires_grad_(base_grad[1])
    linear.train(layer.training)
    return linear
