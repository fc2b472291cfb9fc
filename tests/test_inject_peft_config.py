"""``llf.inject(model, peft.LoraConfig(...))`` in one line, and PEFT's names and rules with the
keyword API: the same layers, ranks, scalings and logits as ``peft.get_peft_model`` on the same
weights (tiny Llama / Qwen2 / GPT-2 from configs); fields the bank cannot honour are named."""
import copy
import warnings

import pytest
import torch

import litelora_fast as llf
from numerics import assert_rel
from tiny_llms import copy_adapters_from_peft, ids, tiny, transformers

peft = pytest.importorskip("peft")


def _peft_layers(model, config):
    twin = peft.get_peft_model(copy.deepcopy(model), config)
    inner = twin.base_model.model
    names = sorted(n for n, m in inner.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    return twin, inner, names


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_all_linear_selects_what_peft_selects(kind):
    model = tiny(kind)
    _, _, theirs = _peft_layers(model, peft.LoraConfig(target_modules="all-linear"))
    by_config = llf.inject(copy.deepcopy(model), peft.LoraConfig(target_modules="all-linear"))
    by_keyword = llf.inject(copy.deepcopy(model), "all-linear", num_adapters=1)
    assert sorted(llf.injected_layers(by_config)) == theirs
    assert sorted(llf.injected_layers(by_keyword)) == theirs
    assert "lm_head" not in theirs


def _config():
    return peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, init_lora_weights=False,
                           target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                           exclude_modules=["down_proj"], rank_pattern={"v_proj": 2},
                           alpha_pattern={"o_proj": 3}, layers_to_transform=[1],
                           modules_to_save=["norm"])


def test_lora_config_one_line_equals_peft(fast_path, seed):
    """rsLoRA, rank/alpha patterns, layers_to_transform, exclude_modules, modules_to_save:
    the same layers, ranks and scalings as PEFT, and (same weights) the same logits."""
    model = tiny("llama", torch.float64)
    twin, inner, theirs = _peft_layers(model, _config())
    llf.inject(model, _config())
    layers = llf.injected_layers(model)
    assert sorted(layers) == theirs == ["model.layers.1.self_attn.o_proj",
                                        "model.layers.1.self_attn.q_proj",
                                        "model.layers.1.self_attn.v_proj"]
    for name, layer in layers.items():
        lora = inner.get_submodule(name)
        assert layer.adapter_names == ["default"]
        assert layer.ranks == [lora.r["default"]]
        assert layer.scaling[0] == pytest.approx(lora.scaling["default"], rel=1e-12)
    assert model.llf_modules_to_save == ["model.norm"] and model.model.norm.weight.requires_grad
    copy_adapters_from_peft(model, inner)
    batch = ids()
    assert_rel("logits", model(batch).logits, twin(batch).logits, torch.float64)


def test_seq_cls_task_type_trains_the_head_and_keeps_it_out_of_all_linear():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, num_labels=3, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(cfg)
    config = dict(task_type="SEQ_CLS", target_modules="all-linear")
    _, _, theirs = _peft_layers(model, peft.LoraConfig(**config))
    llf.inject(model, peft.LoraConfig(**config))
    assert sorted(llf.injected_layers(model)) == theirs and "score" not in theirs
    assert model.score.weight.requires_grad and model.llf_peft_task_type == "SEQ_CLS"


def test_targets_peft_adapts_and_we_do_not_are_refused():
    """``embed_tokens`` among the targets: PEFT puts LoRA on it (2,560 trainable on this model
    against 1,792 without); leaving it out silently would train less than the same config."""
    model = tiny("llama")
    targets = ["q_proj", "v_proj", "embed_tokens"]
    twin = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=8,
                                                                     target_modules=targets))
    assert isinstance(twin.base_model.model.model.embed_tokens, peft.tuners.lora.LoraLayer)
    assert sum(p.numel() for p in twin.parameters() if p.requires_grad) == 2560
    with pytest.raises(ValueError, match=r"embed_tokens \(Embedding\).*modules_to_save"):
        llf.inject(copy.deepcopy(model), targets, rank=8, num_adapters=1)
    with pytest.raises(ValueError, match="embed_tokens"):
        llf.inject(copy.deepcopy(model), peft.LoraConfig(r=8, target_modules=targets))


def test_layers_to_transform_with_a_string_target_raises_as_in_peft():
    with pytest.raises(ValueError, match="layers_to_transform"):
        peft.LoraConfig(target_modules=r".*q_proj", layers_to_transform=[1])
    for kwargs in ({"layers_to_transform": [1]}, {"layers_to_transform": 0},
                   {"layers_pattern": "layers"}):
        arg = next(iter(kwargs))
        for target in (r".*q_proj", "all-linear"):
            with pytest.raises(ValueError, match=f"{arg}=.*cannot be used when target_modules "
                                                 "is a str"):
                llf.inject(tiny("llama"), target, num_adapters=1, **kwargs)


def test_refused_fields_are_all_named():
    config = peft.LoraConfig(target_modules=["q_proj"], use_dora=True, bias="all",
                             layer_replication=[(0, 1)], init_lora_weights="pissa")
    with pytest.raises(ValueError) as err:
        llf.inject(tiny("llama"), config)
    for field in ("use_dora", "bias", "layer_replication", "init_lora_weights"):
        assert field in str(err.value)


def test_peft_keyword_names_and_conflicts():
    model = llf.inject(tiny("llama"), ["q_proj"], r=4, lora_alpha=8, lora_dropout=0.1,
                       num_adapters=1)
    layer = model.model.layers[0].self_attn.q_proj
    assert (layer.ranks, layer.alphas, layer.dropout) == ([4], [8.0], 0.1)
    with pytest.raises(ValueError, match="rank= and PEFT's r= name the same setting"):
        llf.inject(tiny("llama"), ["q_proj"], rank=4, r=2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lora_rank'"):
        llf.inject(tiny("llama"), ["q_proj"], lora_rank=4)
    with pytest.raises(ValueError, match=r"given too: \['rank'\]"):
        llf.inject(tiny("llama"), peft.LoraConfig(target_modules=["q_proj"]), rank=4)


def test_default_targets_of_the_model_type():
    model = llf.inject(tiny("llama"), None, num_adapters=1)
    assert {n.rpartition(".")[2] for n in llf.injected_layers(model)} == {"q_proj", "v_proj"}


def test_a_call_that_trains_nothing_warns():
    with pytest.warns(UserWarning, match="0 trainable parameters"):
        llf.inject(tiny("llama"), ["q_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llf.inject(tiny("llama"), ["q_proj"], num_adapters=0)     # recruiting later: said so
        model = llf.inject(tiny("llama"), peft.LoraConfig(target_modules=["q_proj"]))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * 2 * 8 * 32


def test_init_lora_weights_and_inference_mode(seed):
    def first(config):
        model = llf.inject(tiny("llama"), peft.LoraConfig(target_modules=["q_proj"], r=16,
                                                          **config))
        return model.model.layers[0].self_attn.q_proj
    gaussian = first(dict(init_lora_weights="gaussian"))
    assert not gaussian.lora_B[0].any()
    assert 0.5 / 16 < gaussian.lora_A[0].std().item() < 2 / 16
    assert first(dict(init_lora_weights=False)).lora_B[0].abs().sum() > 0
    frozen = first(dict(inference_mode=True))
    assert frozen.is_frozen(0)
