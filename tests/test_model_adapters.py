"""Model-level adapter management against PEFT on the same weights (``disable_adapters`` vs
``disable_adapter()``, ``merge_adapters`` vs ``merge_adapter()``, ``to_peft`` + ``PeftModel.
from_pretrained(base, DIR)``) and against float64 where PEFT has no equivalent (the weighted mix,
``add_adapter``/``delete_adapter``, ``load_adapters(name=)`` beside the bank, the Trainer
collator path)."""
import copy
import os

import pytest
import torch

import litelora_fast as llf
from numerics import assert_rel
from tenant_models import LLAMA_TARGETS, llama_with_tenants
from tiny_llms import VOCAB, copy_adapters_from_peft, ids, peft_twin, tiny

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def ours_and_peft():
    """The tiny Llama with one adapter, and PEFT's twin holding the same (random) adapter."""
    model = tiny("llama")
    twin, inner = peft_twin(model, r=4, lora_alpha=8, target_modules=LLAMA_TARGETS)
    llf.inject(model, LLAMA_TARGETS, rank=4, alpha=8, num_adapters=1)
    copy_adapters_from_peft(model, inner)
    return model, twin.eval()


def test_disable_adapters_gives_the_base_and_restores(fast_path, seed):
    model, twin = ours_and_peft()
    x = ids()
    base = tiny("llama")(x).logits
    before = model(x).logits
    assert_rel("adapters on, vs PEFT", before, twin(x).logits, torch.float32)
    with llf.disable_adapters(model), twin.disable_adapter():
        assert torch.equal(model(x).logits, base)
        assert torch.equal(twin(x).logits, base)
    assert torch.equal(model(x).logits, before)
    # A set_gates tensor, a merged adapter and a routing in effect come back as they were.
    with llf.route(model, [0, None]):
        routed = model(x).logits
        with llf.disable_adapters(model):
            assert torch.equal(model(x).logits, base)
        assert torch.equal(model(x).logits, routed)
    layers = list(llf.injected_layers(model).values())
    shared = torch.tensor([0.5])
    layers[0].set_gates(shared)
    layers[1].merge()
    with llf.disable_adapters(model):     # unmerged: W back up to one rounding each way
        assert_rel("disabled after merge", model(x).logits, base, torch.float32)
    assert layers[0].external_gates is shared and layers[1].merged_adapters == [0]
    with pytest.raises(RuntimeError, match="boom"):
        with llf.disable_adapters(model):
            raise RuntimeError("boom")
    assert layers[0].external_gates is shared and layers[1].merged_adapters == [0]


def test_merge_and_unmerge_match_peft(fast_path, seed):
    model, twin = ours_and_peft()
    x = ids()
    before = model(x).logits
    merged = llf.merge_adapters(model)
    assert set(merged) == set(llf.injected_layers(model)) and all(v == [0] for v in
                                                                  merged.values())
    twin.merge_adapter()
    assert_rel("merged vs PEFT merged", model(x).logits, twin(x).logits, torch.float32)
    assert_rel("merged vs unmerged", model(x).logits, before, torch.float32)
    assert llf.unmerge_adapters(model)
    assert_rel("unmerged", model(x).logits, before, torch.float32)
    with pytest.raises(KeyError, match="zz"):
        llf.merge_adapters(model, ["zz"])


def test_weighted_mix_against_float64_merge(fast_path, seed):
    model = llama_with_tenants(seed=seed % 1000).eval()
    x = ids()
    llf.set_active_adapters(model, {"a": 0.7, "c": -0.3})
    gates = next(iter(llf.injected_layers(model).values())).gates.tolist()
    assert gates == [0.7, 0.0, -0.3, 0.0]
    mixed = model(x).logits
    # Reference: W + 0.7 dW_a - 0.3 dW_c folded into float64 weights, no adapter left.
    ref = llf.merge_and_unload(copy.deepcopy(model))(x).logits
    assert_rel("weighted mix", mixed, ref, torch.float64)
    with pytest.raises(TypeError, match="finite real numbers"):
        llf.set_active_adapters(model, {"a": float("nan")})


