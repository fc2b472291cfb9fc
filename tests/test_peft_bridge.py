"""``from_peft`` / ``to_peft`` against PEFT itself: several named adapters of different ranks and
alphas (rsLoRA, ``rank_pattern``, an adapter on only some layers), any active subset, PEFT's own
save/load. Skipped without PEFT (``pip install litelora-fast[peft]``).

The model is a small float64 MLP with nested names on fresh random weights per run; PEFT's
adapters get random (non-zero) A and B. Forward passes use the PyTorch fast path.
"""
import copy
import os
import warnings

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from litelora_fast.models.inject import injected_layers

from numerics import assert_rel

peft = pytest.importorskip("peft")     # a third-party extra; our own imports above must not skip

F64, F32 = torch.float64, torch.float32


class Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.q_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        x = x + torch.tanh(self.q_proj(x)) * self.v_proj(x)
        return x + self.down(torch.relu(self.up(x)))


class Net(nn.Module):
    def __init__(self, d=16, hidden=24, classes=3):
        super().__init__()
        self.layers = nn.ModuleList([Block(d, hidden) for _ in range(2)])
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


# Adapter names avoid the letters of PEFT's prefix "lora_" (PEFT warns about those).
CONFIGS = {
    "task0": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "task1": dict(r=2, lora_alpha=5, target_modules=["q_proj", "v_proj", "up"],
                  rank_pattern={"v_proj": 3}, alpha_pattern={"up": 7}),
    "task2": dict(r=5, lora_alpha=3, target_modules=r".*\.(q_proj|down)", use_rslora=True),
}


def peft_net(dtype=torch.float64, names=tuple(CONFIGS)):
    """``(base copy, PeftModel)`` with random non-zero adapters ``names``."""
    net = Net().to(dtype)
    base = copy.deepcopy(net)
    model = None
    for name in names:
        config = peft.LoraConfig(init_lora_weights=False, **CONFIGS[name])
        if model is None:
            model = peft.get_peft_model(net, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    return base, model.eval()


def activate(model, active):
    model.base_model.set_adapter(list(active))


@pytest.mark.parametrize("active", [
    pytest.param(["task0"], id="one-active"),
    pytest.param(["task0", "task2"], id="two-active"),
    pytest.param(list(CONFIGS), id="all-active"),
    pytest.param(["task1"], id="partial-targets"),
])
def test_from_peft_matches_peft(fast_path, seed, active):
    _, model = peft_net()
    activate(model, active)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    ref = model(x)
    net = llf.from_peft(model)
    assert isinstance(net, Net) and not hasattr(net, "peft_config")
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in net.modules())
    assert_rel("net(x)", net(x), ref, F64)

    q = net.layers[0].q_proj
    assert isinstance(q, llf.GatedLoRALinear)
    assert q.adapter_names == ["task0", "task1", "task2"] and q.ranks == [4, 2, 5]
    assert q.gates.tolist() == [1.0 if n in active else 0.0 for n in q.adapter_names]
    # rsLoRA's scaling alpha / sqrt(r) survives as alpha_k = scaling * r.
    assert q.scaling[2] == pytest.approx(3 / 5 ** 0.5)
    v, up = net.layers[1].v_proj, net.layers[1].up
    assert v.adapter_names == ["task0", "task1"] and v.ranks == [4, 3]
    assert up.adapter_names == ["task1"] and up.scaling == [pytest.approx(7 / 2)]
    assert type(net.head) is nn.Linear


def test_from_peft_fp32_and_gradients(fast_path, seed):
    """fp32 outputs, and the adapters' gradients equal PEFT's (same A, B, same loss)."""
    _, model = peft_net(torch.float32)
    activate(model, ["task0", "task1"])
    x = torch.randn(4, 7, 16)
    ref = model(x)
    ref.square().sum().backward()
    peft_q = model.base_model.model.layers[1].q_proj
    ref_grads = [peft_q.lora_A["task1"].weight.grad.clone(),
                 peft_q.lora_B["task1"].weight.grad.clone()]
    net = llf.from_peft(model)
    for p in net.parameters():
        p.grad = None
    out = net(x)
    assert_rel("out", out, ref, F32)
    out.square().sum().backward()
    A, B = net.layers[1].q_proj.adapter(1)
    assert_rel("A.grad", A.grad, ref_grads[0], F32)
    assert_rel("B.grad", B.grad, ref_grads[1], F32)


