"""``GatedLoRALinear``: drop-in equality, the adapter bank's life cycle, gates, errors, odd but
legal input (K = 0, N = 0, deferred initialisation on the meta device), LoRA dropout.

Numbers are checked against a float64 copy of the same layer run through ``reference_forward``
(the unfused loop) with ``numerics.assert_rel``, on fresh random draws (``seed`` fixture). Most
tests use the PyTorch fast path (``fast_path``); two run the Triton kernels under the interpreter.
Saving and loading (safetensors, resume, old format), merging and adapter names:
``test_layer_state.py``.
"""
import copy

import pytest
import torch
import torch.nn as nn

from litelora_fast import GatedLoRALinear
from litelora_fast import kernels
from numerics import assert_rel
from op_cases import gate_grad_scale


def randomize(layer: GatedLoRALinear) -> GatedLoRALinear:
    """Give every adapter a non-zero B (fresh ones start at 0 and would hide the adapter path)."""
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
    return layer


def make_layer(ranks=(3, 5, 2), gate="per_adapter", d_in=23, d_out=17, bias=True, alphas=None):
    layer = GatedLoRALinear(d_in, d_out, bias=bias, rank=4, alpha=8, gate=gate)
    for k, r in enumerate(ranks):
        layer.add_adapter(rank=r, alpha=None if alphas is None else alphas[k])
    return randomize(layer)


def float64_oracle(layer, x, dy, gates=None):
    """Output and parameter gradients of a float64 copy through the unfused reference."""
    ref = copy.deepcopy(layer).double()
    ext = layer.external_gates
    if ext is not None:
        ref.set_gates(ext.detach().double().requires_grad_(ext.requires_grad))
    x64 = x.detach().double().requires_grad_(x.requires_grad)
    g64 = None if gates is None else gates.detach().double().requires_grad_(gates.requires_grad)
    y = ref.reference_forward(x64, g64)
    y.backward(dy.double())
    grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    if x.requires_grad:
        grads["x"] = x64.grad
    if g64 is not None and g64.requires_grad:
        grads["gates_arg"] = g64.grad
    if ext is not None and ext.requires_grad:
        grads["external"] = ref.external_gates.grad
    return y.detach(), grads


def check_layer(layer, x, gates=None):
    """Forward + backward of ``layer`` against the float64 oracle, every gradient compared."""
    y = layer(x, gates)
    dy = torch.randn_like(y)
    y_ref, g_ref = float64_oracle(layer, x, dy, gates)
    assert y.dtype == x.dtype and y.shape == x.shape[:-1] + (layer.out_features,)
    assert_rel("y", y, y_ref, x.dtype)
    y.backward(dy)
    got = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    if x.requires_grad:
        got["x"] = x.grad
    if gates is not None and gates.requires_grad:
        got["gates_arg"] = gates.grad
    ext = layer.external_gates
    if ext is not None and ext.requires_grad:
        got["external"] = ext.grad
    assert got.keys() == g_ref.keys()
    for name, grad in got.items():
        assert grad is not None, name
        if name in ("gates", "gates_arg", "external"):
            # (K,) or per-row gate gradients: sums that can cancel, see gate_grad_scale
            scale = layer_gate_scale(layer, x, dy, per_row=grad.dim() > 1)
            assert_rel(name, grad, g_ref[name], x.dtype, scale=scale)
        else:
            assert_rel(name, grad, g_ref[name], x.dtype)
    return y


def layer_gate_scale(layer, x, dy, per_row):
    A, B = zip(*(layer.adapter(k) for k in range(layer.num_adapters)))
    offsets = [0]
    for r in layer.ranks:
        offsets.append(offsets[-1] + r)
    return gate_grad_scale(x, torch.cat(A), torch.cat(B, dim=1), dy, offsets, layer.scaling,
                           per_row)


