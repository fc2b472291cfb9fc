"""Reading one benchmark run: pytest-benchmark JSON, or the harness's JSON lines.

``load(path)`` returns the pytest-benchmark dict; ``rows(data)`` our entries' ``extra_info``
dicts with ``case`` turned into a ``Case``, sorted by case and mode. A missing file raises
``FileNotFoundError``; a file that is not such JSON (another JSON shape included, e.g. ``[]``)
or holds none of our entries ``ValueError`` (the command line turns both into a one-line error).
"""
from __future__ import annotations

import json
import os

from .bench_cases import MODES, Case

_MODE_ORDER = {m: i for i, m in enumerate(MODES)}


def load(path: str) -> dict:
    """pytest-benchmark JSON, or the harness's ``LITELORA_BENCH_JSONL`` lines (``.jsonl``: one
    ``{"name", "extra_info"}`` per case, written as the run goes, so a killed run still reports)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path} (write one with "
                                "`pytest benchmarks/ --benchmark-json BENCH.json`)")
    try:
        with open(path) as f:
            if not path.endswith(".jsonl"):
                data = json.load(f)
            else:
                data = {"datetime": "unknown (JSON lines of a run that did not finish)",
                        "machine_info": {},
                        "benchmarks": [json.loads(line) for line in f if line.strip()]}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a benchmark JSON file ({e})") from None
    _check_shape(data, path)
    return data


def _check_shape(data, path: str) -> None:
    """The JSON shapes ``rows`` and the report read: an object whose ``benchmarks`` is a list of
    objects, each ``extra_info`` an object, ``machine_info`` an object."""
    def bad(what: str, v):
        return ValueError(f"{path}: not pytest-benchmark JSON: {what}, got a JSON "
                          f"{_json_kind(v)}")
    if not isinstance(data, dict):
        raise bad("the top level must be an object with a 'benchmarks' list", data)
    if not isinstance(data.get("machine_info", {}), dict):
        raise bad("'machine_info' must be an object", data["machine_info"])
    entries = data.get("benchmarks", [])
    if not isinstance(entries, list):
        raise bad("'benchmarks' must be a list", entries)
    for i, b in enumerate(entries):
        if not isinstance(b, dict):
            raise bad(f"benchmarks[{i}] must be an object", b)
        if not isinstance(b.get("extra_info", {}), dict):
            raise bad(f"benchmarks[{i}].extra_info must be an object", b["extra_info"])
        case = b.get("extra_info", {}).get("case")
        if "case_id" in b.get("extra_info", {}) and not isinstance(case, dict):
            raise bad(f"benchmarks[{i}].extra_info.case must be an object", case)


def _json_kind(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(v), "number")


def rows(data: dict, path: str = "the benchmark JSON") -> list:
    """Our entries' ``extra_info`` dicts (``case`` as a ``Case``), sorted; ``ValueError`` if none."""
    out = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info", {}))
        if "case_id" not in info:
            continue
        info["case"] = Case.from_dict(info["case"])
        out.append(info)
    if not out:
        raise ValueError(f"{path} holds no litelora-fast benchmark entries "
                         f"(expected pytest-benchmark JSON of `pytest benchmarks/`)")

    def key(i):
        c = i["case"]
        return (c.device, c.dtype, c.d_in, c.d_out, c.n, c.r, c.sparsity, c.train_gates, c.k,
                _MODE_ORDER.get(i["mode"], 9))
    return sorted(out, key=key)
