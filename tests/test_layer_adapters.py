"""``GatedLoRALinear``'s bank changes keep optimizers valid (the gate Parameters are resized in
place), and every method that takes an adapter takes an index or a name (issue 18, item 6)."""
import pytest
import torch

import litelora_fast as llf


def _layer(gate="per_adapter", K=2):
    layer = llf.GatedLoRALinear(6, 5, rank=2, alpha=2, num_adapters=K, gate=gate).double()
    with torch.no_grad():
        for k in range(K):
            layer.adapter(k)[1].normal_()
    return layer


def _step(layer, opt):
    opt.zero_grad()
    layer(torch.randn(4, 6, dtype=torch.float64)).square().sum().backward()
    opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1),
    lambda ps: torch.optim.Adam(ps, lr=0.1)], ids=["sgd", "adam"])
def test_an_optimizer_built_before_add_adapter_steps_the_live_gates(fast_path, seed, make_opt):
    layer = _layer()
    layer.gates.requires_grad_(True)
    gates = layer.gates
    opt = make_opt(list(layer.parameters()))
    _step(layer, opt)                        # Adam now holds (2,) moments for the gates
    k = layer.add_adapter(name="new")
    with torch.no_grad():
        layer.adapter("new")[1].normal_()
    assert layer.gates is gates and gates.shape == (3,) and gates.requires_grad
    before = gates.detach().clone()
    assert before[k] == 1.0
    _step(layer, opt)
    assert (gates.detach() != before).all(), "the optimizer stepped a stale gates Parameter"


def test_kept_gate_values_survive_add_and_remove_in_place(fast_path, seed):
    layer = _layer(K=3)
    with torch.no_grad():
        layer.gates.copy_(torch.tensor([0.5, -2.0, 3.0]))
    gates = layer.gates
    layer.add_adapter()
    assert gates.tolist() == [0.5, -2.0, 3.0, 1.0]
    layer.remove_adapter(1)
    assert layer.gates is gates and gates.tolist() == [0.5, 3.0, 1.0]
    gates.grad = torch.ones(3, dtype=torch.float64)
    layer.add_adapter()
    assert gates.grad is None      # a gradient of the old size could not accumulate


def test_router_parameters_are_resized_in_place(fast_path, seed):
    layer = _layer(gate="per_row")
    weight, bias = layer.router_weight, layer.router_bias
    opt = torch.optim.SGD([weight, bias], lr=0.5)
    _step(layer, opt)
    kept = weight.detach().clone()
    layer.add_adapter()
    assert layer.router_weight is weight and layer.router_bias is bias
    assert weight.shape == (3, 6) and bias.shape == (3,)
    assert torch.equal(weight.detach()[:2], kept) and weight.detach()[2].abs().sum() == 0
    with torch.no_grad():
        layer.adapter(2)[1].normal_()
    _step(layer, opt)
    assert weight.detach()[2].abs().sum() > 0, "the new router row was not trained"


def test_every_adapter_method_takes_an_index_or_a_name(fast_path, seed):
    layer = _layer(K=0)
    layer.add_adapter(name="old")
    layer.add_adapter(name="new")
    assert layer.adapter("new")[0] is layer.adapter(1)[0] is layer.adapter(-1)[0]
    assert layer.is_frozen("old") is False
    layer.freeze_adapter("old")
    assert layer.is_frozen("old") and layer.is_frozen(0) and not layer.is_frozen("new")
    assert layer.adapter_index("new") == 1
    assert torch.equal(layer.delta_weight(["new"]), layer.delta_weight([1]))
    layer.remove_adapter("old")
    assert layer.adapter_names == ["new"]
    for method in (layer.adapter, layer.is_frozen, layer.freeze_adapter, layer.remove_adapter):
        with pytest.raises(KeyError, match=r"no adapter named 'nope'.*\['new'\]"):
            method("nope")
        with pytest.raises(TypeError, match="index \\(int\\) or its name \\(str\\), got float"):
            method(0.0)
        with pytest.raises(IndexError, match="out of range"):
            method(3)


def test_optimizer_state_follows_the_gates_rows(fast_path, seed):
    layer = _layer(K=3)
    layer.gates.requires_grad_(True)
    gates = layer.gates
    opt = torch.optim.SGD([gates], lr=0.01, momentum=0.9)
    _step(layer, opt)
    _step(layer, opt)
    buf = opt.state[gates]["momentum_buffer"].clone()
    layer.add_adapter()                      # rows 0, 1, 2 kept, row 3 new
    layer.remove_adapter(0)                  # rows 1, 2, 3 of that
    with torch.no_grad():
        layer.adapter(2)[1].normal_()
    opt.zero_grad()
    layer(torch.randn(4, 6, dtype=torch.float64)).square().sum().backward()
    grad = gates.grad.clone()
    opt.step()
    expected = 0.9 * torch.cat([buf[1:], buf.new_zeros(1)]) + grad
    assert torch.allclose(opt.state[gates]["momentum_buffer"], expected, rtol=1e-12, atol=0)
    # An optimizer built after the change keeps its own state at the current layout.
    late = torch.optim.Adam([gates], lr=0.01)
    _step(layer, late)
    layer.add_adapter()
    _step(layer, late)
    _step(layer, opt)
    assert late.state[gates]["exp_avg"].shape == (4,) == opt.state[gates]["momentum_buffer"].shape


def test_state_that_cannot_be_aligned_is_reset_with_a_warning(fast_path, seed):
    layer = _layer()
    layer.gates.requires_grad_(True)
    opt = torch.optim.SGD([layer.gates], lr=0.01, momentum=0.9)
    _step(layer, opt)
    layer.add_adapter()
    opt.state[layer.gates]["momentum_buffer"] = torch.zeros(7, dtype=torch.float64)  # foreign
    with pytest.warns(RuntimeWarning, match="could not be aligned.*reset"):
        _step(layer, opt)
    assert opt.state[layer.gates]["momentum_buffer"].shape == (3,)
