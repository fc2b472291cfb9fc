"""PEFT's LoRA configuration for :func:`litelora_fast.models.inject`: a ``peft.LoraConfig`` read into
inject's keyword arguments, and PEFT's selection rules (``"all-linear"``, ``layers_to_transform``,
``rank_pattern``/``alpha_pattern``, ``exclude_modules``), written after PEFT 0.21's
``check_target_module_exists``, ``get_pattern_key`` and ``_maybe_include_all_linear_layers``.

Nothing here imports PEFT: a ``LoraConfig`` is read through its dataclass fields, so ``inject``
with the keyword API works without PEFT installed.

What a ``LoraConfig`` may hold (anything else set to a non-default value is a ``ValueError`` that
names every such field):

- honoured: ``r``, ``lora_alpha``, ``lora_dropout``, ``use_rslora`` (scaling
  ``lora_alpha / sqrt(r)``), ``target_modules`` (a list, a regex, ``"all-linear"``, or ``None``
  for PEFT's default targets of the model type), ``exclude_modules``, ``modules_to_save``,
  ``rank_pattern``, ``alpha_pattern``, ``layers_to_transform``, ``layers_pattern``,
  ``init_lora_weights`` (``True``, ``False``, ``"gaussian"``), ``bias="none"``,
  ``fan_in_fan_out`` (a Conv1D base is recognised by its type either way), ``task_type``
  (recorded for ``to_peft``), ``inference_mode`` (the adapter is created frozen);
- metadata, ignored: ``peft_type``, ``peft_version``, ``base_model_name_or_path``, ``revision``,
  ``auto_mapping``;
- refused: every LoRA variant and initialisation the bank cannot hold (DoRA, ``lora_bias``,
  QALoRA, PiSSA/OLoRA/LoftQ/EVA/CorDA/LoRA-GA initialisations, trainable tokens, target
  parameters, layer replication, Megatron, aLoRA, Arrow, ...).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import torch.nn as nn

from ..module import base_layers

ALL_LINEAR = "all-linear"
# PEFT's SEQ_CLS_HEAD_NAMES: the heads "all-linear" leaves out of a classification model.
SEQ_CLS_HEAD_NAMES = ("score", "classifier")
INIT_CHOICES = (True, False, "gaussian")

# LoraConfig field -> inject keyword.
_RENAMED = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
_TAKEN = ("target_modules", "exclude_modules", "modules_to_save", "use_rslora", "rank_pattern",
          "alpha_pattern", "layers_to_transform", "layers_pattern", "init_lora_weights")
_HANDLED = ("bias", "fan_in_fan_out", "task_type", "inference_mode")
_METADATA = ("peft_type", "base_model_name_or_path", "revision", "auto_mapping", "peft_version")


def is_lora_config(obj) -> bool:
    """True for a ``peft.LoraConfig`` (recognised without importing PEFT)."""
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type) and any(
        c.__name__ == "LoraConfig" for c in type(obj).__mro__)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_default(value, default) -> bool:
    if value is None or value is False or value == {} or value == [] or value == ():
        # PEFT fills some defaults in __post_init__ ({} for None, and so on).
        return default in (None, False, {}, [], ()) or value == default
    try:
        return bool(value == default)
    except Exception:     # noqa: BLE001 (a config object without __eq__ semantics)
        return False


def config_kwargs(config) -> tuple:
    """``(inject keyword arguments, task_type or None)`` from a ``LoraConfig``; ``ValueError``
    naming every field set to something the bank cannot honour."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    problems = []
    for f in dataclasses.fields(config):
        name, value = f.name, values[f.name]
        if name in _RENAMED or name in _TAKEN or name in _HANDLED or name in _METADATA:
            continue
        default = _default(f)
        if default is dataclasses.MISSING or not _is_default(value, default):
            problems.append(f"{name}={value!r}")
    if values.get("bias", "none") != "none":
        problems.append(f"bias={values['bias']!r} (only 'none': the base stays frozen)")
    init = values.get("init_lora_weights", True)
    if init not in INIT_CHOICES or isinstance(init, int) and not isinstance(init, bool):
        problems.append(f"init_lora_weights={init!r} (the bank takes True, False or 'gaussian')")
    if problems:
        raise ValueError("inject cannot honour these LoraConfig fields: " + "; ".join(problems)
                         + ". Leave them at their defaults, or use PEFT itself for them")
    kwargs = {new: values[old] for old, new in _RENAMED.items()}
    kwargs.update({name: values.get(name) for name in _TAKEN})
    kwargs["modules_to_save"] = list(values.get("modules_to_save") or ())
    kwargs["rank_pattern"] = dict(values.get("rank_pattern") or {})
    kwargs["alpha_pattern"] = dict(values.get("alpha_pattern") or {})
    kwargs["use_rslora"] = bool(values.get("use_rslora"))
    kwargs["init_lora_weights"] = init
    target = values.get("target_modules")
    if isinstance(target, (set, frozenset)):
        target = sorted(target)
    kwargs["target_modules"] = target
    task = values.get("task_type")
    task = None if task is None else str(getattr(task, "value", task))
    kwargs["freeze_adapters"] = bool(values.get("inference_mode"))
    return kwargs, task


