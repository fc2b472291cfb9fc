"""Hugging Face integration: adapter-only ``Trainer`` checkpoints and the whole-model round trip.

- ``Trainer(..., callbacks=llf.trainer_callbacks(model))``: every checkpoint holds the adapters
  (banks, gates, their metadata), the ``modules_to_save`` and any other trainable Parameter,
  plus the optimizer state, never the frozen base; ``resume_from_checkpoint`` loads them back
  into the live Parameters (bit-identical continuation). How: during ``train()`` the model's
  ``_keys_to_ignore_on_save`` (HF's own list of state-dict keys ``save_pretrained`` leaves out)
  holds every base key (from the ``Trainer``'s construction on); the Trainer's resume loads the
  file with ``strict=False`` and, the missing keys being exactly that list, says nothing. The
  list is restored after ``train()``.
  The callback also lets the collator route batches (``adapter_ids`` in the batch:
  ``llf.accept_adapter_ids``) and, given the model, lets the Trainer accept a quantized (QLoRA)
  base it would otherwise refuse as "purely quantized" (HF accepts a quantized model only when
  it carries PEFT adapters; ours are not PEFT's). After ``train()``, ``trainer.save_model()``
  writes what ``llf.save_pretrained`` writes (below), so ``llf.from_pretrained`` loads the
  trained model back; plain ``from_pretrained`` gives the base.
- ``llf.save_pretrained(model, dir)`` / ``llf.from_pretrained(AutoModelForCausalLM, dir)``: the
  whole model, one call each way. ``dir`` holds the base as ``save_pretrained`` writes a plain
  model (the names it had before ``inject``, so ``from_pretrained`` alone gives the base) and the
  adapters as ``llf.save_adapters`` writes them; ``from_pretrained`` loads both.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import torch.nn as nn

from .adapter_files import load_adapters, save_adapters
from .inject import MODULES_TO_SAVE_ATTR, injected_layers
from .dist_tensors import is_sharded, unwrap as _unwrap
from .routing import accept_adapter_ids

# State-dict entries of a gated layer that belong to the bank (all others are its base).
BANK_KEYS = ("lora_A", "lora_B", "gates", "router_weight", "router_bias", "_extra_state")
# HF lets the Trainer train a quantized model only when this flag says adapters are attached.
_PEFT_FLAG = "_hf_peft_config_loaded"


def adapter_keys(model: nn.Module) -> set:
    """The state-dict keys of ``model`` that an adapter-only checkpoint keeps: the gated layers'
    banks and metadata, the ``modules_to_save`` and every Parameter that requires grad."""
    model = _unwrap(model)
    keys = set(model.state_dict())
    layers = [p + "." for p in injected_layers(model)]
    saved = [m + "." for m in getattr(model, MODULES_TO_SAVE_ATTR, [])]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    keep = set()
    for key in keys:
        for prefix in layers:
            if key.startswith(prefix) and key[len(prefix):].split(".")[0] in BANK_KEYS:
                keep.add(key)
        if key in trainable or any(key.startswith(p) for p in saved):
            keep.add(key)
    return keep


def base_keys(model: nn.Module) -> set:
    """The state-dict keys an adapter-only checkpoint leaves out (the frozen base)."""
    return set(_unwrap(model).state_dict()) - adapter_keys(model)


def _trainer_callback_class():
    try:
        from transformers import TrainerCallback
    except ImportError as err:
        raise ImportError("trainer_callbacks needs transformers: pip install transformers"
                          ) from err

    class AdapterCheckpoints(TrainerCallback):
        """Adapter-only checkpoints and routed batches for the HF ``Trainer`` (module
        docstring)."""

        def __init__(self):
            self._ignored = {}

        def on_init_end(self, args, state, control, model=None, **kwargs):
            if model is not None:
                if getattr(model, "_llf_trainer_flag", False):
                    setattr(model, _PEFT_FLAG, False)     # only for the Trainer's check
                    del model._llf_trainer_flag
                accept_adapter_ids(model)
                _final_save_with_adapters(model)
                # Already here: train(resume_from_checkpoint=...) loads the checkpoint before
                # on_train_begin, and checks its missing keys against this list.
                self._ignore_base(model)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self._ignore_base(model)
            if model is not None:
                setattr(_unwrap(model), _TRAINING, True)

        def _ignore_base(self, model) -> None:
            if model is None or not injected_layers(_unwrap(model)):
                return
            if id(model) not in self._ignored:
                self._ignored[id(model)] = getattr(model, "_keys_to_ignore_on_save", None)
            model._keys_to_ignore_on_save = (set(self._ignored[id(model)] or ())
                                             | base_keys(model))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if model is not None:
                setattr(_unwrap(model), _TRAINING, False)
            if model is not None and id(model) in self._ignored:
                model._keys_to_ignore_on_save = self._ignored.pop(id(model))

    return AdapterCheckpoints


_TRAINING = "_llf_in_train"    # attribute on the model: set by the callback during train()


def _final_save_with_adapters(model: nn.Module) -> None:
    """Outside ``train()``, make the Trainer's ``save_model`` (which calls the model's
    ``save_pretrained``) write what :func:`save_pretrained` writes: the base under its own names
    and the adapter files, so :func:`from_pretrained` gives the trained model back (a whole-model
    save held the banks under names plain ``from_pretrained`` drops: the base alone came back).
    During ``train()`` (checkpoints, adapter-only) and for FSDP2-sharded models (the Trainer
    gathers the state dict itself) the model's own ``save_pretrained`` runs."""
    inner = _unwrap(model)
    if "save_pretrained" not in vars(inner):
        # A bound method, not a closure: copy.deepcopy(model) binds the copy's to the copy.
        inner.save_pretrained = types.MethodType(_save_with_adapters, inner)