def test_from_peft_disabled_adapters_give_the_base(fast_path, seed):
    base, model = peft_net()
    x = torch.randn(6, 16, dtype=torch.float64)
    with model.disable_adapter():
        net = llf.from_peft(model)
        assert all((layer.gates == 0).all() for layer in injected_layers(net).values())
    assert_rel("net(x)", net(x), base(x), F64)


def gated_net(seed_gates):
    """A Net with injected layers holding random adapters, ranks 1-5 and mixed gates:
    ``task0`` on everywhere at 1, ``task1`` at fractional/negative gates and 0 in one layer,
    ``task2`` off everywhere."""
    net = Net().double().eval()
    base = copy.deepcopy(net)
    llf.inject(net, ["q_proj", "v_proj", "layers.0.down"], rank=4, alpha=8)
    g = torch.Generator().manual_seed(seed_gates)
    for i, (name, layer) in enumerate(injected_layers(net).items()):
        for k, (r, alpha) in enumerate([(4, 8.0), (1 + i, 2.0 + i), (5, 3.0)]):
            layer.add_adapter(rank=r, alpha=alpha)
            with torch.no_grad():
                layer.adapter(k)[1].normal_(generator=g)
        g1 = 0.0 if i == 1 else float(torch.empty(()).uniform_(-2, 2, generator=g))
        with torch.no_grad():
            layer.gates.copy_(torch.tensor([1.0, g1, 0.0], dtype=torch.float64))
    return base, net


def test_to_peft_matches_and_peft_reloads_it(fast_path, seed, tmp_path):
    base, net = gated_net(seed)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    ref = net(x)
    A_v = net.layers[1].v_proj.adapter(2)[0].detach().clone()
    model = llf.to_peft(net, adapter_names=["task0", "task1", "task2"])
    assert isinstance(model, peft.PeftModel)
    assert_rel("model(x)", model(x), ref, F64)
    peft_v = model.base_model.model.layers[1].v_proj
    assert sorted(peft_v.active_adapters) == ["task0", "task1"], "task2 is off everywhere"
    assert peft_v.r == {"task0": 4, "task1": 5, "task2": 5}  # layers.1.v_proj is i = 4
    # An adapter that is off everywhere keeps its weights and its own alpha.
    assert torch.equal(peft_v.lora_A["task2"].weight, A_v) and peft_v.scaling["task2"] == 3 / 5

    model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "task0", adapter_name="task0")
    for name in ("task1", "task2"):
        loaded.load_adapter(os.fspath(tmp_path / name), adapter_name=name)
    activate(loaded, ["task0", "task1"])
    assert_rel("loaded.eval()(x)", loaded.eval()(x), ref, F64)


def test_peft_round_trip_keeps_weights_and_outputs(fast_path, seed):
    _, model = peft_net()
    activate(model, ["task1", "task2"])
    x = torch.randn(5, 16, dtype=torch.float64)
    ref = model(x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    back = llf.to_peft(llf.from_peft(model))
    assert_rel("back(x)", back(x), ref, F64)
    assert {n: p for n, p in back.named_parameters() if "lora_" in n}.keys() == weights.keys()
    for n, p in back.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, weights[n]), n


def test_default_adapter_names(fast_path, seed):
    _, net = gated_net(seed)
    model = llf.to_peft(net)
    # The unnamed first adapter is PEFT's "default" (saved at the top of a directory).
    assert list(model.peft_config) == ["default", "adapter_1", "adapter_2"]


