"""LoRA dropout through the public op, on both backends and both dispatch paths.

Each call's mask is captured with ``lora_dropout.recorded_masks`` and handed to the float64
reference, so the op's output and every gradient are compared given the same mask. Also: the
mask is fresh per call and reproducible under ``torch.manual_seed``, nothing ``N x D_in`` is saved
for backward, ``p = 0`` is the op without dropout, and bad ``p`` is refused.
"""
import pytest
import torch

import litelora_fast as llf
from litelora_fast.op import lora_dropout
from litelora_fast.kernels import LAUNCH_COUNTS
from litelora_fast.op.reference import gated_lora_linear_ref
from numerics import assert_rel
from op_cases import CASES, Case, call, case_params, check_against_oracle, make_inputs

BACKENDS = ["fast_path", "interpreter"]


def _args(lead, d_in, d_out, ranks, per_row):
    """``(x, weight, bias, lora_A, lora_B, gates, rank_offsets)`` of a fresh ``op_cases`` draw."""
    case = Case(lead=lead, d_in=d_in, d_out=d_out, ranks=ranks, per_row=per_row)
    t = make_inputs(case)
    return (t["x"], t["weight"], t["bias"], t["lora_A"], t["lora_B"], t["gates"],
            case.rank_offsets)


@pytest.mark.parametrize("path", BACKENDS)
@pytest.mark.parametrize("case", case_params(CASES))
def test_matches_reference_given_the_mask(request, seed, path, case):
    request.getfixturevalue(path)
    t = make_inputs(case)
    p = 0.3
    with lora_dropout.recorded_masks() as masks:
        y = call(lambda *a: llf.gated_lora_linear(*a, dropout=p), case, t)
    x = t["x"]
    assert len(masks) == 1 and masks[0].shape == (x[..., 0].numel(), case.d_in)
    mask = masks[0].reshape(x.shape)
    # And the mask mattered: without it the reference is far off.
    t64 = {k: None if v is None else v.detach().double() for k, v in t.items()}
    y_plain = call(gated_lora_linear_ref, case, t64)
    assert (y.double() - y_plain).norm() > 1e-2 * y_plain.norm()
    check_against_oracle(case, t, y, torch.float32, dropout=p, dropout_mask=mask)


def test_kernel_path_launches_and_frozen_adapters(interpreter, seed):
    """Under the interpreter the kernels really run (one more launch: the masked dx term), and a
    frozen adapter gets zero dA/dB while the trainable one matches the reference."""
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((40,), 30, 20, [4, 4], False)
    gates = gates.detach()
    before = LAUNCH_COUNTS.copy()
    with lora_dropout.recorded_masks() as masks:
        y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, 2.0,
                                  trainable_adapters=[False, True], dropout=0.2)
    y.backward(torch.ones_like(y))
    ran = {k: LAUNCH_COUNTS[k] - before[k] for k in
           ("shrink", "masked_addmm", "lora_weight_grads", "grad_shrink")}
    assert ran == {"shrink": 1, "masked_addmm": 1, "lora_weight_grads": 1, "grad_shrink": 1}
    assert lora_A.grad[:4].abs().max() == 0 and lora_B.grad[:, :4].abs().max() == 0
    A64 = lora_A.detach().double().requires_grad_()
    B64 = lora_B.detach().double().requires_grad_()
    ref = gated_lora_linear_ref(x.detach().double(), weight.double(), bias.double(), A64, B64,
                                gates.double(), offsets, 2.0, dropout=0.2, dropout_mask=masks[0])
    ref.backward(torch.ones_like(ref))
    assert_rel("dA trainable", lora_A.grad[4:], A64.grad[4:], torch.float32)
    assert_rel("dB trainable", lora_B.grad[:, 4:], B64.grad[:, 4:], torch.float32)


def test_backends_draw_the_same_mask_under_the_interpreter(interpreter, monkeypatch, seed):
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((33,), 21, 9, [3, 5], False)
    outs = []
    for backend in ("torch", "triton"):
        torch.manual_seed(seed)
        outs.append(llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets,
                                          dropout=0.5, backend=backend))
    assert_rel("torch vs triton", outs[0], outs[1].double(), torch.float32)


@pytest.mark.parametrize("path", BACKENDS)
def test_mask_is_fresh_per_call_and_seeded(request, seed, path):
    request.getfixturevalue(path)
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((64,), 48, 8, [4], False)
    p = 0.5
    with lora_dropout.recorded_masks() as masks:
        torch.manual_seed(seed)
        llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=p)
        llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=p)
        torch.manual_seed(seed)
        llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=p)
    first, second, again = masks
    assert torch.equal(first, again)
    n = first.numel()
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(int(first.sum()) - n * (1 - p)) < 6 * sd
    agree = (first == second).double().mean().item()        # independent: agree half the time
    assert abs(agree - 0.5) < 6 * (0.25 / n) ** 0.5


