"""Reading an adapter directory defensively: every malformed field of ``adapters.json`` and every
unreadable file gets one ``ValueError`` naming the file and the field (``load_adapters``).

The JSON written by ``save_adapters`` (``adapter_files.py``) is checked field by field before
anything is loaded, with the layer constructor's own rules (``layer._check_rank``,
``layer._check_alpha``, ``lora_dropout.check_p``): a file can hold nothing that
``GatedLoRALinear``/``add_adapter`` would refuse (alpha 0, rank 0, a duplicate name, ...).
``check_tensor_names`` refuses a tensor that no field of ``adapters.json`` accounts for (an
adapter entry dropped from the JSON would otherwise load a smaller bank, silently); the tensors'
shapes are checked against the layers in ``adapter_files._check_layer``.
"""
from __future__ import annotations

import json
import math
import numbers
import os

from ..module.layer import GATE_MODES, _check_alpha, _check_rank
from ..op.lora_dropout import check_p


class AdapterFileError(ValueError):
    """An adapter file that cannot be loaded: names the file and, for ``adapters.json``, the
    field (``layers['blocks.0.q'].adapters[1].alpha``)."""


def read_json(path, fmt: str) -> dict:
    """``adapters.json``'s content, checked (see ``check_config``; ``fmt``: the format tag)."""
    try:
        text = open(path, encoding="utf-8").read()
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"load_adapters: {os.fspath(path)} is not valid JSON ({e}); is "
                               "the file truncated?") from None
    check_config(config, path, fmt)
    return config


def read_tensors(path, load_file) -> dict:
    """The tensors of ``adapters.safetensors`` (``load_file``: safetensors' reader)."""
    try:
        return load_file(os.fspath(path))
    except Exception as e:        # safetensors raises its own SafetensorError (and others)
        raise AdapterFileError(f"load_adapters: {os.fspath(path)} cannot be read as safetensors "
                               f"({type(e).__name__}: {e}); is the file truncated?") from None


def check_tensor_names(config: dict, tensors: dict, json_path, tensors_path) -> None:
    """Every tensor of ``adapters.safetensors`` belongs to an entry of ``adapters.json`` (an
    adapter of a listed layer, a ``per_row`` router, a listed ``modules_to_save``): an
    ``AdapterFileError`` names the first that does not, and the entries the JSON has."""
    layers = config["layers"]
    expected = set()
    for name, record in layers.items():
        for k in range(len(record["adapters"])):
            expected |= {f"{name}.lora_A.{k}", f"{name}.lora_B.{k}"}
        if record["gate"] == "per_row":
            expected |= {f"{name}.router_weight", f"{name}.router_bias"}
    saved = tuple(f"modules_to_save.{m}." for m in config.get("modules_to_save", []))
    for key in sorted(tensors):
        if key in expected or key.startswith(saved):
            continue
        owner = max((n for n in layers if key.startswith(f"{n}.")), key=len, default=None)
        if owner is None:
            why = (f"{os.fspath(json_path)} has no layer or modules_to_save of that name "
                   f"(layers {_names(layers)}, modules_to_save "
                   f"{config.get('modules_to_save', [])})")
        else:
            record = layers[owner]
            why = (f"layers[{owner!r}] in {os.fspath(json_path)} is a {record['gate']} layer "
                   f"with {len(record['adapters'])} adapter(s)")
        raise AdapterFileError(f"load_adapters: {os.fspath(tensors_path)} holds {key!r}, which "
                               f"no entry of adapters.json accounts for: {why}; a file edited "
                               "by hand? save it again with llf.save_adapters")


