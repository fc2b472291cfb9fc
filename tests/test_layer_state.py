"""``GatedLoRALinear`` state: state dicts through safetensors, resume-safe loading, the old
(dict) metadata format, adapter names, and merge / unmerge against the float64 reference.

Fresh random draws per run (``seed`` fixture); numbers through ``numerics.assert_rel``; the
PyTorch fast path (``fast_path``).
"""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from litelora_fast import GatedLoRALinear
from litelora_fast.module import layer_meta
from numerics import assert_rel


def make_layer(ranks=(3, 5, 2), gate="per_adapter", dtype=torch.float32, d_in=19, d_out=13):
    layer = GatedLoRALinear(d_in, d_out, rank=4, alpha=8, gate=gate, dtype=dtype)
    for k, r in enumerate(ranks):
        layer.add_adapter(rank=r, alpha=2.0 + k)
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
        if gate == "per_adapter":
            layer.gates.uniform_(0.5, 1.5)
        else:
            layer.router_weight.normal_()
    return layer


# ------------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_state_dict_goes_through_safetensors(gate, fast_path, seed, tmp_path):
    """Every entry is a tensor (the metadata too), so safetensors stores it and a fresh layer
    gets back the bank, names, alphas, frozen flags and gate trainability."""
    src = make_layer(gate=gate)
    src.freeze_adapter(1)
    src.add_adapter(rank=2, alpha=0.1, name="task_x")
    if gate == "per_adapter":
        src.gates.requires_grad_(True)
    state = src.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "layer.safetensors")
    fresh = GatedLoRALinear(src.in_features, src.out_features, gate=gate)
    fresh.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    assert fresh.ranks == src.ranks and fresh.alphas == src.alphas == [2.0, 3.0, 4.0, 0.1]
    assert fresh.adapter_names == ["adapter_0", "adapter_1", "adapter_2", "task_x"]
    assert [fresh.is_frozen(k) for k in range(4)] == [False, True, False, False]
    assert [p.requires_grad for n, p in fresh.named_parameters() if "gate" in n or "router" in n] \
        == [p.requires_grad for n, p in src.named_parameters() if "gate" in n or "router" in n]
    x = torch.randn(3, 4, src.in_features)
    assert torch.equal(fresh(x), src(x))


def test_metadata_survives_half_and_reads_back(seed):
    layer = make_layer(ranks=(2,)).half()
    meta = layer_meta.decode(layer.state_dict()["_extra_state"])
    assert meta["alphas"] == [2.0] and meta["ranks"] == [2] and meta["gate"] == "per_adapter"
    assert meta["names"] == ["adapter_0"] and meta["merged"] == [None]
    with pytest.raises(ValueError, match="uint8 tensor"):
        layer_meta.decode(torch.zeros(3))
    with pytest.raises(ValueError, match="format 7"):
        layer_meta.decode(torch.tensor(list(b'{"format": 7}'), dtype=torch.uint8))


def test_old_dict_metadata_still_loads(fast_path, seed):
    """State dicts written by litelora-fast 0.1.0 held the metadata as a dict."""
    src = make_layer(ranks=(3, 2))
    src.freeze_adapter(0)
    state = src.state_dict()
    state["_extra_state"] = {"alphas": [2.0, 3.0], "requires_grad": [[False, False], [True, True]]}
    fresh = GatedLoRALinear(src.in_features, src.out_features)
    fresh.load_state_dict(state)
    assert fresh.alphas == [2.0, 3.0] and fresh.is_frozen(0) and not fresh.is_frozen(1)
    assert fresh.adapter_names == ["adapter_0", "adapter_1"]
    x = torch.randn(5, src.in_features)
    assert torch.equal(fresh(x), src(x))


def test_same_layout_loads_in_place_and_an_old_optimizer_trains_it(fast_path, seed):
    """Resume: the optimizer was built before the load; it must train the loaded values."""
    src = make_layer(ranks=(3, 2))
    live = make_layer(ranks=(3, 2))
    params = dict(live.named_parameters())
    opt = torch.optim.SGD([p for p in live.parameters() if p.requires_grad], lr=0.1)
    live.load_state_dict(src.state_dict())
    assert all(p is params[n] for n, p in live.named_parameters()), "Parameters were replaced"
    x = torch.randn(8, src.in_features)
    live(x).square().sum().backward()
    opt.step()
    moved = live.lora_B[0].detach() - src.lora_B[0].detach()
    assert moved.abs().max() > 0, "the optimizer did not update the live, loaded Parameter"
    assert_rel("one SGD step", moved, -0.1 * live.lora_B[0].grad, torch.float32)


def test_another_layout_rebuilds_with_a_warning(fast_path, seed):
    src = make_layer(ranks=(3, 2))
    live = make_layer(ranks=(4,))
    old = live.lora_A[0]
    with pytest.warns(UserWarning, match=r"rebuilt.*optimizer built before this load holds "
                                         r"stale"):
        live.load_state_dict(src.state_dict())
    assert live.ranks == [3, 2] and live.lora_A[0] is not old
    empty = GatedLoRALinear(src.in_features, src.out_features)   # nothing to go stale: quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty.load_state_dict(src.state_dict())
    x = torch.randn(2, src.in_features)
    assert torch.equal(live(x), src(x)) and torch.equal(empty(x), src(x))