# ------------------------------------------------------------------------------- drop-in
@pytest.mark.parametrize("lead", [(1,), (7,), (3, 5)], ids=["N1", "N7", "3d"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_from_linear_without_adapters_is_bitwise_linear(lead, bias, fast_path, seed):
    linear = nn.Linear(19, 11, bias=bias)
    layer = GatedLoRALinear.from_linear(linear)
    x = torch.randn(*lead, 19)
    assert torch.equal(layer(x), linear(x))
    assert layer.weight is linear.weight and not layer.weight.requires_grad
    assert layer.num_adapters == 0 and layer.active_adapters == []


@pytest.mark.parametrize("gates_train", [False, True], ids=["frozen-gates", "trainable-gates"])
@pytest.mark.parametrize("lead", [(9,), (2, 4)], ids=["2d", "3d"])
def test_all_zero_gates_is_bitwise_linear(lead, gates_train, fast_path, seed):
    linear = nn.Linear(21, 13)
    layer = randomize(GatedLoRALinear.from_linear(linear, rank=3, num_adapters=3))
    with torch.no_grad():
        layer.gates.zero_()
    layer.gates.requires_grad_(gates_train)
    x = torch.randn(*lead, 21)
    assert torch.equal(layer(x), linear(x))
    assert layer.active_adapters == []


def test_new_adapters_leave_the_output_unchanged(fast_path, seed):
    linear = nn.Linear(16, 12)
    layer = GatedLoRALinear.from_linear(linear, rank=4, alpha=8, num_adapters=2)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), linear(x))    # B_k = 0: adding exact zeros
    assert layer.scaling == [2.0, 2.0]
    A, B = layer.adapter(1)
    assert A.shape == (4, 16) and B.shape == (12, 4) and A.abs().sum() > 0 and B.abs().sum() == 0


# ------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("lead", [(1,), (13,), (3, 7), "strided"],
                         ids=["N1", "N13", "3d", "3d-transposed"])
@pytest.mark.parametrize("ranks", [(4,), (3, 1, 6)], ids=["K1", "K3-ragged"])
def test_forward_and_grads_match_float64(ranks, lead, fast_path, seed):
    layer = make_layer(ranks, alphas=[2.0 * (k + 1) for k in range(len(ranks))])
    layer.weight.requires_grad_(True)
    layer.gates.requires_grad_(True)
    with torch.no_grad():
        layer.gates.uniform_(0.25, 1.5)
    if lead == "strided":
        x = torch.randn(5, 4, layer.in_features).transpose(0, 1).requires_grad_()
        assert not x.is_contiguous()
    else:
        x = torch.randn(*lead, layer.in_features, requires_grad=True)
    check_layer(layer, x)


def test_zero_gate_adapter_is_skipped(fast_path, seed):
    layer = make_layer((3, 5, 2))
    with torch.no_grad():
        layer.gates.copy_(torch.tensor([0.7, 0.0, 1.3]))
    assert layer.active_adapters == [0, 2]
    x = torch.randn(11, layer.in_features)
    check_layer(layer, x)
    without = copy.deepcopy(layer)
    without.remove_adapter(1)
    # A frozen zero gate skips its adapter entirely: even NaN weights there cannot leak in.
    with torch.no_grad():
        layer.lora_A[1].fill_(float("nan"))
    assert torch.equal(layer(x), without(x))


# ------------------------------------------------------------------------------- life cycle
def test_freeze_adapter_gets_no_grad(fast_path, seed):
    layer = make_layer((3, 4, 2))
    layer.freeze_adapter(0)
    layer.freeze_adapter(-1)          # negative indices count from the end
    assert [layer.is_frozen(k) for k in range(3)] == [True, False, True]
    check_layer(layer, torch.randn(10, layer.in_features))
    assert all(p.grad is None for k in (0, 2) for p in layer.adapter(k))
    assert all(p.grad is not None for p in layer.adapter(1))
    assert layer.weight.grad is None and layer.bias.grad is None and layer.gates.grad is None
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A.1", "lora_B.1"}


def test_remove_adapter_shifts_later_ones_down(fast_path, seed):
    layer = make_layer((3, 4, 2), alphas=[1.0, 2.0, 3.0])
    with torch.no_grad():
        layer.gates.copy_(torch.tensor([0.5, 1.5, 2.5]))
    layer.freeze_adapter(2)
    kept = [layer.adapter(k) for k in (0, 2)]
    layer.remove_adapter(1)
    assert layer.num_adapters == 2 and layer.ranks == [3, 2]
    assert [p for k in range(2) for p in layer.adapter(k)] == [p for ab in kept for p in ab]
    assert layer.gates.tolist() == [0.5, 2.5] and layer.scaling == [1.0 / 3, 3.0 / 2]
    assert layer.alphas == [1.0, 3.0]
    assert layer.is_frozen(1) and not layer.is_frozen(0)
    check_layer(layer, torch.randn(6, layer.in_features))
    k = layer.add_adapter()
    assert k == 2 and layer.ranks == [3, 2, 4] and layer.gates.tolist() == [0.5, 2.5, 1.0]


