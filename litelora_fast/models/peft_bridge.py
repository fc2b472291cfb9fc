"""PEFT LoRA adapters in and out of the ``GatedLoRALinear`` bank: ``from_peft``, ``to_peft``.

PEFT is optional (``pip install litelora-fast[peft]``); it is imported when these are called.

The two layouts are the same numbers: PEFT's adapter ``name`` in a ``lora.Linear`` is
``lora_A[name].weight`` ``(r, D_in)``, ``lora_B[name].weight`` ``(D_out, r)`` and
``scaling[name]`` (``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA); it adds
``B(A(x)) * scaling`` for each *active* adapter. Our adapter ``k`` holds the same ``A_k``, ``B_k``
and ``alpha_k = scaling * r_k`` (so the scaling is exact under either convention), and its gate
says whether it is on: gate 1 for PEFT's active adapters, 0 for the others (a zero gate costs
nothing in the fused kernel).

Gates going out: PEFT has no gate, so a gate value ``g != 1`` is folded into the exported
``lora_alpha`` (``alpha_k * g``, per layer through ``alpha_pattern``); the weights go out
untouched. An adapter whose gate is 0 in every layer is exported with its own alpha and left
inactive.

What travels beside the adapters: a ``modules_to_save`` module (e.g. the classifier of a
``SEQ_CLS`` model) is replaced by the copy PEFT runs now (the first active adapter's; the other
adapters' copies are dropped, with a warning) and its name is recorded in
``model.llf_modules_to_save``, with PEFT's ``task_type`` in ``model.llf_peft_task_type``;
``to_peft`` hands both back to PEFT, so a PEFT reload gives the same logits. Trainable Parameters
that PEFT's adapter files would not hold (outside the adapters and ``modules_to_save``) are named
in a warning by ``to_peft``.

Bases: whatever ``GatedLoRALinear.from_linear`` wraps (``base_layers``): ``nn.Linear``, GPT-2's
``Conv1D`` (PEFT's ``fan_in_fan_out``) and quantized layers such as bitsandbytes' ``Linear4bit``
(a PEFT QLoRA model converts both ways).

Not supported (a ``ValueError`` names the layer): merged adapters (unmerge first), DoRA and the
other LoRA variants, ``lora_bias``, LoRA on embeddings or convolutions, trainable tokens.

Dropout: PEFT's ``lora_dropout`` becomes the layer's ``dropout`` and back. PEFT holds one per
adapter, our layer one per layer (one mask per call shared by the bank): when a layer's adapters
disagree, the active adapters' largest ``p`` is kept and a warning names the layer; ``to_peft``
writes, per adapter, the ``p`` most of its layers have (a warning when they differ, since a
``LoraConfig`` has no per-layer dropout).
"""
from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn

from ..module import base_layers, routing_state
from .inject import (MODULES_TO_SAVE_ATTR, TASK_TYPE_ATTR, _all_names, _set_module,
                     _short_list, extract_base, find_modules_to_save, injected_layers)
from ..module.layer import GatedLoRALinear