def test_unsupported_peft_layers_are_named():
    _, model = peft_net(names=["task0"])
    model.base_model.model.layers[0].q_proj.merge()
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj.*merged.*unmerge"):
        llf.from_peft(model)

    net = Net()
    dora = peft.get_peft_model(net, peft.LoraConfig(r=2, target_modules=["up"], use_dora=True))
    with pytest.raises(ValueError, match=r"layers\.0\.up.*variant"):
        llf.from_peft(dora)
    # Nothing was changed by the failed call: the check runs before any swap.
    assert isinstance(dora.base_model.model.layers[0].up, peft.tuners.lora.LoraLayer)

    with pytest.raises(ValueError, match="no PEFT LoRA layer"):
        llf.from_peft(Net())


def test_to_peft_errors():
    with pytest.raises(ValueError, match="no GatedLoRALinear"):
        llf.to_peft(Net())
    net = llf.inject(Net(), ["q_proj"], num_adapters=1, gate="per_row")
    with pytest.raises(ValueError, match=r"layers\.0\.q_proj.*per_row"):
        llf.to_peft(net)
    net = llf.inject(Net(), ["q_proj"], num_adapters=2)
    with pytest.raises(ValueError, match=r"adapter_names has 1 names.*2 adapters"):
        llf.to_peft(net, adapter_names=["only"])


def test_from_peft_keeps_the_modules_to_save_in_use(fast_path, seed):
    """A classifier trained beside the adapters (``modules_to_save``): the active adapter's copy
    replaces the wrapper."""
    net = Net().double()
    model = None
    for name in ("task0", "task1"):
        config = peft.LoraConfig(init_lora_weights=False, modules_to_save=["head"],
                                 **CONFIGS[name])
        if model is None:
            model = peft.get_peft_model(net, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    model.set_adapter("task1")
    with torch.no_grad():
        for p in model.base_model.model.head.modules_to_save["task1"].parameters():
            p.normal_()
    x = torch.randn(4, 16, dtype=torch.float64)
    ref = model.eval()(x)
    with pytest.warns(UserWarning, match=r"'head' keeps adapter 'task1'.*\['task0'\] are dropped"):
        net = llf.from_peft(model)
    assert type(net.head) is nn.Linear and net.llf_modules_to_save == ["head"]
    assert_rel("net(x)", net(x), ref, F64)


def test_modules_to_save_survive_a_peft_reload(fast_path, seed, tmp_path):
    """inject(modules_to_save=["head"]) -> train the head -> to_peft -> PEFT save/load onto the
    untouched base: the same outputs (the head travels in PEFT's adapter files)."""
    net = Net().double().eval()
    base = copy.deepcopy(net)
    llf.inject(net, ["q_proj", "v_proj"], rank=3, alpha=6, num_adapters=1,
               modules_to_save=["head"])
    with torch.no_grad():
        for layer in injected_layers(net).values():
            layer.adapter(0)[1].normal_()
        net.head.weight.normal_()          # "trained": differs from the base's head
    x = torch.randn(5, 16, dtype=torch.float64)
    ref = net(x)
    model = llf.to_peft(net)
    assert_rel("to_peft", model(x), ref, F64)
    model.save_pretrained(tmp_path)       # "default" at the top, as PEFT users expect
    loaded = peft.PeftModel.from_pretrained(base, os.fspath(tmp_path)).eval()
    assert_rel("PEFT reload", loaded(x), ref, F64)


def tiny_bert_classifier():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=24, num_labels=3)
    return transformers.BertForSequenceClassification(config).double().eval()


def test_task_type_and_modules_to_save_round_trip(fast_path, seed, tmp_path):
    """A SEQ_CLS PEFT model (BERT classifier) through from_peft and back keeps task_type and the
    classifier PEFT trained: logits after a PEFT reload onto the untouched base are equal."""
    net = tiny_bert_classifier()
    base = copy.deepcopy(net)
    config = peft.LoraConfig(init_lora_weights=False, task_type="SEQ_CLS", r=4, lora_alpha=8,
                             target_modules=["query", "value"])
    model = peft.get_peft_model(net, config, adapter_name="task0").eval()
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["task0"].weight.normal_()
    ids = torch.randint(0, 40, (2, 7))
    ref = model(input_ids=ids).logits
    gated = llf.from_peft(model)
    assert gated.llf_peft_task_type == "SEQ_CLS" and gated.llf_modules_to_save == ["classifier"]
    assert_rel("from_peft", gated(input_ids=ids).logits, ref, F64)
    with pytest.raises(TypeError, match="accept_adapter_ids"):    # not dropped silently
        gated(input_ids=ids, adapter_ids=["task0", "task0"])
    back = llf.to_peft(gated)
    assert back.peft_config["task0"].task_type == "SEQ_CLS"
    assert "classifier" in back.peft_config["task0"].modules_to_save
    back.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(base, os.fspath(tmp_path / "task0")).eval()
    assert_rel("PEFT reload", loaded(input_ids=ids).logits, ref, F64)


