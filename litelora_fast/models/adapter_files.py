"""Adapter files: only the banks, not the base model (PEFT's ``save_pretrained`` for adapters).

``save_adapters(model, path)`` writes, into the directory ``path``:

- ``adapters.safetensors``: ``<layer>.lora_A.<k>`` ``(r_k, D_in)`` and ``<layer>.lora_B.<k>``
  ``(D_out, r_k)`` for every gated layer, the router of ``gate="per_row"`` layers, and the
  Parameters of the ``modules_to_save`` (``modules_to_save.<module>.<param>``, e.g. a classifier);
- ``adapters.json``: per layer its shape, gate mode, LoRA dropout and, per adapter, name, rank,
  alpha, gate and frozen flags (human readable; the numbers are exact).

``load_adapters(model, path)`` puts them onto a model with the same base: into its gated layers
(same names; a model with none is injected first, with the saved targets), rebuilding banks whose
layout differs. Mismatched targets or shapes raise ``ValueError`` naming the layer and shapes.
Gates given with ``set_gates`` (e.g. LiteLoRA's task gates) are not layer state and are not saved.
``load_adapters(model, path, name="b")`` adds the file's adapter *beside* the bank instead.

Data parallelism (``dist_tensors``): both work on DDP-wrapped and FSDP2-sharded models. Every
rank calls them; ``save_adapters`` gathers the shards and rank 0 writes; ``load_adapters`` reads
the file on every rank and keeps each rank's shard.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from . import dist_tensors
from ..module import layer_meta
from .adapter_file_checks import check_tensor_names, read_json, read_tensors
from .inject import MODULES_TO_SAVE_ATTR, inject, injected_layers
from ..module.layer import GatedLoRALinear

WEIGHTS_NAME = "adapters.safetensors"
CONFIG_NAME = "adapters.json"
FORMAT = "litelora-fast-adapters/1"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as err:
        raise ImportError("save_adapters/load_adapters need safetensors: pip install "
                          "safetensors (transformers installs it)") from err
    return safetensors.torch


def _layer_record(layer: GatedLoRALinear) -> dict:
    # A merged adapter is saved as its unmerged self (its gate as merged): W is not in the file.
    gates = ([float(v) for v in dist_tensors.whole(layer.gates).tolist()]
             if layer.gate_mode == "per_adapter" else None)
    merged = layer._merged
    return {
        "in_features": layer.in_features, "out_features": layer.out_features,
        "gate": layer.gate_mode, "dropout": layer.dropout,
        "adapters": [{"name": n, "rank": r, "alpha": a,
                      "gate": None if gates is None else (gates[k] if merged[k] is None
                                                          else merged[k]),
                      "frozen": [not A.requires_grad, not B.requires_grad]}
                     for k, (n, r, a, (A, B)) in enumerate(zip(
                         layer.adapter_names, layer.ranks, layer.alphas,
                         zip(layer.lora_A, layer.lora_B)))],
    }


def save_adapters(model: nn.Module, path, modules_to_save=None) -> Path:
    """Write the adapter banks of ``model`` (and its ``modules_to_save``) into the directory
    ``path`` (created if needed); returns it. ``modules_to_save``: module names; default those
    recorded by ``inject``/``from_peft`` (``model.llf_modules_to_save``). Under DDP call it on
    every rank or on rank 0 alone; under FSDP2 on every rank (``dist_tensors``: a save on fewer
    ranks raises ``RuntimeError`` instead of hanging in the gather)."""
    st = _safetensors()
    model = dist_tensors.unwrap(model)
    layers = injected_layers(model)
    if not layers:
        raise ValueError(f"save_adapters: the {type(model).__name__} has no GatedLoRALinear "
                         "layer (llf.inject or llf.from_peft first)")
    if any(dist_tensors.is_sharded(p) for p in model.parameters()):
        dist_tensors.all_ranks_arrived("save_adapters")
    # (after the arrival check: a save that raised there is not counted)
    token = dist_tensors.save_token(path) if dist_tensors.running() else None
    whole = dist_tensors.whole
    extra = list(getattr(model, MODULES_TO_SAVE_ATTR, []) if modules_to_save is None
                 else modules_to_save)
    tensors, config = {}, {"format": FORMAT, "layers": {}, "modules_to_save": extra}
    for name, layer in layers.items():
        config["layers"][name] = _layer_record(layer)
        for k in range(layer.num_adapters):
            A, B = layer.adapter(k)
            tensors[f"{name}.lora_A.{k}"] = whole(A).cpu().contiguous()
            tensors[f"{name}.lora_B.{k}"] = whole(B).cpu().contiguous()
        if layer.gate_mode == "per_row":
            tensors[f"{name}.router_weight"] = whole(layer.router_weight).cpu().contiguous()
            tensors[f"{name}.router_bias"] = whole(layer.router_bias).cpu().contiguous()
    for module_name in extra:
        for pname, p in model.get_submodule(module_name).named_parameters():
            tensors[f"modules_to_save.{module_name}.{pname}"] = whole(p).cpu().contiguous()
    path = Path(path)
    if not dist_tensors.is_writer():
        dist_tensors.wait_for_writer(token)
        return path
    path.mkdir(parents=True, exist_ok=True)
    # Each file replaced whole: a rank reading meanwhile sees the old file or the new one.
    _replace(path / WEIGHTS_NAME, lambda f: st.save_file(tensors, os.fspath(f),
                                                         metadata={"format": FORMAT}))
    _replace(path / CONFIG_NAME, lambda f: f.write_text(json.dumps(config, indent=1) + "\n"))
    if token is not None:
        dist_tensors.writer_done(token)
    return path


def _replace(target: Path, write) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``target`` (atomic on one file system)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read(path):
    path = Path(path)
    files = [path / CONFIG_NAME, path / WEIGHTS_NAME]
    missing = [os.fspath(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"load_adapters: {', '.join(missing)} not found (written by "
                                "llf.save_adapters(model, path))")
    # Every field checked, and an unreadable file named (adapter_file_checks.py).
    config = read_json(files[0], FORMAT)
    tensors = read_tensors(files[1], _safetensors().load_file)
    check_tensor_names(config, tensors, *files)
    return config, tensors


def _check_layer(name: str, layer: GatedLoRALinear, record: dict, tensors: dict) -> None:
    saved = (record["out_features"], record["in_features"])
    if (layer.out_features, layer.in_features) != saved or layer.gate_mode != record["gate"]:
        raise ValueError(f"load_adapters: layer {name!r} is ({layer.out_features}, "
                         f"{layer.in_features}) with gate={layer.gate_mode!r}, the file's is "
                         f"{saved} with gate={record['gate']!r}")
    expected = {}
    for k, entry in enumerate(record["adapters"]):
        r = entry["rank"]
        expected[f"{name}.lora_A.{k}"] = ((r, saved[1]), f"rank {r}")
        expected[f"{name}.lora_B.{k}"] = ((saved[0], r), f"rank {r}")
    if record["gate"] == "per_row":
        K = len(record["adapters"])
        expected[f"{name}.router_weight"] = ((K, saved[1]), f"per_row, {K} adapters")
        expected[f"{name}.router_bias"] = ((K,), f"per_row, {K} adapters")
    for key, (shape, what) in expected.items():
        if key not in tensors or tuple(tensors[key].shape) != shape:
            got = tuple(tensors[key].shape) if key in tensors else "missing"
            raise ValueError(f"load_adapters: {key} should have shape {shape} for layer "
                             f"{name!r} ({saved[0]}, {saved[1]}) {what}, the file has {got}")


def _inject_saved(model: nn.Module, config: dict, freeze_base: bool) -> None:
    """Inject the file's layers into a model that has no gated layer yet."""
    records = config["layers"]
    for gate in sorted({r["gate"] for r in records.values()}):
        inject(model, [n for n, r in records.items() if r["gate"] == gate], gate=gate,
               num_adapters=0,
               freeze_base=freeze_base, modules_to_save=config.get("modules_to_save", []))