def test_gate_mode_mismatch_is_named(seed):
    src = make_layer(ranks=(2,), gate="per_row")
    state = src.state_dict()
    state.pop("router_weight")
    state.pop("router_bias")
    with pytest.raises(ValueError, match="gate='per_row', the layer gate='per_adapter'"):
        GatedLoRALinear(src.in_features, src.out_features).load_state_dict(state, strict=False)


# ------------------------------------------------------------------------------- names
def test_adapter_names(seed):
    layer = GatedLoRALinear(6, 4, num_adapters=2)
    assert layer.adapter_names == ["adapter_0", "adapter_1"]
    assert layer.add_adapter(name="task") == 2 and layer.adapter_index("task") == 2
    layer.remove_adapter("adapter_0")
    assert layer.adapter_names == ["adapter_1", "task"]
    layer.add_adapter()
    assert layer.adapter_names == ["adapter_1", "task", "adapter_2"]
    with pytest.raises(ValueError, match="'task' is taken"):
        layer.add_adapter(name="task")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        layer.add_adapter(name="")
    with pytest.raises(KeyError, match="no adapter named 'nope'"):
        layer.adapter_index("nope")


# ------------------------------------------------------------------------------- merge
def reference_output(layer, x):
    ref = copy.deepcopy(layer).double()
    return ref.reference_forward(x.double())


@pytest.mark.parametrize("which, expected", [
    pytest.param(None, [0, 2], id="all-non-zero"),       # adapter 1's gate is 0: left alone
    pytest.param([2, 0], [2, 0], id="two"),
    pytest.param(["adapter_1"], [1], id="by-name-zero-gate"),
])
def test_merge_and_unmerge_float64(which, expected, fast_path, seed):
    layer = make_layer(dtype=torch.float64)
    with torch.no_grad():
        layer.gates[1] = 0.0
    x = torch.randn(6, layer.in_features, dtype=torch.float64)
    before, W = reference_output(layer, x), layer.weight.detach().clone()
    gates = layer.gates.tolist()
    merged = layer.merge(which)
    assert merged == expected
    assert [layer.gates[k].item() for k in merged] == [0.0] * len(merged)
    assert sorted(layer.merged_adapters) == sorted(merged)
    assert_rel("merged output", layer(x), before, torch.float64)
    assert_rel("merged, reference path", layer.reference_forward(x), before, torch.float64)
    # The merged weight is W + sum g_k s_k B_k A_k, formed from the float64 formula.
    delta = sum(gates[k] * layer.scaling[k] * layer.lora_B[k] @ layer.lora_A[k] for k in merged)
    assert_rel("merged W", layer.weight, W + delta, torch.float64)
    assert layer.unmerge() == sorted(merged)
    assert layer.gates.tolist() == gates and layer.merged_adapters == []
    assert_rel("unmerged W", layer.weight, W, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_in_the_base_dtype(dtype, fast_path, seed):
    layer = make_layer(dtype=dtype)
    x = torch.randn(7, layer.in_features, dtype=dtype)
    before = reference_output(layer, x)
    W = layer.weight.detach().double().clone()
    layer.merge()
    assert layer.weight.dtype == dtype
    # One rounding of W + delta to the dtype, then the same GEMM as the unmerged layer.
    assert_rel("merged output", layer(x), before, dtype)
    ref = copy.deepcopy(layer).double()
    delta = sum(g * s * B @ A for g, s, A, B in zip(layer._merged, ref.scaling, ref.lora_A,
                                                    ref.lora_B))
    layer.unmerge()
    # Two roundings to the dtype, each relative to what was rounded: |W + delta|, then |W|.
    assert_rel("unmerged W", layer.weight, W, dtype, scale=W.abs() + delta.abs())


def test_merged_state_travels_and_unmerges_after_loading(fast_path, seed):
    src = make_layer(dtype=torch.float64)
    W, gates = src.weight.detach().clone(), src.gates.tolist()
    src.merge([0, 2])
    fresh = GatedLoRALinear(src.in_features, src.out_features, dtype=torch.float64)
    fresh.load_state_dict(src.state_dict())
    assert fresh.merged_adapters == [0, 2] and "merged" in repr(fresh)
    fresh.unmerge()
    assert_rel("W after reload + unmerge", fresh.weight, W, torch.float64)
    assert fresh.gates.tolist() == gates


def test_merge_errors(fast_path, seed):
    layer = make_layer(ranks=(2, 2))
    layer.merge([0])
    with pytest.raises(ValueError, match=r"already merged"):
        layer.merge([0])
    with pytest.raises(ValueError, match="unmerge"):
        layer.remove_adapter(0)
    layer.unmerge()
    layer.set_gates(torch.ones(2))
    with pytest.raises(ValueError, match="set_gates"):
        layer.merge()
    with pytest.raises(ValueError, match="per_row"):
        make_layer(ranks=(2,), gate="per_row").merge()
    assert make_layer(ranks=(2,)).merge([]) == []
    assert GatedLoRALinear(4, 3).merge() == []        # K = 0: nothing to do


def test_merge_of_nothing_leaves_weight_bitwise(seed):
    layer = make_layer(ranks=(2,))
    with torch.no_grad():
        layer.gates.zero_()
    W = layer.weight.detach().clone()
    assert layer.merge() == [] and torch.equal(layer.weight, W)
    assert isinstance(layer.weight, nn.Parameter) and not layer.weight.requires_grad
