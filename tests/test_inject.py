"""``inject`` / ``extract_base``: PEFT-style name matching, exact round trips, clear errors.

The models are small float64 toys (a transformer-ish block with nested names, a tied layer and a
non-Linear container) on fresh random weights and inputs per run (``seed`` fixture). Forward
passes go through the PyTorch fast path (``fast_path``); one test runs the swapped model through
the Triton kernels under the interpreter.
"""
import logging

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from litelora_fast.models.inject import find_targets
from numerics import assert_rel, rel_err

injected_layers = llf.injected_layers          # reachable from the package (issue 11)


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d, bias=False)

    def forward(self, x):
        q, k, v = self.query(x), self.key(x), self.value(x)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return x + self.dense(att @ v)


class Toy(nn.Module):
    """Two attention blocks, a feed-forward, and a head tied to ``proj`` (one module, two names)."""

    def __init__(self, d=12, hidden=20, classes=5):
        super().__init__()
        self.blocks = nn.ModuleList([Attention(d) for _ in range(2)])
        self.ffn = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.proj = nn.Linear(d, classes)
        self.head = self.proj

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x + self.ffn(x)) + self.proj(x)


def toy(dtype=torch.float64):
    return Toy().to(dtype)


QV = ["blocks.0.query", "blocks.0.value", "blocks.1.query", "blocks.1.value"]


@pytest.mark.parametrize("targets, expected", [
    pytest.param(["query", "value"], QV, id="suffixes"),
    pytest.param(["blocks.1.value"], ["blocks.1.value"], id="exact-name"),
    pytest.param(r"blocks\.\d+\.(query|value)", QV, id="regex"),
    pytest.param(("ffn.0", "ffn.2"), ["ffn.0", "ffn.2"], id="sequential-indices"),
    pytest.param(["head"], ["proj"], id="tied-alias"),
])
def test_name_matching_follows_peft(targets, expected):
    assert find_targets(toy(), targets) == expected


def test_suffix_matches_whole_components_and_regex_the_whole_name():
    model = toy()
    # "uery" is a suffix of the string "query" but not a name component: PEFT does not match it.
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        find_targets(model, ["uery"])
    # re.fullmatch, not re.search: "query" alone is not the whole name "blocks.0.query".
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        find_targets(model, "query")


def test_inject_then_extract_round_trip(fast_path, seed):
    model = toy().eval()
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    ref = model(x)
    params_before = {n: p for n, p in model.named_parameters()}
    grads_before = {n: p.requires_grad for n, p in params_before.items()}

    out = llf.inject(model, ["query", "value", "proj"], rank=4, alpha=8)
    assert out is model
    layers = injected_layers(model)
    assert sorted(layers) == sorted(model.llf_injected) == sorted(
        ["blocks.0.query", "blocks.0.value", "blocks.1.query", "blocks.1.value", "proj"])
    assert model.head is model.proj, "the tied alias must point at the same swapped layer"
    assert all(isinstance(m, llf.GatedLoRALinear) for m in layers.values())
    assert layers["proj"].weight is params_before["proj.weight"], "base must be shared, not copied"
    # No adapter yet: the swapped model is exactly the original one (same F.linear call).
    assert torch.equal(model(x), ref)

    # With adapters the output moves; extract_base drops them and restores the base exactly.
    for layer in layers.values():
        for rank in (2, 5):
            k = layer.add_adapter(rank=rank)
            nn.init.normal_(layer.adapter(k)[1])
    assert rel_err(model(x), ref) > 1e-3
    assert llf.extract_base(model) is model
    assert not injected_layers(model) and not hasattr(model, "llf_injected")
    assert type(model.proj) is nn.Linear and model.head is model.proj
    assert torch.equal(model(x), ref)
    for name, p in model.named_parameters():
        assert p is params_before[name] and p.requires_grad == grads_before[name], name


def test_injected_adapters_match_a_float64_formula(fast_path, seed):
    """One swapped layer inside a model: base + sum_k g_k * alpha_k / r_k * B_k A_k x."""
    model = toy().eval()
    llf.inject(model, ["blocks.0.value"], rank=3, alpha=6, num_adapters=1)
    layer = model.blocks[0].value
    ranks, alphas, gates = [3, 1, 4], [6.0, 2.0, 3.0], [0.7, 0.0, -1.3]
    for r, a in zip(ranks[1:], alphas[1:]):
        layer.add_adapter(rank=r, alpha=a)
    with torch.no_grad():
        layer.gates.copy_(torch.tensor(gates, dtype=torch.float64))
        for k in range(3):
            layer.adapter(k)[1].normal_()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    expected = x @ layer.weight.T + layer.bias
    for k, (r, a, g) in enumerate(zip(ranks, alphas, gates)):
        A, B = layer.adapter(k)
        expected = expected + g * a / r * (x @ A.T) @ B.T
    assert_rel("layer(x)", layer(x), expected, torch.float64)


