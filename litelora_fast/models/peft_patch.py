"""``llf.patch_peft()``: PEFT keeps its modules, its state dict and its API; our op computes.

    import litelora_fast as llf
    llf.patch_peft()                 # every PEFT LoRA linear layer, built or loaded from now on
    with llf.patch_peft(): ...       # the same, for the block only
    llf.unpatch_peft()               # PEFT's own forward again
    llf.patch_peft_model(model)      # one existing model only (llf.unpatch_peft(model) undoes it)
    llf.patched_layers(model)        # {name: LayerStatus(runs_op, reason)}

Patching replaces the ``forward`` of PEFT's ``lora.Linear`` (``nn.Linear`` and HF ``Conv1D``
bases) and of its bitsandbytes ``Linear8bitLt`` / ``Linear4bit`` classes with one that computes
through ``gated_lora_linear`` (``peft_patch_layers.py``) and falls back to PEFT's own forward for
what the op cannot compute. No module, Parameter, buffer or state-dict key changes, so
``save_pretrained``, ``from_pretrained``, ``load_adapter``, ``merge_and_unload`` and the Trainer
see PEFT's model. Other PEFT layer types (``lora.Embedding``, ``lora.Conv2d``, subclasses of
``lora.Linear`` for other quantizers) keep PEFT's forward; :func:`patched_layers` says so.

A layer runs our path when the process-wide patch is on, or when its model was patched with
:func:`patch_peft_model` (a flag on each layer, ``_llf_patch``: plain data, so ``deepcopy`` and
``pickle`` keep it). The class attributes are PEFT's own again whenever neither is in use.
"""
from __future__ import annotations

import importlib
import weakref
from typing import NamedTuple, Optional

import torch.nn as nn

from . import peft_patch_layers

__all__ = ["patch_peft", "unpatch_peft", "patch_peft_model", "patched_layers", "is_patched",
           "LayerStatus"]

_FLAG = "_llf_patch"


class _State:
    on = False                     # the process-wide patch
    originals: dict = {}           # class -> PEFT's own forward, while our forward is installed
    flagged = weakref.WeakSet()    # layers patched one model at a time


def _lora_classes() -> dict:
    """PEFT's LoRA classes we patch -> whether they are bitsandbytes layers (their own rounding).
    Empty when PEFT is not installed."""
    try:
        layer = importlib.import_module("peft.tuners.lora.layer")
    except ImportError:
        return {}
    classes = {layer.Linear: False}
    try:
        bnb = importlib.import_module("peft.tuners.lora.bnb")
    except ImportError:            # (PEFT imports bitsandbytes there when it is installed)
        return classes
    for name in ("Linear8bitLt", "Linear4bit"):
        if hasattr(bnb, name):
            classes[getattr(bnb, name)] = True
    return classes


def _install() -> None:
    for cls, bnb_style in _lora_classes().items():
        if cls not in _State.originals:
            _State.originals[cls] = cls.__dict__["forward"]
            cls.forward = peft_patch_layers.patched_forward(_State.originals[cls], bnb_style,
                                                            is_patched)


def _restore_if_unused() -> None:
    if _State.on or len(_State.flagged):
        return
    for cls, original in _State.originals.items():
        cls.forward = original
    _State.originals.clear()


def is_patched(layer) -> bool:
    """True when ``layer`` (a PEFT LoRA layer) computes through our op. Its class may be a
    subclass of a patched one: FSDP2's ``fully_shard`` swaps a module's class for a new one."""
    patched = type(layer) in _State.originals or any(
        cls in _State.originals for cls in type(layer).__mro__[1:])
    return patched and (_State.on or layer.__dict__.get(_FLAG, False))


class _Scope:
    """What :func:`patch_peft` returns: ``with`` it to undo the patch at the block's end."""

    def __init__(self, was_on: bool):
        self._was_on = was_on

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._was_on:
            unpatch_peft()
        return False


def patch_peft() -> _Scope:
    """From now on every PEFT LoRA linear layer computes through ``gated_lora_linear``
    (module docstring). Usable as ``with llf.patch_peft(): ...``. Raises ``ImportError`` when
    PEFT is not installed."""
    if not _lora_classes():
        raise ImportError("patch_peft needs PEFT (pip install peft)")
    was_on = _State.on
    _install()
    _State.on = True
    return _Scope(was_on)


def _lora_layers(model: nn.Module):
    classes = tuple(_lora_classes())
    return [(n, m) for n, m in model.named_modules()
            if classes and isinstance(m, classes) and hasattr(m, "lora_A")]


def unpatch_peft(model: Optional[nn.Module] = None) -> None:
    """PEFT's own forward again: everywhere (``model=None``: the process-wide patch is turned
    off), or for the layers of ``model`` that :func:`patch_peft_model` patched."""
    if model is None:
        _State.on = False
    else:
        for _, layer in _lora_layers(model):
            if layer.__dict__.pop(_FLAG, False):
                _State.flagged.discard(layer)
    _restore_if_unused()


def patch_peft_model(model: nn.Module) -> nn.Module:
    """Patch the PEFT LoRA layers of ``model`` only (in place; its state dict is unchanged) and
    return ``model``. ``ValueError`` when ``model`` has no PEFT LoRA layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_peft_model: model must be an nn.Module, got "
                        f"{type(model).__name__}")
    if not _lora_classes():
        raise ImportError("patch_peft_model needs PEFT (pip install peft)")
    layers = _lora_layers(model)
    if not layers:
        raise ValueError(f"patch_peft_model: the {type(model).__name__} has no PEFT LoRA layer "
                         "(get_peft_model or PeftModel.from_pretrained first)")
    _install()
    for _, layer in layers:
        layer.__dict__[_FLAG] = True
        _State.flagged.add(layer)
    return model


class LayerStatus(NamedTuple):
    """One PEFT LoRA layer under the patch: ``runs_op`` and, when not, ``reason``."""

    runs_op: bool
    reason: str


def _status(layer) -> LayerStatus:
    if type(layer) not in _lora_classes():
        return LayerStatus(False, f"PEFT's {type(layer).__module__}.{type(layer).__name__}: "
                                  "litelora_fast's op computes linear layers only")
    if not is_patched(layer):
        return LayerStatus(False, "not patched (llf.patch_peft() or llf.patch_peft_model)")
    if layer.disable_adapters:
        return LayerStatus(False, "adapters disabled: PEFT's forward runs the base alone")
    if layer.merged:
        return LayerStatus(False, f"adapters {layer.merged_adapters} are merged into the base "
                                  "weight: PEFT's forward runs the base")
    names = [n for n in layer.active_adapters if n in layer.lora_A.keys()]
    if not names:
        return LayerStatus(False, "no active adapter: PEFT's forward runs the base")
    reason = peft_patch_layers.static_reason(layer, names)
    if reason is not None:
        return LayerStatus(False, reason + ": PEFT's forward runs this layer")
    return LayerStatus(True, f"gated_lora_linear over {len(names)} adapter(s) {names}")


def patched_layers(model: nn.Module) -> dict:
    """``{name: LayerStatus}`` for every PEFT LoRA layer of ``model`` (any type: embeddings and
    convolutions say why they keep PEFT's forward). ``runs_op`` is True for the layers whose
    active adapters compute through ``gated_lora_linear``."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return {}
    return {n: _status(m) for n, m in model.named_modules() if isinstance(m, LoraLayer)}
