"""The continual-learning examples whose numbers the README quotes, in one-seed runs:
``examples/planted_decisions.py`` and ``examples/digits_tradeoff.py``."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planted_decisions_one_seed(fast_path, seed, capsys):
    module = load("planted_decisions")
    result = module.main(["--seeds", "1", "--first-seed", str(seed % 10_000)])
    assert result["runs"] == len(module.PATTERNS)
    assert result["total"] == sum(len(p) - 1 for p in module.PATTERNS)
    # 140/140 over 40 runs when the README was written; allow one miss on a fresh seed
    assert result["right"] >= result["total"] - 1, result
    assert "recruit/reuse decisions right" in capsys.readouterr().out


def test_digits_tradeoff_one_seed(fast_path, seed, capsys):
    pytest.importorskip("sklearn")
    result = load("digits_tradeoff").main(["--seeds", "1", "--first-seed", str(seed % 10_000)])
    (gap,), (adapters,) = result["gaps"], result["adapters"]
    # one seed: the sweep's single-seed range was -2.16..+2.04 points, adapters at most 14 of 15
    assert -5.0 < gap < 5.0 and 3 <= adapters <= 15, result
    assert "gap mean" in capsys.readouterr().out