# PEFT's name of an adapter created without a name; the one it saves at the top of a directory.
DEFAULT_NAME = "default"
_TASK_SUFFIXES = (("ForCausalLM", "CAUSAL_LM"), ("LMHeadModel", "CAUSAL_LM"),
                  ("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
                  ("ForQuestionAnswering", "QUESTION_ANS"),
                  ("ForConditionalGeneration", "SEQ_2_SEQ_LM"))


def _require_peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("from_peft/to_peft need PEFT: pip install 'litelora-fast[peft]' "
                          "(or pip install peft)") from err
    return peft


def _unwrap(peft_model: nn.Module):
    """``(inner model, adapter order)`` for a ``PeftModel``, a ``LoraModel`` or a plain model whose
    layers PEFT's ``inject_adapter_in_model`` wrapped."""
    peft = _require_peft()
    order = list(getattr(peft_model, "peft_config", {}) or {})
    model = peft_model
    if isinstance(model, peft.PeftModel):
        model = model.base_model
    if isinstance(model, peft.tuners.tuners_utils.BaseTuner):
        model = model.model
    return model, order


def _check_lora_layer(name: str, layer) -> None:
    base = layer.get_base_layer()
    problems = []
    kind = base_layers.base_kind(base)
    if kind is None:
        problems.append(f"its base layer is a {type(base).__name__}, not a linear-like layer")
    if getattr(layer, "fan_in_fan_out", False) and kind != "conv1d":
        problems.append(f"fan_in_fan_out=True on a {type(base).__name__} (only a Conv1D base "
                        "stores its weight transposed)")
    if layer.merged:
        problems.append(f"adapters {layer.merged_adapters} are merged into the base weight "
                        "(call unmerge_adapter() first)")
    if getattr(layer, "lora_variant", None):
        problems.append(f"adapters {sorted(layer.lora_variant)} use a LoRA variant (e.g. DoRA)")
    if any(getattr(layer, "lora_bias", {}).values()):
        problems.append("lora_bias=True")
    # lora.Linear and PEFT's per-backend ones (bnb Linear4bit/Linear8bitLt, ...): PEFT names
    # its linear LoRA layers "...Linear..." (the convention its own "all-linear" relies on).
    if "Linear" not in type(layer).__name__:
        problems.append(f"it is a {type(layer).__name__}, not a linear LoRA layer")
    if problems:
        raise ValueError(f"from_peft cannot convert PEFT layer {name!r}: " + "; ".join(problems))


def from_peft(peft_model: nn.Module) -> nn.Module:
    """Turn a PEFT LoRA model into the same model with ``GatedLoRALinear`` layers, in place.

    Every PEFT adapter of a layer (any number, any ranks and alphas) becomes an entry of its
    bank, in the order the adapters were added to the model; its gate is 1.0 if PEFT has it active
    (``set_adapter``, also a list of names) and 0.0 otherwise, so the output equals PEFT's
    (in eval mode: dropout masks are random). Adapter weights keep their
    ``requires_grad``; the base stays frozen and is shared, not copied.

    Returns the underlying model (``peft_model.get_base_model()`` for a ``PeftModel``), no longer
    wrapped by PEFT. Each layer keeps PEFT's names of its bank entries (``layer.adapter_names``:
    ``llf.set_active_adapters(model, "task1")`` and :func:`to_peft` use them). The
    ``modules_to_save`` names and the ``task_type`` are recorded on the model for :func:`to_peft`
    and ``save_adapters``. When some adapters target only some layers, adapter ``k`` of a
    layer is the ``k``-th of the model's adapters that target that layer.
    """
    peft = _require_peft()
    model, order = _unwrap(peft_model)
    tokens = [n for n, m in model.named_modules() if type(m).__name__ == "TrainableTokensWrapper"]
    if tokens:
        raise ValueError(f"from_peft does not convert trainable tokens (found {tokens[:4]})")
    lora_layers = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, peft.tuners.lora.LoraLayer)]
    if not lora_layers:
        raise ValueError(f"from_peft found no PEFT LoRA layer in the {type(model).__name__}")
    for name, layer in lora_layers:     # check everything before changing anything
        _check_lora_layer(name, layer)
    config = getattr(peft_model, "peft_config", {}) or {}
    task_types = {str(getattr(c.task_type, "value", c.task_type)) for c in config.values()
                  if getattr(c, "task_type", None)}
    all_names = _all_names(model)
    for name, layer in lora_layers:
        gated = _bank_from_lora_layer(name, layer, order)
        for alias in all_names[id(layer)]:
            _set_module(model, alias, gated)
    saved = []
    for name, wrapper in [(n, m) for n, m in model.named_modules()
                          if isinstance(m, peft.utils.other.ModulesToSaveWrapper)]:
        for alias in all_names[id(wrapper)]:
            _set_module(model, alias, _module_in_use(name, wrapper))
        saved.append(name)
    setattr(model, MODULES_TO_SAVE_ATTR, saved)
    routing_state.refuse_unaccepted_input(model)
    if len(task_types) == 1:
        setattr(model, TASK_TYPE_ATTR, task_types.pop())
    # PEFT copies its config dict onto the wrapped model (and deletes it when it unloads); a
    # stale one would make a later get_peft_model think the adapters are still there.
    if "peft_config" in vars(model):
        del model.peft_config
    return model