def default_targets(model: nn.Module) -> list:
    """PEFT's default ``target_modules`` for the model's type (``target_modules=None``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise TypeError(f"target_modules must be a list of module names or a regex string (or "
                        f"'all-linear'); None means PEFT's default targets of a Hugging Face "
                        f"model type, and this {type(model).__name__} has no config.model_type")
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as M
    except ImportError:
        M = {}
    if model_type not in M:
        raise ValueError(f"target_modules is None and PEFT has no default targets for model "
                         f"type {model_type!r}{'' if M else ' (PEFT is not installed)'}: name "
                         f"them, e.g. target_modules=['q_proj', 'v_proj'] or 'all-linear'")
    return list(M[model_type])


def _inside(name: str, owners: list) -> bool:
    return any(name == o or name.startswith(o + ".") for o in owners)


def all_linear_names(model: nn.Module, task_type: Optional[str] = None,
                     skip: tuple = ()) -> list:
    """PEFT's ``"all-linear"``: every ``nn.Linear`` (quantized subclasses included) and
    ``Conv1D``, except the output head (``get_output_embeddings()``; for a ``SEQ_CLS`` model
    without one, its ``score``/``classifier``) and the modules in or under the names ``skip``
    (``modules_to_save``, which are trained in full, and layers already gated)."""
    exclude = list(skip)
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None:
        exclude += [n for n, m in model.named_modules() if m is head][:1]
    elif task_type == "SEQ_CLS":
        for attr in SEQ_CLS_HEAD_NAMES:
            cls_head = getattr(model, attr, None)
            if cls_head is not None:
                exclude += [n for n, m in model.named_modules() if m is cls_head][:1]
                break
    return [n for n, m in model.named_modules()
            if n and base_layers.is_linear_like(m) and not _inside(n, exclude)]


def excluded(name: str, exclude_modules) -> bool:
    """PEFT's ``exclude_modules``: a regex matched against the whole name, or names matched
    exactly or as a suffix."""
    if not exclude_modules:
        return False
    if isinstance(exclude_modules, str):
        return re.fullmatch(exclude_modules, name) is not None
    return name in exclude_modules or any(name.endswith("." + e) for e in exclude_modules)


def layer_index_ok(name: str, layers_to_transform, layers_pattern) -> bool:
    """PEFT's ``layers_to_transform``: the module's layer index (the number after
    ``layers_pattern``, else after the first named segment) must be listed. PEFT applies it to
    list ``target_modules`` only."""
    if layers_to_transform is None or (isinstance(layers_to_transform, list)
                                       and not layers_to_transform):
        return True
    match = None
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    if isinstance(layers_to_transform, int):
        return index == layers_to_transform
    return index in layers_to_transform


def pattern_value(patterns: Optional[dict], name: str, default):
    """PEFT's ``rank_pattern``/``alpha_pattern``: the first key ``k`` with
    ``re.match(rf"(.*\\.)?({k})$", name)`` gives the value, else ``default``."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def layer_rank_alpha(name: str, rank: int, alpha: float, rank_pattern, alpha_pattern,
                     use_rslora: bool) -> tuple:
    """``(r, alpha)`` of the layer ``name``; with rsLoRA the alpha is ``alpha * sqrt(r)``, so the
    bank's scaling ``alpha / r`` is PEFT's ``lora_alpha / sqrt(r)``."""
    r = pattern_value(rank_pattern, name, rank)
    a = pattern_value(alpha_pattern, name, alpha)
    return r, (a * math.sqrt(r) if use_rslora else a)
