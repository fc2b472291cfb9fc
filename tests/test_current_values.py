"""One property, whatever wrote the values: after any training procedure a layer's output equals
that of a fresh layer loaded from its ``state_dict``, and its gradients equal the unfused
reference's on the same values.

Writers: the torch optimizers fused, foreach and for-loop (fused ones do not bump ``_version``),
bitsandbytes' 8-bit AdamW on the CPU, writes through ``Parameter.data`` (``normal_``, an EMA
update), ``load_state_dict`` and ``torch.nn.init``. Layers: K = 1 and 2 on an fp32 base, a bf16
base with fp32 adapters, a 4-bit base with 2 adapters, per-row gates. A layer that kept a packed
copy of its bank keyed on version counters failed every case here that neither has K = 1 on an
fp32 base nor bumps the counter.
"""
import copy

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from numerics import TOL, assert_rel

D_IN, D_OUT = 64, 32     # (a 4-bit base needs whole 64-blocks in, multiples of 32 out)


def _fp32(K):
    return llf.GatedLoRALinear(D_IN, D_OUT, rank=3, alpha=5, num_adapters=K)


def _bf16():
    return llf.GatedLoRALinear(D_IN, D_OUT, rank=3, alpha=5, num_adapters=2,
                               dtype=torch.bfloat16)


def _per_row():
    return llf.GatedLoRALinear(D_IN, D_OUT, rank=3, alpha=5, num_adapters=2, gate="per_row")


def _four_bit():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(3)
    plain = nn.Linear(D_IN, D_OUT)
    base = bnb.nn.Linear4bit(D_IN, D_OUT, compute_dtype=torch.float32, quant_type="nf4")
    base.weight = bnb.nn.Params4bit(plain.weight.data, requires_grad=False, quant_type="nf4")
    base.bias = nn.Parameter(plain.bias.data, requires_grad=False)
    base = base.to("cpu")
    base.support_avx512bf16_for_cpu = False    # one path on every CPU (test_base_layers has both)
    return llf.GatedLoRALinear.from_linear(base, rank=3, alpha=5, num_adapters=2)


LAYERS = {"K1-fp32": lambda: _fp32(1), "K2-fp32": lambda: _fp32(2), "bf16-base": _bf16,
          "4bit-K2": _four_bit, "per-row": _per_row}


def _optimizer(kind):
    def make(params):
        if kind == "bnb-adamw8bit":
            bnb = pytest.importorskip("bitsandbytes")
            return bnb.optim.AdamW8bit(params, lr=5e-2)
        name, mode = kind.split("-")
        cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
        flags = {"fused": dict(fused=True), "foreach": dict(foreach=True),
                 "loop": dict(foreach=False)}[mode]
        return cls(params, lr=5e-2, **({"momentum": 0.9} if name == "sgd" else {}), **flags)
    return make


def _data_normal(layer):
    for p in _trainable(layer):
        p.data.normal_()


def _ema(layer):
    """An EMA-style update through ``.data`` (as an averaged-weights callback writes it)."""
    for p in _trainable(layer):
        p.data.mul_(0.5).add_(torch.randn_like(p.data), alpha=0.5)


def _load_state_dict(layer):
    other = copy.deepcopy(layer)
    with torch.no_grad():
        for p in _trainable(other):
            p.normal_()
    _load(layer, other.state_dict())


def _load(layer, state):
    if not hasattr(layer, "base_layer"):
        layer.load_state_dict(state)
        return
    # A 4-bit base is rebuilt from the same seed; bitsandbytes loads its quant state only into an
    # unquantized layer (as from_pretrained does), so the bank and gates are what is loaded.
    state = {k: v for k, v in state.items() if not k.startswith("base_layer.")}
    missing = layer.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith("base_layer.") for k in missing), missing


def _nn_init(layer):
    for p in _trainable(layer):
        nn.init.normal_(p, std=0.5)


STEPPERS = ["adamw-fused", "adam-fused", "sgd-fused", "adamw-foreach", "adamw-loop",
            "bnb-adamw8bit"]
WRITES = {"data.normal_": _data_normal, "data-ema": _ema, "load_state_dict": _load_state_dict,
          "nn.init": _nn_init}


