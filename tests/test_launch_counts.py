"""Kernel launches per call of the op through the Triton kernels (the interpreter counts them in
``litelora_fast.kernels.LAUNCH_COUNTS``), pinned so a change that adds a launch shows.

A LoRA training step (frozen base, ``x``/``lora_A``/``lora_B`` train) launches, whatever K:
shrink + fused forward (forward); grad-shrink + fused dx + ``lora_weight_grads`` (backward): 5.
The weight gradients ``dA = dS^T x`` and ``dB = dy^T (S*G_E)`` share one launch (they were two
``matmul_tn`` launches before). Shapes are small enough that no GEMM splits its reduction (a split
adds one fixed-order partial-sum launch).
"""
import pytest
import torch

import litelora_fast as llf
from litelora_fast import kernels
from numerics import assert_rel

FWD = {"shrink": 1, "fused_forward": 1}


WEIGHT_GRADS = {"lora_weight_grads": 1}


def _launches(K: int, train_gates: bool, train_x: bool = True, grad: bool = True) -> dict:
    N, D, r = 37, 24, 4
    x = torch.randn(N, D, requires_grad=train_x)
    W, b = torch.randn(D + 3, D), torch.randn(D + 3)
    A = torch.randn(K * r, D, requires_grad=True)
    B = torch.randn(D + 3, K * r, requires_grad=True)
    g = (torch.rand(K) + 0.5).requires_grad_(train_gates)
    kernels.LAUNCH_COUNTS.clear()
    if grad:
        llf.gated_lora_linear(x, W, b, A, B, g).sum().backward()
    else:
        with torch.no_grad():
            llf.gated_lora_linear(x, W, b, A, B, g)
    # "<kernel>/<variant>" keys repeat a launch already counted under "<kernel>".
    return {k: v for k, v in kernels.LAUNCH_COUNTS.items() if "/" not in k and v}


@pytest.mark.parametrize("train_gates", [False, True], ids=["frozen-gates", "trainable-gates"])
@pytest.mark.parametrize("K", [1, 8])
def test_training_step_launches(K, train_gates, interpreter, seed):
    expected = {**FWD, "grad_shrink": 1, "fused_dx": 1, **WEIGHT_GRADS}
    got = _launches(K, train_gates)
    assert got == expected
    print(f"K={K} {'trainable' if train_gates else 'frozen'} gates: {sum(got.values())} "
          f"launches per fwd+bwd {got}")


def test_first_layer_and_inference_launches(interpreter, seed):
    # x does not require grad (the first adapted layer): no fused dx.
    assert _launches(8, False, train_x=False) == {**FWD, "grad_shrink": 1, **WEIGHT_GRADS}
    assert _launches(8, False, grad=False) == FWD


@pytest.mark.parametrize("trainable_adapters", [None, [False, True, True], [True, False, True]],
                         ids=["all", "newest-two", "gapped"])
def test_one_launch_for_both_weight_gradients_matches_float64(trainable_adapters, interpreter,
                                                              seed):
    """The op's dA+dB through the kernels' single-launch ``lora_weight_grads``, for all,
    the newest or a gapped set of training adapters, against the float64 reference."""
    N, D_in, D_out, ranks = 29, 19, 13, [3, 2, 4]
    R = sum(ranks)
    x = torch.randn(N, D_in, requires_grad=True)
    W, b = torch.randn(D_out, D_in) / D_in ** 0.5, torch.randn(D_out)
    A = (torch.randn(R, D_in) / D_in ** 0.5).requires_grad_()
    B = torch.randn(D_out, R, requires_grad=True)
    g = torch.rand(3) + 0.5
    offsets = [0, 3, 5, 9]
    kernels.LAUNCH_COUNTS.clear()
    y = llf.gated_lora_linear(x, W, b, A, B, g, offsets, [2.0, 0.5, 1.0],
                              trainable_adapters=trainable_adapters)
    dy = torch.randn_like(y)
    y.backward(dy)
    assert kernels.LAUNCH_COUNTS["lora_weight_grads"] == 1
    assert kernels.LAUNCH_COUNTS["matmul_tn"] == 0
    x64, A64, B64 = (t.detach().double().requires_grad_() for t in (x, A, B))
    y64 = llf.reference.gated_lora_linear_ref(x64, W.double(), b.double(), A64, B64, g.double(),
                                              offsets, [2.0, 0.5, 1.0])
    y64.backward(dy.double())
    mask = torch.ones(R, dtype=torch.float64)
    for k, train in enumerate(trainable_adapters or [True] * 3):
        mask[offsets[k]:offsets[k + 1]] = float(train)
    assert_rel("y", y, y64, torch.float32)
    assert_rel("dx", x.grad, x64.grad, torch.float32)
    assert_rel("dA", A.grad, A64.grad * mask[:, None], torch.float32)
    assert_rel("dB", B.grad, B64.grad * mask[None, :], torch.float32)


@pytest.mark.parametrize("per_row", [False, True], ids=["per-adapter", "per-row"])
def test_weight_grads_form_SG_in_the_kernel(interpreter, seed, monkeypatch, per_row):
    """The backward hands ``S`` and the gate tables to ``lora_weight_grads`` (the kernel forms
    ``SG = S * G_E`` tile by tile), instead of building ``SG`` with elementwise launches first;
    the gradients still match float64."""
    from litelora_fast.op import backends
    from litelora_fast.op.reference import gated_lora_linear_ref

    seen = []
    real = backends.TritonBackend.lora_weight_grads
    monkeypatch.setattr(backends.TritonBackend, "lora_weight_grads", staticmethod(
        lambda *a, **kw: seen.append(kw.get("gates")) or real(*a, **kw)))
    N, D, ranks = 29, 20, [3, 5, 2]
    x = torch.randn(N, D)
    W = torch.randn(D + 5, D)
    A = torch.randn(sum(ranks), D, requires_grad=True)
    B = torch.randn(D + 5, sum(ranks), requires_grad=True)
    g = torch.rand(N, 3) + 0.5 if per_row else torch.rand(3) + 0.5
    offsets = [0, 3, 8, 10]
    y = llf.gated_lora_linear(x, W, None, A, B, g, offsets, [2.0, 0.5, 1.0],
                              trainable_adapters=[True, False, True])
    dy = torch.randn_like(y)
    y.backward(dy)
    assert len(seen) == 1 and seen[0] is not None
    gates2d, col_adapter, col_scale = seen[0]
    assert col_adapter.tolist() == [0, 0, 0, 2, 2] and col_scale.tolist() == [2.0] * 3 + [1.0] * 2
    A64, B64 = (t.detach().double().requires_grad_() for t in (A, B))
    gated_lora_linear_ref(x.double(), W.double(), None, A64, B64, g.double(), offsets,
                          [2.0, 0.5, 1.0]).backward(dy.double())
    train = torch.tensor([1] * 3 + [0] * 5 + [1] * 2, dtype=torch.double)
    assert_rel("dA", A.grad, A64.grad * train[:, None], torch.float32)
    assert_rel("dB", B.grad, B64.grad * train[None, :], torch.float32)