def _module_in_use(name: str, wrapper) -> nn.Module:
    """The module a ``modules_to_save`` wrapper (e.g. a classifier head) runs now, as PEFT picks
    it: the first active adapter's trained copy, else the original module. Other copies are
    lost (one model has one classifier): a warning names them."""
    active = [] if wrapper.disable_adapters else list(wrapper.active_adapters)
    kept = (active[0] if active and all(a in wrapper.modules_to_save for a in active)
            else None)
    lost = [a for a in wrapper.modules_to_save if a != kept]
    if lost:
        owner = f"adapter {kept!r}" if kept else "the original"
        warnings.warn(f"from_peft: {name!r} keeps {owner}'s copy; the modules_to_save copies of "
                      f"adapter(s) {lost} are dropped", stacklevel=3)
    return wrapper.original_module if kept is None else wrapper.modules_to_save[kept]


def _dropout_of(lname: str, layer, names: list, active: set) -> float:
    """One dropout ``p`` for the bank from PEFT's per-adapter ``lora_dropout``."""
    ps = {n: float(getattr(layer.lora_dropout[n], "p", 0.0)) for n in names}
    chosen = max(ps[n] for n in (active & set(names) or names))
    if len(set(ps.values())) > 1:
        warnings.warn(f"from_peft: layer {lname!r} has lora_dropout {ps}; GatedLoRALinear draws "
                      f"one mask for the whole bank: p = {chosen:g} (the largest of the active "
                      "adapters') is kept", stacklevel=4)
    return chosen


def _bank_from_lora_layer(lname: str, layer, order: list) -> GatedLoRALinear:
    names = [n for n in order if n in layer.lora_A] + [n for n in layer.lora_A if n not in order]
    active = set() if layer.disable_adapters else set(layer.active_adapters)
    gated = GatedLoRALinear.from_linear(layer.get_base_layer(),
                                        dropout=_dropout_of(lname, layer, names, active))
    gated.train(layer.training)
    dtype = gated.adapter_dtype
    with torch.no_grad():
        for name in names:
            A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
            r = A.shape[0]
            k = gated.add_adapter(rank=r, alpha=layer.scaling[name] * r, name=name)
            A_k, B_k = gated.adapter(k)
            # PEFT keeps adapters in fp32 beside a half-precision base, and so does the bank
            # (base_layers' rule); the bank is one dtype.
            A_k.copy_(A.to(dtype))
            B_k.copy_(B.to(dtype))
            A_k.requires_grad_(A.requires_grad)
            B_k.requires_grad_(B.requires_grad)
            gated.gates[k] = 1.0 if name in active else 0.0
    return gated


def _gate_values(name: str, layer: GatedLoRALinear) -> list:
    """The per-adapter gates in effect: ``set_gates`` tensor if any, else the ``gates``
    Parameter. Per-row routing has no PEFT equivalent."""
    external = layer.external_gates
    if external is not None:
        return [float(v) for v in external.detach().tolist()]
    if layer.gate_mode != "per_adapter":
        raise ValueError(f"to_peft cannot export layer {name!r}: gate={layer.gate_mode!r} routes "
                         "each row to its own mix, which PEFT cannot express; set per-adapter "
                         "gates with layer.set_gates(g) first")
    return [float(v) for v in layer.gates.detach().tolist()]


def _alphas(layer: GatedLoRALinear) -> list:
    """``alpha_k`` of each adapter, as the layer records it (exact, so configs show 16, not the
    15.999... that ``scaling_k * r_k`` could give)."""
    return [float(a) for a in layer.alphas]


def _layer_names(name: str, layer: GatedLoRALinear,
                 adapter_names: Optional[Sequence[str]]) -> list:
    K = layer.num_adapters
    if adapter_names is not None:
        if len(adapter_names) < K:
            raise ValueError(f"adapter_names has {len(adapter_names)} names but layer {name!r} "
                             f"has {K} adapters")
        return list(adapter_names[:K])
    # The first adapter under its automatic name becomes PEFT's "default", the one PEFT saves at
    # the top of the directory (others go to DIR/<name>/), so PeftModel.from_pretrained(base,
    # DIR) loads it as PEFT users expect.
    names = layer.adapter_names
    if names and names[0] == "adapter_0" and DEFAULT_NAME not in names:
        names[0] = DEFAULT_NAME
    return names