def check_config(config, path, fmt: str) -> None:
    """Every field ``load_adapters`` reads, checked; ``AdapterFileError`` on the first bad one."""
    def bad(field: str, why: str):
        return AdapterFileError(f"load_adapters: {os.fspath(path)}: {field} {why}")

    if not isinstance(config, dict):
        raise bad("the top level", f"must be a JSON object, got a JSON {_kind(config)}")
    if config.get("format") != fmt:
        raise bad("format", f"is {config.get('format')!r}, expected {fmt!r}")
    if "layers" not in config:
        raise bad("layers", "is missing")
    layers = config["layers"]
    if not isinstance(layers, dict) or not layers:
        raise bad("layers", f"must be a non-empty object of layer records, got {_short(layers)}")
    saved = config.get("modules_to_save", [])
    if not isinstance(saved, list) or not all(isinstance(m, str) and m for m in saved):
        raise bad("modules_to_save", f"must be a list of module names, got {_short(saved)}")
    for name, record in layers.items():
        _check_layer_record(f"layers[{name!r}]", record, bad)


def _check_layer_record(where: str, record, bad) -> None:
    if not isinstance(record, dict):
        raise bad(where, f"must be an object, got {_short(record)}")
    for key in ("in_features", "out_features"):
        v = _field(record, key, where, bad)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(f"{where}.{key}", f"must be a positive int, got {_short(v)}")
    gate = _field(record, "gate", where, bad)
    if gate not in GATE_MODES:
        raise bad(f"{where}.gate", f"must be one of {GATE_MODES}, got {_short(gate)}")
    if "dropout" in record:
        _constructor_rule(f"{where}.dropout", bad, lambda: check_p(record["dropout"]))
    adapters = _field(record, "adapters", where, bad)
    if not isinstance(adapters, list):
        raise bad(f"{where}.adapters", f"must be a list, got {_short(adapters)}")
    names = set()
    for k, entry in enumerate(adapters):
        at = f"{where}.adapters[{k}]"
        if not isinstance(entry, dict):
            raise bad(at, f"must be an object, got {_short(entry)}")
        name = _field(entry, "name", at, bad)
        if not isinstance(name, str) or not name:
            raise bad(f"{at}.name", f"must be a non-empty string, got {_short(name)}")
        if name in names:
            raise bad(f"{at}.name", f"{name!r} is used by an earlier adapter of the layer")
        names.add(name)
        rank = _field(entry, "rank", at, bad)
        _constructor_rule(f"{at}.rank", bad, lambda: _check_rank(rank, "rank"))
        alpha = _field(entry, "alpha", at, bad)
        _constructor_rule(f"{at}.alpha", bad, lambda: _check_alpha(alpha, "alpha"))
        g = entry.get("gate")
        if gate == "per_adapter" and (isinstance(g, bool) or not isinstance(g, numbers.Real)):
            raise bad(f"{at}.gate", f"must be a number for a per_adapter layer, got {_short(g)}")
        if gate == "per_adapter" and not math.isfinite(g):
            # Python's json reads NaN and Infinity; a gate of either makes every output NaN.
            raise bad(f"{at}.gate", f"must be a finite number, got {g!r}")
        if gate == "per_row" and g is not None:
            raise bad(f"{at}.gate", f"must be null for a per_row layer (its router gates), got "
                                    f"{_short(g)}")
        frozen = _field(entry, "frozen", at, bad)
        if (not isinstance(frozen, list) or len(frozen) != 2
                or not all(isinstance(f, bool) for f in frozen)):
            raise bad(f"{at}.frozen", f"must be [A frozen, B frozen], two booleans, got "
                                      f"{_short(frozen)}")


def _field(record: dict, key: str, where: str, bad):
    if key not in record:
        raise bad(f"{where}.{key}", "is missing")
    return record[key]


def _constructor_rule(field: str, bad, check) -> None:
    """Run one of the constructor's checks; its complaint becomes the file's."""
    try:
        check()
    except (TypeError, ValueError) as e:
        raise bad(field, f"is refused as the layer's constructor would refuse it: {e}") from None


def _names(layers: dict) -> str:
    names = sorted(layers)
    return f"{names[:4]}{' ...' if len(names) > 4 else ''}"


def _kind(v) -> str:
    """The JSON name of a parsed value's type."""
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(v), "number")


def _short(v) -> str:
    text = json.dumps(v)
    return f"{_kind(v)} {text[:60]}{'...' if len(text) > 60 else ''}"