def test_add_and_delete_adapter(fast_path, seed):
    model = llama_with_tenants(names=("a",), seed=seed % 1000).eval()
    x = ids()
    before = model(x).logits
    added = llf.add_adapter(model, "b", rank=2, alpha=4, target_modules=["q_proj", "v_proj"])
    assert len(added) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in added)
    assert torch.equal(model(x).logits, before)          # B starts at zero
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.adapter_names == ["a", "b"] and layer.ranks == [4, 2]
    with pytest.raises(ValueError, match="already hold an adapter named 'b'"):
        llf.add_adapter(model, "b")
    assert llf.delete_adapter(model, "b") == added
    assert layer.adapter_names == ["a"]
    with pytest.raises(KeyError, match="'b'"):
        llf.delete_adapter(model, "b")
    llf.merge_adapters(model)
    with pytest.raises(ValueError, match="merged"):
        llf.delete_adapter(model, "a")


def test_load_adapters_beside_the_bank(fast_path, seed, tmp_path):
    donor = llama_with_tenants(names=("t",), seed=seed % 1000).eval()
    x = ids()
    expected = donor(x).logits
    llf.save_adapters(donor, tmp_path)
    model = llama_with_tenants(names=("a",), seed=seed % 1000).eval()
    with torch.no_grad():                   # same base, its own adapter "a"
        for layer in llf.injected_layers(model).values():
            layer.lora_B[0].normal_(0, 0.1)
    only_a = model(x).logits
    llf.load_adapters(model, tmp_path, name="b")
    layer = model.model.layers[1].mlp.down_proj
    assert layer.adapter_names == ["a", "b"]
    llf.set_active_adapters(model, "b")
    assert torch.equal(model(x).logits, expected)
    llf.set_active_adapters(model, "a")
    assert torch.equal(model(x).logits, only_a)
    with pytest.raises(ValueError, match="already hold an adapter named 'b'"):
        llf.load_adapters(model, tmp_path, name="b")
    llf.save_adapters(model, tmp_path / "two")
    with pytest.raises(ValueError, match=r"adds one adapter per layer.*\['a', 'b'\]"):
        llf.load_adapters(model, tmp_path / "two", name="c")


@pytest.mark.parametrize("kind", ["causal", "seqcls"])
def test_to_peft_loads_with_peft_from_pretrained(fast_path, seed, tmp_path, kind):
    if kind == "causal":
        model = tiny("llama", dtype=torch.float64)
    else:
        config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                          num_hidden_layers=1, num_attention_heads=4,
                                          num_key_value_heads=2, num_labels=3, pad_token_id=0)
        model = transformers.LlamaForSequenceClassification(config).double().eval()
    base = copy.deepcopy(model)
    llf.inject(model, ["q_proj", "v_proj"], rank=4, alpha=8, num_adapters=1)
    with torch.no_grad():
        for layer in llf.injected_layers(model).values():
            layer.lora_B[0].normal_(0, 0.1)
    x = ids()
    ref = model(x).logits
    exported = llf.to_peft(model)
    assert type(exported).__name__ == {"causal": "PeftModelForCausalLM",
                                       "seqcls": "PeftModelForSequenceClassification"}[kind]
    exported.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    loaded = peft.PeftModel.from_pretrained(base, os.fspath(tmp_path)).eval()
    assert_rel("PEFT reload", loaded(x).logits, ref, torch.float64)


def test_trainer_routes_the_collators_adapter_ids(fast_path, seed, tmp_path):
    """Every sample is tenant "b": after training, only "b" has moved."""
    pytest.importorskip("accelerate")
    model = llama_with_tenants(names=("a", "b"), dtype=torch.float32, seed=seed % 1000).train()
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [{"input_ids": t, "tenant": "b"} for t in torch.randint(1, VOCAB, (4, 6))]

    def collate(rows):
        batch = torch.stack([r["input_ids"] for r in rows])
        return {"input_ids": batch, "labels": batch, "adapter_ids": [r["tenant"] for r in rows]}

    args = transformers.TrainingArguments(
        output_dir=os.fspath(tmp_path), max_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, remove_unused_columns=False,
        save_strategy="no", disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=data, data_collator=collate,
                         callbacks=llf.trainer_callbacks()).train()
    for n, p in model.named_parameters():
        if n in start:
            k = int(n.rsplit(".", 1)[1])
            assert torch.equal(p, start[n]) == (k == 0), n