def infer_task_type(model: nn.Module) -> Optional[str]:
    """PEFT's ``task_type`` for a Hugging Face model class: ``*ForCausalLM`` -> ``CAUSAL_LM``,
    ``*ForSequenceClassification`` -> ``SEQ_CLS`` (PEFT then saves the head), token
    classification, question answering, encoder-decoder LMs; ``None`` for anything else."""
    name = type(model).__name__
    for suffix, task in _TASK_SUFFIXES:
        if name.endswith(suffix):
            if task == "CAUSAL_LM" and getattr(getattr(model, "config", None),
                                               "is_encoder_decoder", False):
                return "SEQ_2_SEQ_LM"
            return task
    return None


def _config_for(peft, entries: list, extra: dict):
    """One ``LoraConfig`` for one adapter name over the layers that hold it. ``entries``: list of
    ``(layer name, r, alpha)``; the most common r / alpha are the defaults, the rest go in
    ``rank_pattern`` / ``alpha_pattern`` under the escaped full name (PEFT matches those keys as
    regexes anchored at the end of the module name)."""
    r0 = Counter(r for _, r, _ in entries).most_common(1)[0][0]
    a0 = Counter(a for _, _, a in entries).most_common(1)[0][0]
    return peft.LoraConfig(
        r=r0, lora_alpha=a0, target_modules=[n for n, _, _ in entries],
        rank_pattern={re.escape(n): r for n, r, _ in entries if r != r0},
        alpha_pattern={re.escape(n): a for n, _, a in entries if a != a0},
        bias="none", init_lora_weights=False, **extra)


def _lost_parameters(model: nn.Module, saved: list) -> list:
    """Names of trainable Parameters that neither the adapters nor ``saved`` modules hold: PEFT's
    adapter files would not carry their trained values."""
    held = {id(p) for m in model.modules() if isinstance(m, GatedLoRALinear)
            for n, p in m.named_parameters() if n not in ("weight", "bias")}
    held |= {id(p) for name in saved for p in model.get_submodule(name).parameters()}
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]