def test_to_peft_modules_to_save_with_two_active_adapters_is_refused(fast_path, seed):
    net = llf.inject(Net().double(), ["q_proj"], num_adapters=2, modules_to_save=["head"])
    with pytest.raises(ValueError, match=r"one active adapter.*\['default', 'adapter_1'\]"):
        llf.to_peft(net)
    assert len(injected_layers(net)) == 2, "nothing changed by the failed call"
    llf.set_active_adapters(net, "adapter_1")
    assert isinstance(llf.to_peft(net), peft.PeftModel)


def test_to_peft_names_what_peft_would_lose(fast_path, seed):
    net = llf.inject(Net().double(), ["q_proj"], num_adapters=1, freeze_base=False)
    with pytest.warns(UserWarning, match=r"to_peft: 12 trainable Parameter\(s\) outside.*"
                                         r"layers\.0\.v_proj\.weight"):
        llf.to_peft(net)
    quiet = llf.inject(Net().double(), ["q_proj"], num_adapters=1)     # freeze_base: nothing lost
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llf.to_peft(quiet)


def test_lora_dropout_is_carried_both_ways(fast_path, seed):
    net = Net()
    model = peft.get_peft_model(net, peft.LoraConfig(r=2, target_modules=["up", "q_proj"],
                                                     lora_dropout=0.1), adapter_name="task0")
    gated = llf.from_peft(model)
    assert [layer.dropout for layer in injected_layers(gated).values()] == [0.1] * 4
    back = llf.to_peft(gated)
    assert back.peft_config["task0"].lora_dropout == 0.1
    assert back.base_model.model.layers[1].up.lora_dropout["task0"].p == 0.1


def test_lora_dropout_that_differs_is_named(fast_path, seed):
    _, model = peft_net(names=["task0"])
    model.add_adapter("task1", peft.LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.3))
    activate(model, ["task0", "task1"])
    # One warning per layer holding both (layers.0.q_proj, layers.1.q_proj): each must match.
    with pytest.warns(UserWarning, match=r"layers\.\d\.q_proj.*'task0': 0\.0, 'task1': 0\.3.*"
                                         r"p = 0\.3"):
        net = llf.from_peft(model)
    assert net.layers[0].q_proj.dropout == 0.3 and net.layers[0].v_proj.dropout == 0.0
    with pytest.warns(UserWarning, match=r"adapter 'task0'.*dropout \[0\.0, 0\.3\].*"
                                         r"lora_dropout: 0\.3 \(the most common\)"):
        back = llf.to_peft(net)
    assert back.peft_config["task1"].lora_dropout == 0.3


def test_set_active_adapters_by_peft_name(fast_path, seed):
    _, model = peft_net()
    x = torch.randn(4, 16, dtype=torch.float64)
    activate(model, ["task1", "task2"])
    ref = model(x)
    net = llf.from_peft(copy.deepcopy(model))
    llf.set_active_adapters(net, "task0")
    assert net.layers[0].q_proj.gates.tolist() == [1.0, 0.0, 0.0]
    assert net.layers[1].up.gates.tolist() == [0.0]       # up holds task1 only
    llf.set_active_adapters(net, ["task1", "task2"])
    assert_rel("same subset as PEFT", net(x), ref, F64)
    with pytest.raises(KeyError, match=r"\['task9'\].*'task0', 'task1', 'task2'"):
        llf.set_active_adapters(net, ["task9"])
