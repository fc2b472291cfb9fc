"""Any linear-like base (``base_layers``): GPT-2's ``Conv1D`` on the fused path (W^T as a view),
and bases the kernels cannot read (bitsandbytes ``Linear4bit``/``Linear8bitLt``, an
``nn.Linear`` subclass with its own forward) through the base's forward plus the LoRA-only op.
Against PEFT on the same weights where PEFT has the feature (one adapter on Conv1D, on 4-bit and
8-bit bases), against float64 where it does not (gated banks, ragged ranks, per-row gates)."""
import copy

import pytest
import torch
import torch.nn as nn

import litelora_fast as llf
from litelora_fast.module.layer_on_module import GatedLoRAOnModule
from numerics import TOL, assert_rel
from tiny_llms import (assert_4bit_cpu_path, copy_adapters_from_peft, ids, peft_twin,
                       quantized_llama, select_4bit_cpu_path, tiny)

pytest.importorskip("peft")


class OwnForward(nn.Linear):
    """An ``nn.Linear`` with its own forward: a base the layer must treat as a black box."""

    def forward(self, x):
        return super().forward(x) * 1.0


def _lora_grads(model):
    return {f"{n}.{i}": p.grad for n, m in llf.injected_layers(model).items()
            for i, p in enumerate(list(m.lora_A) + list(m.lora_B))}


def _peft_grads(inner, names):
    out = {}
    for n in names:
        lora = inner.get_submodule(n)
        out[f"{n}.0"] = lora.lora_A["default"].weight.grad
        out[f"{n}.1"] = lora.lora_B["default"].weight.grad
    return out


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_gpt2_conv1d_matches_peft(path, request, seed):
    """GPT-2's Conv1D (fan_in_fan_out) on the fused path: logits and adapter gradients equal
    PEFT's on the same weights (float64: both are exact to rounding)."""
    request.getfixturevalue(path)
    dtype = torch.float64 if path == "fast_path" else torch.float32
    model = tiny("gpt2", dtype)
    twin, inner = peft_twin(model, r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                            fan_in_fan_out=True)
    llf.inject(model, ["c_attn", "c_proj"], rank=4, alpha=8, num_adapters=1)
    layers = copy_adapters_from_peft(model, inner)
    assert all(layer.fan_in_fan_out for layer in layers.values())
    assert all(type(layer) is llf.GatedLoRALinear for layer in layers.values())
    batch = ids()
    ours, theirs = model(batch).logits, twin(batch).logits
    assert_rel("logits", ours, theirs, dtype)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    mine = _lora_grads(model)
    for key, g in _peft_grads(inner, layers).items():
        assert_rel(key, mine[key], g, dtype)


def test_conv1d_merge_and_extract(fast_path, seed):
    """merge folds the adapter into Conv1D's (D_in, D_out) weight; extract_base unmerges and
    hands back a Conv1D holding the same Parameter."""
    model = tiny("gpt2", torch.float64)
    batch = ids()
    plain = model(batch).logits
    weight = model.transformer.h[0].attn.c_attn.weight
    llf.inject(model, ["c_attn"], rank=4, alpha=8, num_adapters=1)
    layer = model.transformer.h[0].attn.c_attn
    assert layer.weight is weight and tuple(weight.shape) == (32, 96)
    with torch.no_grad():
        for lyr in llf.injected_layers(model).values():
            lyr.lora_B[0].normal_()
    before = model(batch).logits
    for lyr in llf.injected_layers(model).values():
        lyr.merge()
    assert_rel("merged", model(batch).logits, before, torch.float64)
    llf.extract_base(model)
    conv = model.transformer.h[0].attn.c_attn
    assert type(conv).__name__ == "Conv1D" and conv.weight is weight
    assert_rel("extracted base", model(batch).logits, plain, torch.float64)


# bitsandbytes' two 4-bit CPU paths: "portable" (dequantize and matmul, every CPU) and "packed"
# (its AVX512-BF16 kernel, in eval mode with x needing no grad; skipped on CPUs without it).
BNB_4BIT_PATHS = ["portable", "packed"]
QUANTIZED = [(4, "portable"), (4, "packed"), (8, "portable")]