def _save_with_adapters(self, save_directory, *args, state_dict=None, **kwargs):
    if (getattr(self, _TRAINING, False) or args
            or any(is_sharded(p) for p in self.parameters())):
        return type(self).save_pretrained(self, save_directory, *args, state_dict=state_dict,
                                          **kwargs)
    return save_pretrained(self, save_directory, **kwargs)


def trainer_callbacks(model: nn.Module = None) -> list:
    """``[callback]`` for ``transformers.Trainer(callbacks=...)``: adapter-only checkpoints
    with exact resume, and ``adapter_ids`` batches routed (module docstring). Pass ``model``
    (the one given to the ``Trainer``) when its base is quantized: the Trainer refuses a
    quantized model without adapters it knows, so the model is flagged as carrying adapters
    until the ``Trainer`` is built (and unflagged then)."""
    if model is not None:
        inner = _unwrap(model)
        if not injected_layers(inner):
            raise ValueError(f"trainer_callbacks: the {type(inner).__name__} has no "
                             "GatedLoRALinear layer (llf.inject first)")
        if getattr(inner, "is_quantized", False) and not getattr(inner, _PEFT_FLAG, False):
            setattr(inner, _PEFT_FLAG, True)
            inner._llf_trainer_flag = True
    return [_trainer_callback_class()()]


def _check_unmerged(model: nn.Module, what: str) -> None:
    merged = [n for n, layer in injected_layers(model).items() if layer.merged_adapters]
    if merged:
        raise ValueError(f"{what}: layer(s) {merged[:4]} hold merged adapters (their update is "
                         "inside the base weight); llf.unmerge_adapters(model) first, or "
                         "llf.merge_and_unload(model) and save the plain model")


def save_pretrained(model: nn.Module, path, **kwargs) -> Path:
    """Write ``model`` (a Hugging Face ``PreTrainedModel`` with gated layers) into the directory
    ``path``: the base through ``model.save_pretrained(path, state_dict=..., **kwargs)`` under
    the names it had before ``inject`` (a black-box base's ``base_layer.`` dropped), and the
    adapters through ``llf.save_adapters(model, path)``. Read it back with
    :func:`from_pretrained`; ``AutoModel*.from_pretrained(path)`` alone gives the base."""
    inner = _unwrap(model)
    _check_unmerged(inner, "save_pretrained")
    state = inner.state_dict()
    keep = base_keys(inner) - {k for k, p in inner.named_parameters() if p.requires_grad}
    layers = injected_layers(inner)
    base_state = {}
    for key in sorted(keep):
        name = key
        for prefix, layer in layers.items():
            if key.startswith(prefix + ".base_layer.") and hasattr(layer, "base_layer"):
                name = prefix + "." + key[len(prefix) + len(".base_layer."):]
        base_state[name] = state[key]
    path = Path(path)
    # (the class's method: the Trainer callback replaces the instance's with one calling this)
    type(inner).save_pretrained(inner, os.fspath(path), state_dict=base_state, **kwargs)
    save_adapters(inner, path)
    return path


def from_pretrained(model_class, path, freeze_base: bool = True, **kwargs) -> nn.Module:
    """Load what :func:`save_pretrained` wrote: ``model_class.from_pretrained(path, **kwargs)``
    (e.g. ``transformers.AutoModelForCausalLM``; ``quantization_config=`` for a QLoRA base),
    then the adapters with ``llf.load_adapters`` (the saved layers injected, ``freeze_base`` as
    in ``inject``)."""
    model = model_class.from_pretrained(os.fspath(path), **kwargs)
    return load_adapters(model, path, freeze_base=freeze_base)