def _trainable(layer):
    return [p for p in layer.parameters() if p.requires_grad]


def _batch(layer, g):
    dtype = torch.bfloat16 if layer.weight.dtype == torch.bfloat16 else torch.float32
    return torch.randn(2, 3, D_IN, generator=g).to(dtype)


def _check(layer, make, x, name):
    """The output equals a fresh layer's loaded from the state dict (bit for bit: the same code
    on the same values), and the gradients equal the float64 reference's."""
    fresh = make()
    _load(fresh, layer.state_dict())
    with torch.no_grad():
        assert torch.equal(layer(x), fresh(x)), f"{name}: output differs from a fresh load"
    params = _trainable(layer)
    y = layer(x)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, params, dy)
    twin = copy.deepcopy(layer).double() if not hasattr(layer, "base_layer") else None
    if twin is not None:
        ref = twin.reference_forward(x.double())
        ref_grads = torch.autograd.grad(ref, _trainable(twin), dy.double())
        dtype = x.dtype
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_rel(f"{name}: grad {i}", g, r, dtype, scale=r.abs() + TOL[torch.float64])
    else:     # a 4-bit base: the reference on the same base, in the adapters' float32
        ref = layer.reference_forward(x)
        ref_grads = torch.autograd.grad(ref, params, dy)
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_rel(f"{name}: grad {i}", g, r, torch.float32, scale=r.abs() + 1e-6)


def _train(layer, step_or_write, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = _batch(layer, g)
    opt = _optimizer(step_or_write)(_trainable(layer)) if step_or_write in STEPPERS else None
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()             # (B starts at zero: every adapter matters from step 1)
    for _ in range(steps):
        loss = layer(x).float().square().mean()
        if opt is not None:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            WRITES[step_or_write](layer)
    return x


@pytest.mark.parametrize("writer", STEPPERS + list(WRITES))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_trained_layer_equals_a_fresh_load(kind, writer, fast_path, seed):
    make = LAYERS[kind]
    torch.manual_seed(seed)
    layer = make()
    if kind == "K2-fp32":
        layer.freeze_adapter(0)           # continual learning: an old adapter and a new one
        layer.gates.requires_grad_(True)
    x = _train(layer, writer, seed=seed)
    _check(layer, make, x, f"{kind}/{writer}")


@pytest.mark.parametrize("write", ["index", "copy_", "fill_", "numpy"])
def test_frozen_gates_are_read_as_they_are_now(write, fast_path, seed):
    """Frozen ``(K,)`` gates, written in every way a user can: the op computes with the values
    they hold at the call. Zero gates start out skipped, so a host copy kept from the first
    call (keyed on the version counter, which none of these writes bumps) would go on skipping
    an adapter whose gate is no longer zero."""
    import numpy as np
    g = torch.Generator().manual_seed(seed)
    x, W = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g)
    A, B = torch.randn(6, 8, generator=g), torch.randn(4, 6, generator=g)
    array = np.array([0.5, 0.0, 0.0], dtype=np.float32)
    gates = torch.from_numpy(array) if write == "numpy" else torch.tensor([0.5, 0.0, 0.0])
    llf.gated_lora_linear(x, W, None, A, B, gates)       # a first call with the old values
    if write == "index":
        gates.data[1] = 2.0
    elif write == "copy_":
        gates.data.copy_(torch.tensor([0.0, 3.0, 0.25]))
    elif write == "fill_":
        gates.data.fill_(1.0)
    else:
        array[:] = [2.0, 1.0, -1.0]
    y = llf.gated_lora_linear(x, W, None, A, B, gates)
    ref = llf.reference.gated_lora_linear_ref(x.double(), W.double(), None, A.double(),
                                              B.double(), gates.double())
    assert_rel(f"gates after {write}", y, ref, torch.float32)


def test_layer_gates_written_through_data_are_seen(fast_path, seed):
    layer = _fp32(3)
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
        layer.gates[1] = 0.0
    x = torch.randn(4, D_IN)
    layer(x)
    layer.gates.data[1] = 3.0
    ref = copy.deepcopy(layer).double().reference_forward(x.double())
    assert_rel("y", layer(x), ref, torch.float32)