@pytest.mark.parametrize("bits,bnb_path", QUANTIZED)
def test_quantized_base_matches_peft_and_trains_a_step(bits, bnb_path, tmp_path, fast_path,
                                                       seed):
    """QLoRA: on a bitsandbytes base (CPU) the layer is the base's forward plus the LoRA-only op;
    logits, gradients and one AdamW step equal PEFT's on the same weights."""
    model = quantized_llama(tmp_path / "base", bits, packed=bnb_path == "packed")
    targets = ["q_proj", "v_proj", "down_proj"]
    twin, inner = peft_twin(model, r=4, lora_alpha=8, target_modules=targets)
    llf.inject(model, targets, rank=4, alpha=8, num_adapters=1)
    layers = copy_adapters_from_peft(model, inner)
    base_type = {4: "Linear4bit", 8: "Linear8bitLt"}[bits]
    for layer in layers.values():
        assert isinstance(layer, GatedLoRAOnModule)
        assert type(layer.base_layer).__name__ == base_type
        assert layer.lora_A[0].dtype == torch.float32
    batch = ids()
    ours, theirs = model(batch).logits, twin(batch).logits
    if bits == 4:
        for m in (model, twin):
            assert_4bit_cpu_path(m, bnb_path == "packed")
    assert_rel("logits", ours, theirs, torch.float32)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    mine = _lora_grads(model)
    for key, g in _peft_grads(inner, layers).items():
        assert_rel(key, mine[key], g, torch.float32)
    for m in (model, twin):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        opt.step()
    assert_rel("logits after a step", model(batch).logits, twin(batch).logits, torch.float32)


def test_quantized_base_refuses_merge_and_extracts(tmp_path, fast_path):
    model = quantized_llama(tmp_path / "base", 4)
    base = model.model.layers[0].self_attn.q_proj
    llf.inject(model, ["q_proj"], num_adapters=1)
    layer = model.model.layers[0].self_attn.q_proj
    with pytest.raises(ValueError, match="stored quantized.*non-quantized copy"):
        layer.merge()
    assert layer.unmerge() == []
    sd = model.state_dict()
    assert any(k.endswith("q_proj.base_layer.weight") for k in sd)
    llf.extract_base(model)
    assert model.model.layers[0].self_attn.q_proj is base