def to_peft(model: nn.Module, adapter_names: Optional[Sequence[str]] = None,
            modules_to_save: Optional[Iterable[str]] = None, task_type: Optional[str] = None):
    """Write the banks of ``model``'s ``GatedLoRALinear`` layers back as PEFT LoRA adapters.

    In place: the layers become ``nn.Linear`` again (sharing their base Parameters) and the model
    is wrapped with ``peft.get_peft_model``; ``copy.deepcopy(model)`` first to keep the gated one.

    Args:
        model: a model with ``GatedLoRALinear`` layers (from :func:`inject` or :func:`from_peft`).
        adapter_names: PEFT's name for bank entry ``k``; default: each layer's
            ``adapter_names`` (PEFT's names after :func:`from_peft`, else ``adapter_<k>``),
            except that an unnamed first adapter (``adapter_0``) is PEFT's ``"default"``: the
            one ``save_pretrained(DIR)`` writes at the top of ``DIR``, which
            ``PeftModel.from_pretrained(base, DIR)`` loads.
        modules_to_save: modules PEFT stores beside the adapters (e.g. ``["classifier"]``);
            default: those recorded by ``inject(modules_to_save=...)`` or :func:`from_peft`.
            Other Parameters that require grad are named in a ``UserWarning``: PEFT's adapter
            files do not hold them, so a PEFT reload would lose their trained values.
        task_type: PEFT's ``task_type`` (e.g. ``"SEQ_CLS"``, which also saves the classifier);
            default: the one :func:`from_peft` recorded, else inferred from the model class
            (:func:`infer_task_type`: ``CAUSAL_LM`` for ``*ForCausalLM``, ``SEQ_CLS`` for
            ``*ForSequenceClassification``, ...), so the result is a ``PeftModelForCausalLM``
            etc.

    Returns a ``PeftModel`` whose output equals ``model``'s: the adapters with a non-zero gate in
    some layer are active (``base_model.set_adapter(list)``), a gate ``g`` other than 1 is folded
    into that layer's ``lora_alpha`` (``alpha_k * g``). ``save_pretrained(DIR)`` writes
    ``"default"`` at the top of ``DIR`` and every other adapter into ``DIR/<name>``; PEFT loads
    them back with ``PeftModel.from_pretrained(base, DIR/<name>, adapter_name=<name>)`` (``DIR``
    for ``"default"``), ``load_adapter(DIR/<name>, adapter_name=<name>)`` for the others, and
    ``base_model.set_adapter(names)`` re-activates several at once (docs/adapters.md).
    """
    peft = _require_peft()
    layers = injected_layers(model)
    if not layers:
        raise ValueError(f"to_peft found no GatedLoRALinear in the {type(model).__name__}")
    saved = find_modules_to_save(model, getattr(model, MODULES_TO_SAVE_ATTR, [])
                                 if modules_to_save is None else modules_to_save)
    if task_type is None:
        task_type = getattr(model, TASK_TYPE_ATTR, None) or infer_task_type(model)
    lost = _lost_parameters(model, saved)
    if lost:
        warnings.warn(f"to_peft: {len(lost)} trainable Parameter(s) outside the adapters and "
                      f"modules_to_save {saved} are not in PEFT's adapter files, so a PEFT "
                      f"reload loses their trained values: {_short_list(lost, 6)}; pass their "
                      "modules in modules_to_save=[...] (or freeze them)", stacklevel=2)
    for layer in layers.values():
        layer.unmerge()      # PEFT gets unmerged adapters and the gates they had
    per_name: dict = {}     # adapter name -> [(layer name, r, alpha, gate, A, B)]
    dropouts: dict = {}     # adapter name -> [the dropout of each layer holding it]
    for lname, layer in layers.items():
        gates = _gate_values(lname, layer)
        names = _layer_names(lname, layer, adapter_names)
        for k, (aname, r, alpha, g) in enumerate(zip(names, layer.ranks, _alphas(layer), gates)):
            A, B = layer.adapter(k)
            per_name.setdefault(aname, []).append((lname, r, alpha, g, A.detach(), B.detach()))
            dropouts.setdefault(aname, []).append(layer.dropout)
    if not per_name:
        raise ValueError("to_peft: the GatedLoRALinear layers hold no adapter; add one first")
    active = [n for n, es in per_name.items() if any(g != 0 for *_, g, _, _ in es)]
    if saved and len(active) > 1:
        # PEFT's ModulesToSaveWrapper runs one adapter's copy at a time and refuses a list.
        raise ValueError(f"to_peft: PEFT runs modules_to_save {saved} with one active adapter, "
                         f"but adapters {active} are on; keep one (llf.set_active_adapters) or "
                         "pass modules_to_save=[]")
    configs = {}
    for aname, entries in per_name.items():
        on = aname in active
        p_drop = Counter(dropouts[aname]).most_common(1)[0][0]
        if len(set(dropouts[aname])) > 1:
            warnings.warn(f"to_peft: adapter {aname!r} sits in layers with dropout "
                          f"{sorted(set(dropouts[aname]))}; PEFT's LoraConfig holds one "
                          f"lora_dropout: {p_drop:g} (the most common) is written", stacklevel=2)
        # A gate folds into alpha only for an adapter that is on somewhere; one that is off
        # everywhere keeps its alpha and is simply left inactive.
        configs[aname] = _config_for(
            peft, [(ln, r, alpha * g if on else alpha) for ln, r, alpha, g, _, _ in entries],
            {"modules_to_save": saved or None, "task_type": task_type, "lora_dropout": p_drop})
    extract_base(model)
    names = list(per_name)
    wrapped = peft.get_peft_model(model, configs[names[0]], adapter_name=names[0])
    for aname in names[1:]:
        wrapped.add_adapter(aname, configs[aname])
    inner = wrapped.base_model.model
    with torch.no_grad():
        for aname, entries in per_name.items():
            for lname, _, _, _, A, B in entries:
                lora = inner.get_submodule(lname)
                lora.lora_A[aname].weight.copy_(A)
                lora.lora_B[aname].weight.copy_(B)
    wrapped.base_model.set_adapter(active)
    return wrapped