@pytest.mark.parametrize("write", ["data", "numpy"])
def test_tensor_scaling_and_offsets_are_read_as_they_are_now(write, fast_path, seed):
    import numpy as np
    g = torch.Generator().manual_seed(seed)
    x, W = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g)
    A, B = torch.randn(6, 8, generator=g), torch.randn(4, 6, generator=g)
    gates = torch.tensor([1.0, 1.0])
    offsets_np = np.array([0, 2, 6])
    scaling_np = np.array([2.0, 0.5])
    if write == "numpy":
        offsets, scaling = torch.from_numpy(offsets_np), torch.from_numpy(scaling_np)
    else:
        offsets, scaling = torch.tensor([0, 2, 6]), torch.tensor([2.0, 0.5])
    llf.gated_lora_linear(x, W, None, A, B, gates, offsets, scaling)
    if write == "numpy":
        offsets_np[1], scaling_np[:] = 4, [0.25, 3.0]
    else:
        offsets.data[1] = 4
        scaling.data.copy_(torch.tensor([0.25, 3.0]))
    y = llf.gated_lora_linear(x, W, None, A, B, gates, offsets, scaling)
    assert torch.equal(y, llf.gated_lora_linear(x, W, None, A, B, gates, [0, 4, 6], [0.25, 3.0]))


@pytest.mark.parametrize("spelling", ["names", "weights"])
def test_routed_training_with_fused_adamw_equals_a_fresh_load(spelling, fast_path, seed):
    """``llf.route`` by names (one adapter per row) and by mixing weights (two active adapters a
    row), trained with fused AdamW: the loss moves, and the trained model equals a fresh one
    loaded from its state dict under the same routing."""
    from tenant_models import llama_with_tenants
    from tiny_llms import VOCAB

    names = ("a", "b")
    model = llama_with_tenants(names, dtype=torch.float32, seed=seed).train()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 6), generator=g)
    if spelling == "names":
        route = ["a", "b", "b", "a"]
    else:
        route = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5], [1.0, 0.25]])
    kwargs = {} if spelling == "names" else {"names": list(names)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2,
                            fused=True)
    first = None
    for _ in range(6):
        with llf.route(model, route, **kwargs):
            loss = model(ids, labels=ids).loss
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    with llf.route(model, route, **kwargs):
        last = model(ids, labels=ids).loss.item()
    assert last < first - 0.05, (first, last)
    fresh = llama_with_tenants(names, dtype=torch.float32, seed=seed + 1)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    with torch.no_grad(), llf.route(model, route, **kwargs):
        ours = model(ids).logits
    with torch.no_grad(), llf.route(fresh, route, **kwargs):
        theirs = fresh(ids).logits
    assert torch.equal(ours, theirs)


def test_litelora_learner_model_equals_a_fresh_load(fast_path, seed):
    """LiteLoRA's learner (shared task gates, a frozen old adapter, a recruited new one), run with
    Adam: the trained network equals a fresh one given its state dict and the learner's gates."""
    from litelora_fast.litelora import ContinualLearner

    def net():
        torch.manual_seed(seed)
        return llf.inject(nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)),
                          ["0", "2"], rank=2, alpha=4, num_adapters=0)

    model = net()
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(model, lam=-10.0, seed=seed, epochs=2, reuse_epochs=1,
                               gate_epochs=1, gate_batch_size=16, batch_size=16,
                               variant="library", protocol="task-incremental")
    for _ in range(2):
        X = torch.randn(48, 12, generator=g)
        learner.learn_task(X, torch.randn(48, 4, generator=g), loss_fn=nn.functional.mse_loss)
    layers = llf.injected_layers(model)
    assert all(layer.num_adapters == 2 for layer in layers.values())
    fresh = net()
    for name, layer in llf.injected_layers(fresh).items():
        for k in range(layers[name].num_adapters):
            layer.add_adapter(rank=layers[name].ranks[k])
    fresh.load_state_dict(model.state_dict())
    gates = {name: layer.external_gates for name, layer in layers.items()}
    for name, layer in llf.injected_layers(fresh).items():
        layer.set_gates(None if gates[name] is None else gates[name].detach().clone())
    x = torch.randn(5, 12, generator=g)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))