CASES = {
    "ragged": dict(ranks=[3, 1, 2], gates=[0.7, 0.0, -1.3], per_row=False),
    "per-row": dict(ranks=[2, 4], gates=None, per_row=True),
    "one": dict(ranks=[5], gates=[1.0], per_row=False),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_gated_bank_on_a_black_box_base_against_float64(name, path, request, seed):
    """What PEFT lacks (a gated bank with ragged ranks, zero and trainable gates, per-row gates,
    a frozen adapter) on a base the kernels do not read: output and every gradient against the
    float64 unfused reference."""
    request.getfixturevalue(path)
    case = CASES[name]
    dtype = torch.float64 if path == "fast_path" else torch.float32
    base = OwnForward(13, 9, dtype=dtype)
    layer = llf.GatedLoRALinear.from_linear(base, rank=2, alpha=3,
                                            gate="per_row" if case["per_row"] else "per_adapter")
    assert isinstance(layer, GatedLoRAOnModule) and layer.base_layer is base
    for r in case["ranks"]:
        layer.add_adapter(rank=r)
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
        if case["gates"] is not None:
            layer.gates.copy_(torch.tensor(case["gates"]))
    if case["gates"] is not None:
        layer.gates.requires_grad_(name == "ragged")
    if layer.num_adapters > 1:
        layer.freeze_adapter(0)
    x = torch.randn(2, 5, 13, dtype=dtype, requires_grad=True)
    y = layer(x)
    twin = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_(True)
    ref = twin.reference_forward(x64)
    assert_rel("y", y, ref, dtype)
    dy = torch.randn_like(ref)
    y.backward(dy.to(dtype))
    ref.backward(dy)
    assert_rel("dx", x.grad, x64.grad, dtype)
    for (n, p), (_, q) in zip(layer.named_parameters(), twin.named_parameters()):
        if n.startswith("base_layer") or q.grad is None:
            assert p.grad is None or not p.grad.any(), n
            continue
        assert_rel(n, p.grad, q.grad, dtype, scale=q.grad.abs() + TOL[torch.float64])


def _quantized_mlp(seed, bnb_path):
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(seed)
    layers = []
    # (widths bitsandbytes' packed CPU kernel takes: D_in whole 64-blocks, D_out a multiple of 32)
    for d_in, d_out in ((64, 64), (64, 32)):
        plain = nn.Linear(d_in, d_out)
        q = bnb.nn.Linear4bit(d_in, d_out, compute_dtype=torch.float32, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(plain.weight.data, requires_grad=False, quant_type="nf4")
        q.bias = nn.Parameter(plain.bias.data)
        layers.append(q.to("cpu"))
    net = nn.Sequential(layers[0], nn.Tanh(), layers[1])
    select_4bit_cpu_path(net, bnb_path == "packed")
    return net


@pytest.mark.parametrize("bnb_path", BNB_4BIT_PATHS)
def test_litelora_on_a_qlora_base(bnb_path, fast_path, seed):
    """LiteLoRA's recruit/freeze/shared-gate machinery on 4-bit bases: the learner trains, and
    task 0's predictions do not move while task 1 is learned."""
    from litelora_fast.litelora import ContinualLearner

    net = llf.inject(_quantized_mlp(seed, bnb_path), ["0", "2"], rank=2, alpha=4,
                     num_adapters=0)
    assert all(isinstance(m, GatedLoRAOnModule) for m in llf.injected_layers(net).values())
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(2):
        X = torch.randn(48, 64, generator=g)
        tasks.append((X, torch.tanh(X @ torch.randn(64, 32, generator=g) / 8)))
    learner = ContinualLearner(net, lam=-10.0, seed=seed, epochs=2, reuse_epochs=2,
                               gate_epochs=1, gate_batch_size=16, batch_size=16,
                               variant="library", protocol="task-incremental")
    learner.learn_task(*tasks[0], loss_fn=nn.functional.mse_loss)
    first = learner.predict(0, tasks[0][0]).clone()
    learner.learn_task(*tasks[1], loss_fn=nn.functional.mse_loss)
    layer = llf.injected_layers(net)["0"]
    assert layer.num_adapters == 2 and layer.is_frozen(0)
    assert layer.lora_B[0].abs().sum() > 0
    assert torch.equal(learner.predict(0, tasks[0][0]), first)
    assert_4bit_cpu_path(net, bnb_path == "packed")


@pytest.mark.parametrize("kind", ["gpt2", "qlora-portable", "qlora-packed"])
def test_from_peft_and_back_on_conv1d_and_4bit_bases(kind, tmp_path, fast_path, seed):
    """A PEFT model on GPT-2's Conv1D or on a 4-bit base converts into the bank and back to
    PEFT with its logits unchanged."""
    peft = pytest.importorskip("peft")
    base = tiny("gpt2") if kind == "gpt2" else quantized_llama(
        tmp_path / "base", 4, packed=kind == "qlora-packed")
    targets = ["c_attn", "c_proj"] if kind == "gpt2" else ["q_proj", "v_proj"]
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                        init_lora_weights=False))
    batch = ids()
    want = wrapped(batch).logits
    if kind != "gpt2":
        assert_4bit_cpu_path(wrapped, kind == "qlora-packed")
    model = llf.from_peft(wrapped)
    layer = next(iter(llf.injected_layers(model).values()))
    assert isinstance(layer, GatedLoRAOnModule) == kind.startswith("qlora")
    assert_rel("from_peft", model(batch).logits, want, torch.float32)
    assert_rel("to_peft", llf.to_peft(model)(batch).logits, want, torch.float32)