def test_training_reaches_only_the_adapters(fast_path, seed):
    model = toy()
    llf.inject(model, ["query", "value"], rank=2, alpha=4, num_adapters=1)
    x = torch.randn(4, 6, 12, dtype=torch.float64)
    for layer in injected_layers(model).values():
        nn.init.normal_(layer.adapter(0)[1])
    model(x).square().sum().backward()
    for name, layer in injected_layers(model).items():
        A, B = layer.adapter(0)
        assert A.grad is not None and B.grad is not None, name
        assert A.grad.norm() > 0 and B.grad.norm() > 0, name
        assert layer.weight.grad is None, f"{name}: the base must stay frozen"


def test_inject_runs_the_triton_kernels(interpreter, seed):
    """The swapped model in fp32 through the interpreted kernels, against the float64 formula."""
    from litelora_fast.kernels import LAUNCH_COUNTS

    model = toy(torch.float32).eval()
    llf.inject(model, ["blocks.1.query"], rank=3, alpha=5, num_adapters=2)
    layer = model.blocks[1].query
    with torch.no_grad():
        for k in range(2):
            layer.adapter(k)[1].normal_()
    x = torch.randn(9, 12)
    before = sum(LAUNCH_COUNTS.values())
    out = layer(x)
    assert sum(LAUNCH_COUNTS.values()) > before, "the interpreter must have run our kernels"
    xd = x.double()
    expected = xd @ layer.weight.double().T + layer.bias.double()
    for k in range(2):
        A, B = (t.double() for t in layer.adapter(k))
        expected = expected + 5 / 3 * (xd @ A.T) @ B.T
    assert_rel("kernels", out, expected, torch.float32)


def test_summary_is_logged_and_printed(caplog, capsys):
    model = toy()
    with caplog.at_level(logging.INFO, logger="litelora_fast.models.inject"):
        llf.inject(model, ["query"], rank=2, alpha=4, verbose=True)
    assert "swapped" in caplog.text and "query x2" in caplog.text
    assert "blocks.0.query" in capsys.readouterr().out
    llf.inject(model, ["value"], rank=2, alpha=4)
    assert model.llf_injected == ["blocks.0.query", "blocks.1.query",
                                  "blocks.0.value", "blocks.1.value"]
    assert capsys.readouterr().out == "", "quiet unless verbose"


def test_no_match_lists_the_linear_modules():
    model = toy()
    with pytest.raises(ValueError) as info:
        llf.inject(model, ["q_proj", "v_proj"])
    message = str(info.value)
    assert "q_proj" in message and "blocks.0.query" in message and "ffn.0" in message


def test_no_match_names_non_linear_matches_and_injected_layers():
    model = toy()
    with pytest.raises(ValueError, match=r"other types.*blocks\.0 \(Attention\)"):
        llf.inject(model, ["blocks.0"])
    llf.inject(model, ["query"])
    with pytest.raises(ValueError, match=r"already injected: blocks\.0\.query"):
        llf.inject(model, ["query"])


