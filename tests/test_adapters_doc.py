"""docs/adapters.md runs: the blocks of the whole-model save, of model-level adapter management
(to PEFT and back with PEFT's own loaders) and of multi-tenant routing, as written, on a tiny
Llama (fast path). The Trainer block is a fragment (``args``, ``data``): that flow runs in
tests/test_trainer_checkpoints.py."""
import pathlib
import re

import pytest
import torch

import litelora_fast as llf

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from numerics import assert_rel  # noqa: E402
from tiny_llms import ids as tiny_ids, tiny  # noqa: E402

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "adapters.md"
TARGETS = ["q_proj", "v_proj"]


def _block(starting: str) -> str:
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", DOC.read_text(), re.M | re.S)
              if b.startswith(starting)]
    assert len(blocks) == 1, f"one block of {DOC.name} starts with {starting!r}"
    return blocks[0]


def _model_with(names, rank=4, seed=0):
    """A tiny Llama with adapters ``names`` (random, non-zero B) on ``TARGETS``."""
    model = llf.inject(tiny(seed=seed), TARGETS, rank=rank, alpha=2 * rank, num_adapters=0)
    for name in names:
        llf.add_adapter(model, name)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in llf.injected_layers(model).values():
            for k in range(layer.num_adapters):
                layer.adapter(k)[1].normal_(generator=g)
    return model


def _run(block: str, namespace: dict) -> None:
    exec(compile(block, f"{DOC.name}: {block.splitlines()[0]}", "exec"), namespace)


def test_saving_and_adapter_management_blocks_run(fast_path, seed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)              # "dir", "peft_dir", "adapters_of_b" land here
    llf.save_adapters(_model_with(["b"], rank=2, seed=1), "adapters_of_b")
    namespace = {"llf": llf, "peft": peft, "transformers": transformers, "torch": torch,
                 "model": _model_with(["a"]), "ids": tiny_ids()}
    _run(_block("llf.save_pretrained(model"), namespace)
    _run(_block("with llf.disable_adapters(model)"), namespace)
    # PEFT's own loaders give back the exported model: both adapters, at the gates' mix.
    loaded, exported, x = namespace["loaded"], namespace["peft_model"], namespace["ids"]
    assert sorted(loaded.peft_config) == ["a", "b"]
    assert sorted(loaded.base_model.active_adapters) == ["a", "b"]
    with torch.no_grad():
        assert_rel("reloaded logits", loaded(x).logits, exported(x).logits, torch.float32)


def test_routing_block_runs(fast_path, seed):
    batch = tiny_ids(batch=4)
    namespace = {"llf": llf, "torch": torch, "model": _model_with(["tenant_a", "tenant_b"]),
                 "ids": batch, "token_ids": torch.randint(-1, 2, batch.shape),
                 "weights": torch.rand(4, 2), "prompts": batch[:2, :4]}
    _run(_block("with llf.route(model"), namespace)
    assert namespace["out"].shape == (2, 24)