def _check_modules_to_save(model: nn.Module, config: dict, tensors: dict) -> None:
    for module_name in config.get("modules_to_save", []):
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"load_adapters: the file holds modules_to_save {module_name!r}, "
                             "which the model does not have") from None
        for pname, p in module.named_parameters():
            key = f"modules_to_save.{module_name}.{pname}"
            if key not in tensors or tensors[key].shape != p.shape:
                got = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ValueError(f"load_adapters: {key} should have shape {tuple(p.shape)}, the "
                                 f"file has {got}")


def _load_modules_to_save(model: nn.Module, config: dict, tensors: dict) -> None:
    recorded = getattr(model, MODULES_TO_SAVE_ATTR, [])
    setattr(model, MODULES_TO_SAVE_ATTR, recorded + [
        n for n in config.get("modules_to_save", []) if n not in recorded])
    with torch.no_grad():
        for module_name in config.get("modules_to_save", []):
            for pname, p in model.get_submodule(module_name).named_parameters():
                p.copy_(dist_tensors.like(p, tensors[f"modules_to_save.{module_name}.{pname}"]))


def load_adapters(model: nn.Module, path, freeze_base: bool = True,
                  name: Optional[str] = None) -> nn.Module:
    """Load what :func:`save_adapters` wrote into ``model`` (same base model), in place; returns
    ``model``.

    Without ``name``: ``model``'s gated layers must be exactly the saved ones (``ValueError``
    lists the missing and the unexpected names); a model without any is injected first with the
    saved layer names (``freeze_base`` as in ``inject``). A bank with the saved layout is
    written in place (an optimizer built before keeps training it); another layout is rebuilt,
    with a warning when the layer had adapters. Names, alphas, gates and frozen flags come from
    the file.

    With ``name="b"``: the file's adapter (one per layer, e.g. from a model trained with one
    adapter) is added *beside* the adapters already there, as adapter ``"b"`` of each saved
    layer, with the file's rank, alpha, gate and frozen flags (PEFT's ``load_adapter``). The
    saved layers must be gated layers of ``model`` (it may hold more); a layer that already has
    ``"b"`` raises ``ValueError``. The ``modules_to_save`` in the file overwrite the model's.

    Data parallelism: ``model`` may be wrapped in DDP or sharded with FSDP2; call this on every
    rank (each reads the file and keeps its shard). A bank can be rebuilt or added to only
    before ``fully_shard`` (which fixes the Parameters).
    """
    model = dist_tensors.unwrap(model)
    config, tensors = _read(path)
    if not injected_layers(model):
        _inject_saved(model, config, freeze_base)
    if name is not None:
        return _load_beside(model, config, tensors, name)
    records = config["layers"]
    layers = injected_layers(model)
    if set(layers) != set(records):
        raise ValueError(
            f"load_adapters: the file's gated layers differ from the model's: missing in the "
            f"model {sorted(set(records) - set(layers))}, not in the file "
            f"{sorted(set(layers) - set(records))}")
    for lname, layer in layers.items():     # every check before the first change
        _check_layer(lname, layer, records[lname], tensors)
        ranks = [e["rank"] for e in records[lname]["adapters"]]
        if ranks != layer.ranks and dist_tensors.is_sharded(layer.lora_A[0] if layer.lora_A
                                                             else layer.weight):
            raise ValueError(f"load_adapters: layer {lname!r} has adapters of ranks "
                             f"{layer.ranks}, the file {ranks}; a sharded (FSDP2) bank cannot be "
                             "rebuilt: load before fully_shard")
    _check_modules_to_save(model, config, tensors)
    for lname, layer in layers.items():
        state = {}
        for k, entry in enumerate(records[lname]["adapters"]):
            for kind in ("lora_A", "lora_B"):
                state[f"{kind}.{k}"] = tensors[f"{lname}.{kind}.{k}"]
        adapters = records[lname]["adapters"]
        if layer.gate_mode == "per_adapter":
            state["gates"] = torch.tensor([e["gate"] for e in adapters], dtype=torch.float64)
        else:
            state["router_weight"] = tensors[f"{lname}.router_weight"]
            state["router_bias"] = tensors[f"{lname}.router_bias"]
        if [e["rank"] for e in adapters] == layer.ranks:
            # Each rank's shard of an FSDP2 Parameter (the whole tensor elsewhere).
            state = {k: dist_tensors.like(layer.get_parameter(k), v) for k, v in state.items()}
        # The layer's own state-dict metadata carries names, alphas and frozen flags.
        state["_extra_state"] = layer_meta.encode({
            "gate": layer.gate_mode, "ranks": [e["rank"] for e in adapters],
            "dropout": records[lname].get("dropout", layer.dropout),
            "alphas": [e["alpha"] for e in adapters], "names": [e["name"] for e in adapters],
            "merged": [None] * len(adapters),
            "requires_grad": [[not f for f in e["frozen"]] for e in adapters]})
        layer.unmerge()
        # strict=False: the base weight and bias are not in the file and stay as they are.
        layer.load_state_dict(state, strict=False)
    _load_modules_to_save(model, config, tensors)
    return model


