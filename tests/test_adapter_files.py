"""``save_adapters`` / ``load_adapters``: only the banks (and ``modules_to_save``) in a
safetensors file plus a JSON, loaded onto a model with the same base; clear errors otherwise.

Small float64 models on fresh random weights per run (``seed`` fixture), PyTorch fast path.
"""
import copy
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import litelora_fast as llf
from numerics import assert_rel


class Net(nn.Module):
    def __init__(self, d=10, classes=3):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"q": nn.Linear(d, d), "v": nn.Linear(d, d, bias=False)})
            for _ in range(2))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        for block in self.blocks:
            x = x + torch.tanh(block["q"](x)) * block["v"](x)
        return self.head(x)


def trained(gate="per_adapter"):
    """``(untouched base copy, injected model)``: ragged ranks, names, a frozen adapter, mixed
    gates, a "trained" head."""
    net = Net().double()
    base = copy.deepcopy(net)
    llf.inject(net, ["q", "v"], rank=2, alpha=4, gate=gate, dropout=0.2,
               modules_to_save=["head"])
    net.eval()
    for i, layer in enumerate(llf.injected_layers(net).values()):
        layer.add_adapter(rank=2 + i, alpha=1.5, name="task_a")
        layer.freeze_adapter(0)
        layer.add_adapter(rank=1, name="task_b")
        with torch.no_grad():
            for k in range(2):
                layer.adapter(k)[1].normal_()
            if gate == "per_adapter":
                layer.gates.copy_(torch.tensor([0.7, -1.2], dtype=torch.float64))
            else:
                layer.router_weight.normal_()
    with torch.no_grad():
        net.head.weight.normal_()
    return base, net


@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_round_trip_onto_a_fresh_base(gate, fast_path, seed, tmp_path):
    base, net = trained(gate)
    x = torch.randn(4, 10, dtype=torch.float64)
    ref = net(x)
    llf.save_adapters(net, tmp_path / "ad")
    tensors = load_file(tmp_path / "ad" / "adapters.safetensors")
    assert not any(k.endswith(("q.weight", "q.bias", "v.weight")) for k in tensors), \
        "the base weights must not be in an adapter file"
    assert "modules_to_save.head.weight" in tensors
    config = json.loads((tmp_path / "ad" / "adapters.json").read_text())
    q0 = config["layers"]["blocks.0.q"]
    assert [a["name"] for a in q0["adapters"]] == ["task_a", "task_b"]
    assert [a["rank"] for a in q0["adapters"]] == [2, 1]
    assert [a["alpha"] for a in q0["adapters"]] == [1.5, 4.0]
    assert [a["frozen"] for a in q0["adapters"]] == [[True, True], [False, False]]
    assert q0["dropout"] == 0.2
    if gate == "per_adapter":
        assert [a["gate"] for a in q0["adapters"]] == [0.7, -1.2]
    # A model with no gated layer is injected with the saved targets first.
    loaded = llf.load_adapters(base.eval(), tmp_path / "ad")
    assert_rel("reloaded", loaded(x), ref, torch.float64)
    assert all(m.dropout == 0.2 for m in llf.injected_layers(loaded).values())
    layer = loaded.blocks[1]["v"]
    assert layer.ranks == [5, 1] and layer.adapter_names == ["task_a", "task_b"]
    assert layer.is_frozen(0) and not layer.is_frozen(1) and loaded.head.weight.requires_grad
    assert not loaded.blocks[0]["q"].weight.requires_grad, "freeze_base as in inject"


def test_load_in_place_keeps_an_optimizer_working(fast_path, seed, tmp_path):
    _, src = trained()
    llf.save_adapters(src, tmp_path)
    live = copy.deepcopy(src)                 # same base and layout, other adapter values
    with torch.no_grad():
        for p in llf.trainable_parameters(live):
            p.normal_()
    opt = torch.optim.SGD(llf.trainable_parameters(live), lr=0.1)
    params = {n: p for n, p in live.named_parameters()}
    llf.load_adapters(live, tmp_path)
    assert all(p is params[n] for n, p in live.named_parameters())
    x = torch.randn(3, 10, dtype=torch.float64)
    assert torch.equal(live(x), src(x))
    live(x).sum().backward()
    opt.step()                                # the optimizer holds the live, loaded tensors
    assert not torch.equal(live(x), src(x))


def test_merged_adapters_are_saved_unmerged(fast_path, seed, tmp_path):
    base, net = trained()
    x = torch.randn(3, 10, dtype=torch.float64)
    ref = net(x)
    for layer in llf.injected_layers(net).values():
        layer.merge()
    llf.save_adapters(net, tmp_path)
    loaded = llf.load_adapters(base.eval(), tmp_path)
    assert all(not layer.merged_adapters for layer in llf.injected_layers(loaded).values())
    assert_rel("unmerged reload", loaded(x), ref, torch.float64)


def test_mismatched_targets_and_shapes_are_named(seed, tmp_path):
    _, net = trained()
    llf.save_adapters(net, tmp_path)
    other = llf.inject(Net().double(), ["q"], num_adapters=1)
    with pytest.raises(ValueError, match=r"missing in the model \['blocks.0.v', 'blocks.1.v'\]"):
        llf.load_adapters(other, tmp_path)
    wide = llf.inject(Net(d=12).double(), ["q", "v"])
    with pytest.raises(ValueError, match=r"layer 'blocks.0.q' is \(12, 12\).*\(10, 10\)"):
        llf.load_adapters(wide, tmp_path)
    tensors = load_file(tmp_path / "adapters.safetensors")
    tensors["blocks.1.q.lora_A.1"] = torch.zeros(2, 10, dtype=torch.float64)
    from safetensors.torch import save_file
    save_file(tensors, tmp_path / "adapters.safetensors")
    fresh = Net().double()
    with pytest.raises(ValueError, match=r"blocks\.1\.q\.lora_A\.1 should have shape \(1, 10\).*"
                                         r"the file has \(2, 10\)"):
        llf.load_adapters(fresh, tmp_path)
    with pytest.raises(FileNotFoundError, match="adapters.json"):
        llf.load_adapters(fresh, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no GatedLoRALinear"):
        llf.save_adapters(Net(), tmp_path / "x")