def test_remove_every_adapter_returns_to_linear(fast_path, seed):
    layer = make_layer((2, 2))
    layer.remove_adapter(0)
    layer.remove_adapter(0)
    x = torch.randn(4, layer.in_features)
    assert layer.num_adapters == 0 and layer.gates.shape == (0,)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


# ------------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_state_dict_rebuilds_the_bank_in_a_fresh_layer(gate, fast_path, seed):
    src = make_layer((3, 1, 6), gate=gate, alphas=[4.0, 1.0, 9.0])
    src.freeze_adapter(0)
    with torch.no_grad():
        if gate == "per_adapter":
            src.gates.uniform_(0.5, 1.5)
        else:
            src.router_weight.normal_()
            src.router_bias.normal_()
    fresh = GatedLoRALinear(src.in_features, src.out_features, rank=2, gate=gate,
                            num_adapters=1)
    with pytest.warns(UserWarning, match=r"ranks \[3, 1, 6\], the layer had \[2\].*stale"):
        result = fresh.load_state_dict(src.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.ranks == [3, 1, 6] and fresh.scaling == src.scaling
    assert [fresh.is_frozen(k) for k in range(3)] == [True, False, False]
    x = torch.randn(2, 5, src.in_features)
    assert torch.equal(fresh(x), src(x))
    again = fresh.state_dict()
    for key, value in src.state_dict().items():
        assert torch.equal(again[key], value), key     # _extra_state too: a uint8 tensor


# ------------------------------------------------------------------------------- gates
def test_explicit_per_row_gates_override(fast_path, seed):
    layer = make_layer((2, 3, 4))
    x = torch.randn(3, 6, layer.in_features, requires_grad=True)
    g = torch.rand(3, 6, 3) + 0.1
    g[..., 1] = 0.0                       # adapter 1 skipped in some rows... here in all rows
    g[0, 0, 1] = 0.7                      # ...but one row uses it
    check_layer(layer, x, g.requires_grad_())


def test_per_row_router_starts_at_one_and_learns(fast_path, seed):
    layer = make_layer((2, 5), gate="per_row")
    x = torch.randn(4, 3, layer.in_features)
    ones = torch.ones(4, 3, 2)
    assert torch.equal(layer(x), layer(x, ones))   # zero router: 2 * sigmoid(0) == 1 exactly
    with torch.no_grad():
        layer.router_weight.normal_()
        layer.router_bias.normal_()
    check_layer(layer, x)
    assert layer.router_weight.grad.abs().sum() > 0
    assert layer.active_adapters == [0, 1]


def test_set_gates_shared_across_layers(fast_path, seed):
    g = (torch.rand(3) + 0.25).requires_grad_()
    layers = [make_layer((2, 3, 1)), make_layer((4, 4, 4))]
    for layer in layers:
        layer.set_gates(g)
    x = torch.randn(8, layers[0].in_features)
    # Each layer's gradient of the shared gate against float64, then both layers in one graph:
    # autograd must add the two contributions.
    total = torch.zeros(3, dtype=torch.float64)
    magnitude = torch.zeros(3, dtype=torch.float64)    # the two contributions may cancel
    for layer in layers:
        g.grad = None
        check_layer(layer, x)
        g.grad = None
        layer(x).sum().backward()
        total += g.grad.double()
        magnitude += g.grad.double().abs()
    g.grad = None
    (layers[0](x).sum() + layers[1](x).sum()).backward()
    assert_rel("shared gate grad", g.grad, total, torch.float32, scale=magnitude)
    assert layers[0].gates.grad is None
    layers[0].set_gates(torch.tensor([0.0, 2.0, 0.0]))
    assert layers[0].active_adapters == [1]
    layers[0].set_gates(None)
    assert layers[0].active_adapters == [0, 1, 2]
    assert torch.equal(layers[0](x), layers[0](x, layers[0].gates))


def test_set_gates_must_follow_the_bank(fast_path, seed):
    layer = make_layer((2, 2))
    layer.set_gates(torch.ones(2))
    layer.add_adapter()
    with pytest.raises(ValueError, match=r"K = 3 adapters, got \(2,\)"):
        layer(torch.randn(2, layer.in_features))


# ------------------------------------------------------------------------------- training
def test_short_training_run_lowers_the_loss(fast_path, seed):
    d_in, d_out = 12, 6
    teacher = nn.Linear(d_in, d_out)
    layer = GatedLoRALinear.from_linear(nn.Linear(d_in, d_out), rank=4, alpha=4)
    layer.add_adapter()
    layer.freeze_adapter(0)
    layer.add_adapter()
    x = torch.randn(64, d_in)
    target = teacher(x).detach()
    opt = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(40):
        loss = nn.functional.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(layer.lora_B[0], torch.zeros_like(layer.lora_B[0]))   # frozen stays put


# ------------------------------------------------------------------------------- errors
def test_input_errors_name_the_shapes(fast_path):
    layer = make_layer((2, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 23\), got \(4, 22\)"):
        layer(torch.randn(4, 22))
    with pytest.raises(TypeError, match="float64 but the layer's weight is torch.float32"):
        layer(torch.randn(4, 23, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([1.0] * 23)
    with pytest.raises(ValueError, match=r"\(2,\) or \(4, 2\) for a layer with K = 2"):
        layer(torch.randn(4, 23), torch.ones(3))
    with pytest.raises(ValueError, match=r"got \(2, 2\)"):
        layer.set_gates(torch.ones(2, 2))
    with pytest.raises(IndexError, match="index 2 out of range for a layer with 2 adapters"):
        layer.adapter(2)
    with pytest.raises(ValueError, match="rank must be an int >= 1, got 0"):
        layer.add_adapter(rank=0)
    with pytest.raises(ValueError, match="gate must be one of"):
        GatedLoRALinear(4, 4, gate="per_token")
    with pytest.raises(TypeError, match="expects an nn.Linear"):
        GatedLoRALinear.from_linear(nn.Conv1d(2, 2, 1))


def test_extra_repr_is_readable():
    layer = make_layer((3, 1), alphas=[6.0, 2.0])
    layer.freeze_adapter(0)
    text = repr(layer)
    assert "in_features=23, out_features=17, bias=True, base=frozen, gate=per_adapter" in text
    assert "adapters=[0: r=3 s=2 frozen, 1: r=1 s=2]" in text


# ------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_layer_runs_the_kernels_under_the_interpreter(gate, interpreter, seed):
    layer = make_layer((3, 1, 4), gate=gate, d_in=20, d_out=11)
    layer.freeze_adapter(1)
    if gate == "per_adapter":
        layer.gates.requires_grad_(True)
        with torch.no_grad():
            layer.gates.copy_(torch.tensor([0.6, 1.2, 0.0]))
    else:
        with torch.no_grad():
            layer.router_weight.normal_()
    before = sum(kernels.LAUNCH_COUNTS.values())
    check_layer(layer, torch.randn(2, 9, 20, requires_grad=True))
    assert sum(kernels.LAUNCH_COUNTS.values()) > before, "the Triton kernels did not run"


# ------------------------------------------------------------------------------- odd input
@pytest.mark.parametrize("bad, error", [
    pytest.param(float("nan"), ValueError, id="nan"), pytest.param(float("inf"), ValueError,
                                                                  id="inf"),
    pytest.param(0, ValueError, id="zero"), pytest.param("16", TypeError, id="str"),
    pytest.param(b"\x10", TypeError, id="bytes"), pytest.param(True, TypeError, id="bool"),
    pytest.param(torch.tensor(16.0), TypeError, id="tensor"),
])
def test_alpha_must_be_a_finite_nonzero_real(bad, error):
    layer = GatedLoRALinear(6, 4)
    with pytest.raises(error, match="alpha"):
        layer.add_adapter(alpha=bad)
    with pytest.raises(error, match="alpha"):
        GatedLoRALinear(6, 4, alpha=bad)
    assert layer.num_adapters == 0 and layer.gates.shape == (0,)
    k = layer.add_adapter(alpha=-3)           # negative is legal: it flips the update
    assert layer.alphas == [-3.0] and k == 0


@pytest.mark.parametrize("lead", [(5,), (0,), (2, 0)], ids=["N5", "N0", "3d-empty"])
def test_no_adapters_forward_and_backward_are_linear(lead, fast_path, seed):
    """K = 0 (also after removing every adapter): F.linear's output and gradients, to the bit."""
    linear = nn.Linear(7, 3)
    layer = GatedLoRALinear.from_linear(copy.deepcopy(linear), num_adapters=1)
    layer.remove_adapter(0)
    layer.weight.requires_grad_(True)
    x = torch.randn(*lead, 7, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = layer(x), linear(x2)
    assert torch.equal(y, y_ref)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    assert torch.equal(x.grad, x2.grad) and torch.equal(layer.weight.grad, linear.weight.grad)


def test_deferred_init_on_meta_then_to_empty_and_reset(fast_path, seed):
    layer = GatedLoRALinear(9, 5, rank=3, num_adapters=2, device="meta")
    assert layer.weight.is_meta and layer.lora_A[1].is_meta and layer.gates.is_meta
    y = layer(torch.empty(4, 9, device="meta"))          # shapes propagate, nothing computed
    assert y.is_meta and y.shape == (4, 5)
    with pytest.raises(TypeError, match="float64 but the layer's weight is torch.float32"):
        layer(torch.empty(4, 9, device="meta", dtype=torch.float64))
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert layer.gates.tolist() == [1.0, 1.0] and layer.ranks == [3, 3]
    assert all(B.abs().sum() == 0 and A.abs().sum() > 0 for A, B in zip(layer.lora_A,
                                                                         layer.lora_B))
    x = torch.randn(4, 9)
    # B = 0 after the reset: the adapters add exact zeros to F.linear.
    assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    randomize(layer)
    check_layer(layer, x.requires_grad_())
    router = GatedLoRALinear(9, 5, num_adapters=1, gate="per_row", device="meta")
    router.to_empty(device="cpu")
    router.reset_parameters()
    assert router.router_weight.abs().sum() == 0 and router.router_bias.abs().sum() == 0


@pytest.mark.parametrize("backend", ["fast_path", "interpreter"])
@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_empty_batch_with_adapters(backend, gate, monkeypatch, seed):
    """N = 0 rows, K = 2 adapters, everything trainable: empty output and input gradient, zero
    parameter gradients (as nn.Linear gives), on the fast path and through the kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if backend == "interpreter" else "0")
    layer = make_layer((2, 3), gate=gate)
    layer.weight.requires_grad_(True)
    if gate == "per_adapter":
        layer.gates.requires_grad_(True)
    x = torch.randn(0, layer.in_features, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, layer.out_features)
    y.sum().backward()
    assert x.grad.shape == x.shape
    for name, p in layer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), name


# ------------------------------------------------------------------------------- LoRA dropout
@pytest.mark.parametrize("backend", ["fast_path", "interpreter"])
def test_dropout_in_training_matches_the_reference_given_the_mask(backend, monkeypatch, seed):
    """Training mode: the adapters see drop(x) = x * keep / (1 - p) with the call's mask (the
    base sees x); output and every gradient against float64 with the same mask."""
    from litelora_fast.op.lora_dropout import recorded_masks

    monkeypatch.setenv("TRITON_INTERPRET", "1" if backend == "interpreter" else "0")
    layer = make_layer((3, 2), d_in=20, d_out=11)
    layer.dropout = 0.4
    layer.gates.requires_grad_(True)
    x = torch.randn(3, 5, 20, requires_grad=True)
    with recorded_masks() as masks:
        y = layer(x)
    assert len(masks) == 1 and masks[0].shape == (15, 20)
    keep = masks[0].reshape(x.shape)
    assert 0 < keep.sum() < keep.numel()
    dy = torch.randn_like(y)
    ref = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_()
    y_ref = ref.reference_forward(x64, dropout_mask=keep)
    y_ref.backward(dy.double())
    assert_rel("y", y, y_ref, torch.float32)
    y.backward(dy)
    assert_rel("x.grad", x.grad, x64.grad, torch.float32)
    for (name, p), p_ref in zip(layer.named_parameters(), ref.parameters()):
        if p.requires_grad:
            scale = None
            if name == "gates":
                A, B = layer.packed_bank()
                scale = gate_grad_scale(x * keep / 0.6, A, B, dy, layer.rank_offsets,
                                        layer.scaling, per_row=False)
            assert_rel(name, p.grad, p_ref.grad, torch.float32, scale=scale)


def test_dropout_only_in_training_and_it_travels(fast_path, seed):
    layer = make_layer((2,))
    layer.dropout = 0.5
    x = torch.randn(6, layer.in_features)
    layer.eval()
    assert torch.equal(layer(x), layer(x))                   # eval: no mask
    layer.train()
    assert not torch.equal(layer(x), layer(x))               # training: a fresh mask per call
    assert "dropout=0.5" in repr(layer)
    fresh = GatedLoRALinear(layer.in_features, layer.out_features)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.dropout == 0.5
    assert GatedLoRALinear.from_linear(nn.Linear(3, 2), dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="dropout must be in"):
        GatedLoRALinear(4, 3, dropout=1.0)
    with pytest.raises(TypeError, match="dropout must be a real number"):
        GatedLoRALinear(4, 3, dropout="0.1")
