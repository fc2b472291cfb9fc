"""Adapter precision as PEFT's (``base_layers``): on a float16/bfloat16 base the adapters and
gates are float32 unless ``adapter_dtype=`` keeps the base dtype; the op takes a float32 bank
beside a half-precision ``x`` with and without autocast, bounded against float64 and matching
PEFT on the same weights within the dtype's bound."""
import pytest
import torch

import litelora_fast as llf
from litelora_fast.op.reference import gated_lora_linear_ref
from numerics import assert_rel
from op_cases import gate_grad_scale

HALF = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_half_base_gets_float32_adapters_and_gates(dtype, gate):
    layer = llf.GatedLoRALinear(8, 6, rank=2, num_adapters=2, gate=gate, dtype=dtype)
    gates = [layer.gates] if gate == "per_adapter" else [layer.router_weight, layer.router_bias]
    assert layer.weight.dtype == dtype
    assert {p.dtype for p in [*layer.lora_A, *layer.lora_B, *gates]} == {torch.float32}
    kept = llf.GatedLoRALinear(8, 6, rank=2, num_adapters=1, dtype=dtype, adapter_dtype=dtype)
    assert kept.lora_A[0].dtype == dtype and kept.gates.dtype == dtype
    wrapped = llf.GatedLoRALinear.from_linear(torch.nn.Linear(8, 6).to(dtype), num_adapters=1)
    assert wrapped.lora_B[0].dtype == torch.float32
    full = llf.GatedLoRALinear(8, 6, num_adapters=1, dtype=torch.float64)
    assert full.lora_A[0].dtype == torch.float64
    with pytest.raises(TypeError, match="adapter_dtype must be"):
        llf.GatedLoRALinear(8, 6, adapter_dtype=torch.int8)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("autocast", [False, True])
def test_op_takes_a_float32_bank_beside_a_half_x(dtype, autocast, fast_path, seed):
    """Output and every gradient (float32 for the float32 bank and gates) against float64."""
    n, d_in, d_out, ranks = 9, 24, 10, [3, 2]
    R = sum(ranks)
    x = torch.randn(n, d_in).to(dtype).requires_grad_(True)
    W = (torch.randn(d_out, d_in) / 5).to(dtype)
    A = torch.randn(R, d_in, requires_grad=True)
    B = (torch.randn(d_out, R) / 3).requires_grad_(True)
    g = torch.tensor([0.8, -1.1], requires_grad=True)
    args = ([0, 3, 5], [2.0, 0.5])
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        y = llf.gated_lora_linear(x, W, None, A, B, g, *args)
    assert y.dtype == dtype
    leaves64 = [t.detach().double().requires_grad_(True) for t in (x, A, B, g)]
    ref = gated_lora_linear_ref(leaves64[0], W.double(), None, *leaves64[1:], *args)
    assert_rel("y", y, ref, dtype)
    dy = torch.randn_like(ref)
    y.backward(dy.to(dtype))
    ref.backward(dy)
    scales = [None, None, None, gate_grad_scale(x, A, B, dy, args[0], args[1], False)]
    for name, t, t64, scale in zip(("dx", "dA", "dB", "dg"), (x, A, B, g), leaves64, scales):
        assert t.grad.dtype == t.dtype
        assert_rel(name, t.grad, t64.grad, dtype, scale=scale)


def test_op_still_refuses_other_mixes():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="lora_A must have x's dtype torch.float32, got"):
        llf.gated_lora_linear(x, torch.randn(2, 4), None, torch.randn(2, 4).double(),
                              torch.randn(2, 2), torch.ones(1))
    xb = x.bfloat16()
    with pytest.raises(TypeError, match="lora_A and lora_B must share one dtype"):
        llf.gated_lora_linear(xb, torch.randn(2, 4).bfloat16(), None, torch.randn(2, 4),
                              torch.randn(2, 2).bfloat16(), torch.ones(1))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("autocast", [False, True])
def test_half_llama_matches_peft(dtype, autocast, fast_path, seed):
    """A bfloat16/float16 Llama: PEFT keeps its adapters float32 (autocast_adapter_dtype), so
    do we. Against the same model in float64: the logits within the dtype's bound, and the
    adapter gradients (a whole model's backward compounds roundings past the one-op bound: PEFT's
    own bfloat16 dA misses float64 by ~3e-2) within twice PEFT's own error."""
    import copy

    from numerics import TOL, rel_err
    from tiny_llms import copy_adapters_from_peft, ids, peft_twin, tiny
    model = tiny("llama", dtype)
    twin, inner = peft_twin(model, r=4, lora_alpha=8, target_modules="all-linear")
    llf.inject(model, "all-linear", rank=4, alpha=8, num_adapters=1)
    layers = copy_adapters_from_peft(model, inner)
    exact = copy.deepcopy(model).double()
    assert inner.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    assert {p.dtype for m in layers.values() for p in m.lora_A} == {torch.float32}
    batch = ids()
    with torch.autocast("cpu", dtype=dtype, enabled=autocast):
        ours, theirs = model(batch).logits, twin(batch).logits
    ref = exact(batch).logits
    assert_rel("logits", ours, ref, dtype)
    assert_rel("PEFT's logits", theirs, ref, dtype)
    for out in (ours, theirs, ref):
        out.double().square().mean().backward()
    for part in ("A", "B"):
        def worst(get):
            return max(rel_err(get(name, layer), exact.get_submodule(name).adapter(0)[
                part == "B"].grad) for name, layer in layers.items())
        mine = worst(lambda n, layer: layer.adapter(0)[part == "B"].grad)
        peft_err = worst(lambda n, layer: getattr(inner.get_submodule(n), f"lora_{part}")[
            "default"].weight.grad)
        assert mine < 2 * max(peft_err, TOL[dtype] / 2), (part, mine, peft_err)
    assert all(p.grad.dtype == torch.float32 for m in layers.values() for p in m.lora_B)
