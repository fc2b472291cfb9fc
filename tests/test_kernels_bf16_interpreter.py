"""The bf16 interpreter patch (tests/bf16_interpreter.py, fixture ``bf16_interpreter``) that the
bf16 cases of the kernel tests run under: it reproduces triton issue 11584 when off, computes as
a GPU does when on, routes bf16 CPU tensors of the op to the kernels, and fails a kernel that
adds or multiplies bf16 operands without upcasting.
"""
import warnings

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.errors import InterpreterError

import litelora_fast as llf
from bf16_interpreter import Bf16Arithmetic, bf16_to_fp32, fp32_to_bf16, patched
from kernel_helpers import fused_ref
from litelora_fast.op import autotune, backends
from litelora_fast import kernels
from numerics import TOL, assert_rel, rel_err


def _fused_forward_case():
    torch.manual_seed(7)
    x2d = torch.randn(40, 48).bfloat16()
    weight = (torch.randn(24, 48) / 48 ** 0.5).bfloat16()
    SG, lora_B = torch.randn(40, 5).bfloat16(), torch.randn(24, 5).bfloat16()
    return x2d, weight, None, SG, lora_B


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_without_the_patch_bf16_dot_is_wrong_and_with_it_right(variant):
    args = _fused_forward_case()
    ref = fused_ref(*args)
    with patched(dot=False):          # triton's own dot and casts (the add guard still on)
        wrong = kernels.fused_forward(*args, variant=variant)
    assert rel_err(wrong, ref) > 10 * TOL[torch.bfloat16]        # issue 11584, reproduced
    before = kernels.LAUNCH_COUNTS[f"fused_forward/{variant}"]
    with patched():
        right = kernels.fused_forward(*args, variant=variant)
    assert kernels.LAUNCH_COUNTS[f"fused_forward/{variant}"] == before + 1
    assert_rel("y", right, ref, torch.bfloat16)


@triton.jit
def _bf16_add_kernel(x_ptr, y_ptr, out_ptr, UPCAST: tl.constexpr):
    offs = tl.arange(0, 16)
    x, y = tl.load(x_ptr + offs), tl.load(y_ptr + offs)
    if UPCAST:
        out = x.to(tl.float32) + y.to(tl.float32) * y.to(tl.float32)
    else:
        out = x + y * y
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty))


def test_an_interpreted_bf16_add_or_multiply_fails_the_test():
    x, y = torch.randn(16).bfloat16(), torch.randn(16).bfloat16()
    out = torch.empty(16, dtype=torch.bfloat16)
    with patched():
        with pytest.raises((Bf16Arithmetic, InterpreterError), match="on bf16 operands"):
            _bf16_add_kernel[(1,)](x, y, out, UPCAST=False)
        _bf16_add_kernel[(1,)](x, y, out, UPCAST=True)
    # The upcast kernel computes in fp32 and rounds once, as torch does in fp32.
    assert torch.equal(out, (x.float() + y.float() * y.float()).bfloat16())


def test_casts_are_exact_widening_and_round_to_nearest_even():
    g = torch.Generator().manual_seed(3)
    values = torch.cat([torch.randn(4096, generator=g) * 10.0 ** torch.randint(-30, 30, (4096,), generator=g),
                        torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, 1e-40])])
    # Ties: the exact midpoints between neighbouring bf16 values round to the even one.
    base = torch.randn(512, generator=g).bfloat16().float()
    ties = (base.numpy().view(np.uint32) + np.uint32(0x8000)).view(np.float32)
    for v in (values.numpy(), ties):
        bits = fp32_to_bf16(v)
        assert np.array_equal(bits, torch.from_numpy(v).bfloat16().view(torch.int16).numpy().view(np.uint16))
    assert np.isnan(bf16_to_fp32(fp32_to_bf16(np.array([np.nan], dtype=np.float32)))).all()
    bf = torch.randn(1000, generator=g).bfloat16()
    assert torch.equal(torch.from_numpy(bf16_to_fp32(bf.view(torch.int16).numpy().view(np.uint16))),
                       bf.float())


def test_the_op_takes_the_kernels_for_bf16_cpu_tensors_under_the_patch(interpreter, seed):
    N, D, K, r = 33, 32, 3, 4
    x = torch.randn(N, D).bfloat16().requires_grad_()
    W, b = (torch.randn(D + 8, D) / D ** 0.5).bfloat16(), torch.randn(D + 8).bfloat16()
    A = (torch.randn(K * r, D) / D ** 0.5).bfloat16().requires_grad_()
    B = torch.randn(D + 8, K * r).bfloat16().requires_grad_()
    g = torch.rand(K) + 0.5
    assert autotune.chosen_implementation(N, D, D + 8, K * r, torch.bfloat16, device="cpu") == "torch"
    with pytest.raises(ValueError, match="bfloat16"):     # forced kernels, unpatched: refused
        llf.gated_lora_linear(x, W, b, A, B, g, backend="triton")
    with patched():
        assert autotune.chosen_implementation(N, D, D + 8, K * r, torch.bfloat16,
                                              device="cpu") == "triton"
        kernels.LAUNCH_COUNTS.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)   # no "takes the PyTorch path"
            y = llf.gated_lora_linear(x, W, b, A, B, g)
            y.float().square().sum().backward()
    launched = {k: v for k, v in kernels.LAUNCH_COUNTS.items() if "/" not in k and v}
    assert launched == {"shrink": 1, "fused_forward": 1, "grad_shrink": 1, "fused_dx": 1,
                        "lora_weight_grads": 1}
    leaves = [t.detach().double().requires_grad_() for t in (x, A, B)]
    ref = llf.reference.gated_lora_linear_ref(leaves[0], W.double(), b.double(), leaves[1],
                                              leaves[2], g.double())
    assert_rel("y", y, ref, torch.bfloat16)
    ref.square().sum().backward()
    for name, t, r in zip(("dx", "dA", "dB"), (x, A, B), leaves):
        assert_rel(name, t.grad, r.grad, torch.bfloat16)
    assert not backends.INTERPRETER_BF16_EXACT      # the patch is undone on exit