@pytest.mark.parametrize("path", BACKENDS)
def test_saves_a_seed_not_a_mask(request, seed, path):
    request.getfixturevalue(path)
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((50,), 40, 30, [4, 4], False)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=0.1)
    big = [tuple(t.shape) for t in saved if t.numel() >= 50 * 40 and t.dtype == torch.bool]
    assert not big, f"a mask-sized tensor was saved: {big}"
    seeds = [t for t in saved if t.dtype == torch.int64 and t.numel() == 1]
    assert len(seeds) == 1
    # Saved bytes: x, weight, A, B, gates, S and the seed; nothing of size N x D_in beyond x.
    x_sized = [t for t in saved if t.numel() == x.numel()]
    assert len(x_sized) == 1


def test_custom_op_path_matches_reference(interpreter, seed):
    """Under a torch-function mode the op dispatches its registered custom ops (the
    torch.compile path); dropout's seed travels through them."""
    class Passthrough(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x, weight, bias, lora_A, lora_B, gates, offsets = _args((26,), 18, 11, [2, 3], True)
    with lora_dropout.recorded_masks() as masks, Passthrough():
        y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=0.4)
    y.sum().backward()
    A64 = lora_A.detach().double().requires_grad_()
    ref = gated_lora_linear_ref(x.detach().double(), weight.double(), bias.double(), A64,
                                lora_B.detach().double(), gates.detach().double(), offsets,
                                dropout=0.4, dropout_mask=masks[0])
    ref.sum().backward()
    assert_rel("y", y, ref, torch.float32)
    assert_rel("dA", lora_A.grad, A64.grad, torch.float32)


def test_zero_dropout_is_the_plain_op_and_bad_p_is_refused(fast_path, seed):
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((12,), 10, 6, [2, 2], False)
    with lora_dropout.recorded_masks() as masks:
        y0 = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=0.0)
    assert masks == []
    assert torch.equal(y0, llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets))
    for bad, err in ((1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                     ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(err, match="dropout"):
            llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=bad)
    # No active adapter: nothing to drop, no seed drawn, exactly F.linear.
    with lora_dropout.recorded_masks() as masks:
        y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, torch.zeros(2), offsets,
                                  dropout=0.5)
    assert masks == [] and torch.equal(y, torch.nn.functional.linear(x, weight, bias))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.005])
def test_cpu_mask_keep_rate_and_scaled_operand(fast_path, seed, p):
    """The plain-CPU mask (16-bit fields of 64-bit generator draws; ``torch.rand >= p`` below
    p = 0.0077): binomial keep rate, the same bits for the same seed value, the PyTorch
    backend's ``keep / (1 - p)`` operand the same elements, and the one-entry memo never hands
    one seed's mask to another (6-sigma bounds, as test_kernels_dropout)."""
    N, D = 257, 131
    s = lora_dropout.new_seed("cpu")
    keep = lora_dropout.keep_mask(s, N, D, p)
    n = N * D
    sd = (n * p * (1 - p)) ** 0.5
    assert keep.dtype == torch.bool and abs(int(keep.sum()) - n * (1 - p)) < 6 * sd
    for counts, length in ((keep.sum(1), D), (keep.sum(0), N)):
        assert (counts.double() - length * (1 - p)).abs().max() < 6 * (length * p * (1 - p)) ** 0.5
    assert torch.equal(lora_dropout.keep_mask(s.clone(), N, D, p), keep)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        scaled = lora_dropout.scaled_keep(s, N, D, p, dtype)
        assert scaled.dtype == dtype
        assert torch.equal(scaled, keep.to(dtype) * (1.0 / (1.0 - p)))
    other = lora_dropout.scaled_keep(s + 1, N, D, p, torch.float32, last_use=True)
    agree = ((other != 0) == keep).double().mean().item()
    expected = p ** 2 + (1 - p) ** 2
    assert abs(agree - expected) < 6 * (expected * (1 - expected) / n) ** 0.5
    assert lora_dropout._MEMO == [None, None]     # the last use leaves no mask behind


def test_cpu_step_draws_each_mask_once_per_pass(fast_path, monkeypatch, seed):
    """A training step on the plain CPU draws a call's mask once in the forward and once in the
    backward (dA and dx share it), and the backward's draw is the forward's mask."""
    x, weight, bias, lora_A, lora_B, gates, offsets = _args((40,), 24, 16, [4], False)
    x.requires_grad_(True)
    draws = []
    real = lora_dropout._cpu_keep

    def counted(*args, **kwargs):
        draws.append(real(*args, **kwargs))
        return draws[-1]
    monkeypatch.setattr(lora_dropout, "_cpu_keep", counted)
    y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, offsets, dropout=0.3)
    lora_dropout._MEMO[:] = [None, None]     # as after another layer's call
    y.sum().backward()
    assert len(draws) == 2 and torch.equal(draws[0], draws[1])
    assert lora_dropout._MEMO == [None, None]
