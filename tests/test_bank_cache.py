"""The packed bank kept between calls (``bank_cache``): frozen and gated-off adapters are not
copied again per call, a trained adapter is re-copied once per change, and every result stays
that of packing afresh (the unfused reference on ``torch.cat``) through training, loading,
dtype moves and copies."""
import copy

import pytest
import torch

import litelora_fast as llf
from numerics import assert_rel


def _layer(ranks=(3, 2, 4), dtype=torch.float64):
    layer = llf.GatedLoRALinear(11, 7, rank=2, alpha=3, dtype=dtype)
    for r in ranks:
        layer.add_adapter(rank=r)
    with torch.no_grad():
        for B in layer.lora_B:
            B.normal_()
    return layer


def test_frozen_and_gated_off_adapters_are_not_copied_per_call(fast_path, seed):
    layer = _layer()
    layer.freeze_adapter(0)
    layer.freeze_adapter(1)
    with torch.no_grad():
        layer.gates[1] = 0.0
    x = torch.randn(5, 11, dtype=torch.float64)
    layer(x).sum().backward()
    assert layer.bank_cache.copies == 3
    A_ptr = layer.packed_bank()[0].data_ptr()
    for _ in range(3):
        layer(x).sum().backward()
    assert layer.bank_cache.copies == 3 and layer.packed_bank()[0].data_ptr() == A_ptr
    torch.optim.SGD(layer.parameters(), lr=0.1).step()       # only adapter 2 has a gradient
    layer(x)
    assert layer.bank_cache.copies == 4


def test_training_stays_exact(fast_path, seed):
    """Three AdamW steps with a frozen adapter and trainable gates: outputs and gradients equal
    those of a twin that packs with torch.cat every call (the reference forward)."""
    layer = _layer()
    layer.freeze_adapter(0)
    layer.gates.requires_grad_(True)
    twin = copy.deepcopy(layer)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.05)
            for m in (layer, twin)]
    for _ in range(3):
        x = torch.randn(2, 4, 11, dtype=torch.float64)
        y, ref = layer(x), twin.reference_forward(x)
        assert_rel("y", y, ref, torch.float64)
        dy = torch.randn_like(ref)
        y.backward(dy)
        ref.backward(dy)
        for (name, p), q in zip(layer.named_parameters(), twin.parameters()):
            if q.grad is not None:
                assert_rel(name, p.grad, q.grad, torch.float64, scale=q.grad.abs() + 1e-12)
            else:
                assert p.grad is None, name
        for opt in opts:
            opt.step()
            opt.zero_grad()


def test_a_parameter_changed_before_backward_raises(fast_path):
    layer = _layer()
    y = layer(torch.randn(3, 11, dtype=torch.float64))
    with torch.no_grad():
        layer.lora_A[2].add_(1.0)
    layer(torch.randn(3, 11, dtype=torch.float64))      # re-copies adapter 2
    with pytest.raises(RuntimeError, match="modified"):
        y.sum().backward()


def test_loads_moves_and_copies_never_see_a_stale_bank(fast_path, seed):
    layer = _layer()
    x = torch.randn(4, 11, dtype=torch.float64)
    layer(x)
    other = _layer()
    layer.load_state_dict(other.state_dict())
    assert_rel("after load_state_dict", layer(x), other.reference_forward(x), torch.float64)
    clone = copy.deepcopy(layer)
    with torch.no_grad():
        clone.lora_B[1].mul_(3.0)
    assert_rel("original after the copy changed", layer(x), other.reference_forward(x),
               torch.float64)
    assert_rel("the copy", clone(x), clone.reference_forward(x), torch.float64)
    layer.float()
    assert_rel("after .float()", layer(x.float()), other.reference_forward(x), torch.float32)
    with torch.no_grad():
        layer.lora_A[0].data.mul_(2.0)      # bypasses the version counter: say so
    layer.bank_cache.clear()
    assert_rel("after clear()", layer(x.float()), layer.reference_forward(x.float()),
               torch.float32)


def test_float32_bank_beside_bfloat16_is_rounded_once_per_change(fast_path):
    layer = _layer(dtype=torch.bfloat16)
    assert layer.lora_A[0].dtype == torch.float32
    x = torch.randn(3, 11).bfloat16()
    for _ in range(3):
        layer(x)
    A, _ = layer.packed_bank(torch.bfloat16)
    assert A.dtype == torch.bfloat16 and layer.bank_cache.copies == 3