@pytest.mark.parametrize("bad, error, pattern", [
    pytest.param([], ValueError, "empty", id="empty-list"),
    pytest.param("blocks.(", ValueError, "not a valid regular expression", id="bad-regex"),
    pytest.param(3, TypeError, "list of module names or a regex", id="int"),
    pytest.param(["query", 4], TypeError, "non-empty strings", id="int-entry"),
    pytest.param(None, TypeError, "list of module names or a regex", id="none"),
])
def test_bad_target_modules(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        llf.inject(toy(), bad)


def test_refuses_what_swapping_cannot_adapt():
    with pytest.raises(TypeError, match="from_linear"):
        llf.inject(nn.Linear(3, 4), ".*")
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        llf.inject(mha, ["out_proj"])
    with pytest.raises(TypeError, match="nn.Module"):
        llf.extract_base("not a model")


def test_extract_base_of_a_bare_layer(fast_path, seed):
    linear = nn.Linear(6, 3).double()
    layer = llf.GatedLoRALinear.from_linear(linear, rank=2, num_adapters=1)
    back = llf.extract_base(layer)
    assert type(back) is nn.Linear and back.weight is linear.weight and back.bias is linear.bias


# ------------------------------------------------------------------------------- PEFT-like
def test_inject_freezes_all_but_adapters_by_default(fast_path, seed, capsys):
    model = toy()
    llf.inject(model, ["query", "value"], rank=2, alpha=4, num_adapters=1,
               modules_to_save=["ffn.2"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = {f"blocks.{b}.{m}.lora_{ab}.0" for b in (0, 1) for m in ("query", "value")
                for ab in "AB"}
    assert trainable == adapters | {"ffn.2.weight", "ffn.2.bias"}
    assert [id(p) for p in llf.trainable_parameters(model)] == [
        id(p) for n, p in model.named_parameters() if n in trainable]
    count, total = llf.print_trainable_parameters(model)
    assert count == sum(p.numel() for p in llf.trainable_parameters(model))
    assert total == sum(p.numel() for p in model.parameters())   # the tied head counted once
    assert capsys.readouterr().out == (f"trainable params: {count:,d} || all params: {total:,d} "
                                       f"|| trainable%: {100 * count / total:.4f}\n")
    k = model.blocks[0].query.add_adapter()      # recruited later: trainable
    assert model.blocks[0].query.adapter(k)[0].requires_grad
    llf.extract_base(model)
    assert all(p.requires_grad for p in model.parameters()), "extract_base unfreezes"


def test_inject_sets_the_dropout_of_every_swapped_layer():
    model = llf.inject(toy(), ["query", "value"], dropout=0.25)
    assert [m.dropout for m in injected_layers(model).values()] == [0.25] * 4
    with pytest.raises(ValueError, match="dropout must be in"):
        llf.inject(toy(), ["query"], dropout=-0.1)


def test_inject_freeze_base_opt_out(fast_path, seed):
    model = toy()
    model.ffn[0].requires_grad_(False)           # the user's own choice is kept
    llf.inject(model, ["query"], num_adapters=1, freeze_base=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"ffn.0.weight", "ffn.0.bias"} | {
        f"blocks.{b}.query.{w}" for b in (0, 1) for w in ("weight", "bias", "gates")}


def test_modules_to_save_errors():
    with pytest.raises(ValueError, match=r"'classifier' matched no module.*blocks, ffn, proj"):
        llf.inject(toy(), ["query"], modules_to_save=["classifier"])
    with pytest.raises(ValueError, match=r"\['blocks.0'\] contain layers that target_modules"):
        llf.inject(toy(), ["query"], modules_to_save=["blocks.0"])
    with pytest.raises(TypeError, match="list of module names"):
        llf.inject(toy(), ["query"], modules_to_save="ffn")


def test_set_active_adapters_by_index(fast_path, seed):
    model = toy()
    llf.inject(model, ["query", "value"], rank=2, num_adapters=3)
    llf.set_active_adapters(model, [0, 2])
    assert all(layer.gates.tolist() == [1.0, 0.0, 1.0] for layer in injected_layers(model).values())
    llf.set_active_adapters(model, "adapter_1")
    assert all(layer.active_adapters == [1] for layer in injected_layers(model).values())
    with pytest.raises(IndexError, match=r"blocks\.0\.query.*index 3 out of range"):
        llf.set_active_adapters(model, [3])
    model.blocks[1].value.set_gates(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"blocks\.1\.value.*set_gates"):
        llf.set_active_adapters(model, [0])
    assert model.blocks[0].query.active_adapters == [1], "nothing changed by a failed call"
    with pytest.raises(ValueError, match="no GatedLoRALinear"):
        llf.set_active_adapters(toy(), [0])


# ------------------------------------------------------------------------------- merge
@pytest.mark.parametrize("external", [False, True], ids=["own-gates", "set_gates"])
def test_merge_and_unload_gives_plain_linear_layers(external, fast_path, seed):
    model = toy().eval()
    llf.inject(model, ["query", "value", "proj"], rank=3, alpha=5, num_adapters=2)
    g = torch.tensor([0.8, -1.5], dtype=torch.float64)
    with torch.no_grad():
        for layer in injected_layers(model).values():
            for k in range(2):
                layer.adapter(k)[1].normal_()
            if external:
                layer.set_gates(g)
            else:
                layer.gates.copy_(g)
    model.blocks[0].value.merge() if not external else None    # already merged: stays in
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    ref = model(x)
    assert llf.merge_and_unload(model) is model
    assert not injected_layers(model) and type(model.proj) is nn.Linear
    assert model.head is model.proj and not hasattr(model, "llf_injected")
    assert_rel("merged model", model(x), ref, torch.float64)
    assert all(p.requires_grad for p in model.parameters())


def test_merge_and_unload_errors(fast_path, seed):
    model = toy()
    llf.inject(model, ["query"], num_adapters=1, gate="per_row")
    with pytest.raises(ValueError, match=r"blocks\.0\.query.*per_row"):
        llf.merge_and_unload(model)
    assert len(injected_layers(model)) == 2, "nothing changed by a failed call"
    with pytest.raises(KeyError, match="no layer has adapter"):
        llf.merge_and_unload(model, adapters=["nope"])
    linear = llf.merge_and_unload(llf.GatedLoRALinear(4, 3, num_adapters=1))
    assert type(linear) is nn.Linear
