"""Reading one benchmark run: pytest-benchmark JSON, or the harness's JSON lines.

``load(path)`` returns the pytest-benchmark dict; ``rows(data)`` our entries' ``extra_info``
dicts with ``case`` turned into a ``Case``, sorted by case and mode. A missing file raises
``FileNotFoundError`` and a file without our entries ``ValueError`` (the command line turns
both into a one-line error).
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
                return json.load(f)
            entries = [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a benchmark JSON file ({e})") from None
    return {"datetime": "unknown (JSON lines of a run that did not finish)", "machine_info": {},
            "benchmarks": entries}


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
