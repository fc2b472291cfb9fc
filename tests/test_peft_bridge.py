"""``from_peft`` / ``to_peft`` against PEFT itself: several named adapters of different ranks and
alphas (rsLoRA, ``rank_pattern``, an adapter on only some layers), any active subset, PEFT's own
save/load. Skipped without PEFT (``pip install litelora-fast[peft]``).

The model is a small float64 MLP with nested names on fresh random weights per run; PEFT's
adapters get random (non-zero) A and B. Forward passes use the PyTorch fast path.
"""
import copy
import os

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from litelora_fast.inject import injected_layers

peft = pytest.importorskip("peft")

# float64 end to end: both sides sum the same few dozen products, relative error ~1e-16.
TOL_F64 = 1e-12
# fp32: PEFT and our fast path order the additions differently; D <= 24 terms of fp32 rounding.
TOL_F32 = 1e-5


def rel_err(out, ref):
    return ((out - ref).norm() / ref.norm()).item()


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
    assert rel_err(net(x), ref) < TOL_F64

    q = net.layers[0].q_proj
    assert isinstance(q, llf.GatedLoRALinear)
    assert q.llf_adapter_names == ["task0", "task1", "task2"] and q.ranks == [4, 2, 5]
    assert q.gates.tolist() == [1.0 if n in active else 0.0 for n in q.llf_adapter_names]
    # rsLoRA's scaling alpha / sqrt(r) survives as alpha_k = scaling * r.
    assert q.scaling[2] == pytest.approx(3 / 5 ** 0.5)
    v, up = net.layers[1].v_proj, net.layers[1].up
    assert v.llf_adapter_names == ["task0", "task1"] and v.ranks == [4, 3]
    assert up.llf_adapter_names == ["task1"] and up.scaling == [pytest.approx(7 / 2)]
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
    assert rel_err(out, ref) < TOL_F32
    out.square().sum().backward()
    A, B = net.layers[1].q_proj.adapter(1)
    assert rel_err(A.grad, ref_grads[0]) < TOL_F32
    assert rel_err(B.grad, ref_grads[1]) < TOL_F32


def test_from_peft_disabled_adapters_give_the_base(fast_path, seed):
    base, model = peft_net()
    x = torch.randn(6, 16, dtype=torch.float64)
    with model.disable_adapter():
        net = llf.from_peft(model)
        assert all((layer.gates == 0).all() for layer in injected_layers(net).values())
    assert rel_err(net(x), base(x)) < TOL_F64


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
    assert rel_err(model(x), ref) < TOL_F64
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
    assert rel_err(loaded.eval()(x), ref) < TOL_F64


def test_peft_round_trip_keeps_weights_and_outputs(fast_path, seed):
    _, model = peft_net()
    activate(model, ["task1", "task2"])
    x = torch.randn(5, 16, dtype=torch.float64)
    ref = model(x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    back = llf.to_peft(llf.from_peft(model))
    assert rel_err(back(x), ref) < TOL_F64
    assert {n: p for n, p in back.named_parameters() if "lora_" in n}.keys() == weights.keys()
    for n, p in back.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, weights[n]), n


def test_default_adapter_names(fast_path, seed):
    _, net = gated_net(seed)
    model = llf.to_peft(net)
    assert list(model.peft_config) == ["adapter_0", "adapter_1", "adapter_2"]


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
    net = llf.from_peft(model)
    assert type(net.head) is nn.Linear
    assert rel_err(net(x), ref) < TOL_F64