def _load_beside(model: nn.Module, config: dict, tensors: dict, name: str) -> nn.Module:
    """``load_adapters(..., name=)``: the file's one adapter appended to each saved layer."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"load_adapters: name must be a non-empty str, got {name!r}")
    records = config["layers"]
    layers = injected_layers(model)
    saved = sorted({e["name"] for r in records.values() for e in r["adapters"]})
    many = {n: len(r["adapters"]) for n, r in records.items() if len(r["adapters"]) != 1}
    if len(saved) != 1 or many:
        raise ValueError(f"load_adapters(name={name!r}) adds one adapter per layer; the file "
                         f"holds adapters {saved} ({many or 'one per layer'}): load it without "
                         "name= to replace the bank")
    missing = sorted(set(records) - set(layers))
    if missing:
        raise ValueError(f"load_adapters: the file's layers {missing[:4]} are not gated layers "
                         f"of the {type(model).__name__}")
    taken = [n for n in records if name in layers[n].adapter_names]
    if taken:
        raise ValueError(f"load_adapters: layer(s) {taken[:4]} already hold an adapter named "
                         f"{name!r}; delete it (llf.delete_adapter) or pick another name")
    for lname in records:
        _check_layer(lname, layers[lname], records[lname], tensors)
    _check_modules_to_save(model, config, tensors)
    for lname, record in records.items():
        layer, entry = layers[lname], record["adapters"][0]
        k = layer.add_adapter(rank=entry["rank"], alpha=entry["alpha"], name=name)
        A, B = layer.adapter(k)
        with torch.no_grad():
            A.copy_(tensors[f"{lname}.lora_A.0"])
            B.copy_(tensors[f"{lname}.lora_B.0"])
            if layer.gate_mode == "per_adapter":
                layer.gates[k] = entry["gate"]
            else:
                layer.router_weight[k] = tensors[f"{lname}.router_weight"][0]
                layer.router_bias[k] = tensors[f"{lname}.router_bias"][0]
        A.requires_grad_(not entry["frozen"][0])
        B.requires_grad_(not entry["frozen"][1])
    _load_modules_to_save(model, config, tensors)
    return model
