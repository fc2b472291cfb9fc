"""The public op's two dispatch paths: the direct eager path and the registered custom ops.

A plain eager call runs the op's math in ``ops._GatedLoRA`` without the dispatcher; under a
dispatch or torch-function mode and for fake tensors it calls the custom ops. Both must match the float64 reference, and each other bit for bit (same math, same order).
"""
import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import litelora_fast as llf
from litelora_fast.op import ops
from op_cases import ARG_NAMES, CASES, call, check_against_oracle, leaves, make_inputs

PATH_CASES = {k: CASES[k] for k in ("N37-K3-ragged", "3d-perrow-K4", "zero-gates",
                                    "zero-gates-perrow-nobias", "strided-x")}
TRAINABLE = {"all": set(ARG_NAMES), "frozen-gates": {"x", "lora_A", "lora_B"}}


class _Recorder:
    """Passes every call through and records the function's name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def _record(self, func, args, kwargs):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


class RecordDispatch(_Recorder, TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self._record(func, args, kwargs)


class RecordFunction(_Recorder, TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self._record(func, args, kwargs)


def _case(name: str, trainable: str):
    case = PATH_CASES[name]
    return dataclasses.replace(case, trainable={n: n in TRAINABLE[trainable] for n in ARG_NAMES})


def _run(case, t, dy):
    """Output and the leaves' gradients of one call."""
    y = call(llf.gated_lora_linear, case, t)
    y.backward(dy)
    grads = {name: leaf.grad for name, leaf in leaves(t).items()}
    for leaf in leaves(t).values():
        leaf.grad = None
    return y.detach(), grads


@pytest.mark.parametrize("mode", [RecordDispatch, RecordFunction], ids=["dispatch", "function"])
@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("name", list(PATH_CASES))
def test_custom_op_path_under_a_mode_matches_float64(name, trainable, mode, fast_path, seed):
    case = _case(name, trainable)
    t = make_inputs(case)
    with mode() as m:
        y = call(llf.gated_lora_linear, case, t)
        check_against_oracle(case, t, y, torch.float32)
    assert "litelora_fast.gated_lora_fwd.default" in m.names
    if mode is RecordDispatch:      # the engine does not carry a torch-function mode into backward
        assert "litelora_fast.gated_lora_bwd.default" in m.names


@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("name", list(PATH_CASES))
def test_direct_and_custom_op_paths_agree_bit_for_bit(name, trainable, fast_path, seed):
    case = _case(name, trainable)
    t = make_inputs(case)
    dy = torch.randn(*case.lead, case.d_out)
    y_direct, g_direct = _run(case, t, dy)
    with RecordDispatch():
        y_op, g_op = _run(case, t, dy)
    assert torch.equal(y_direct, y_op)
    assert g_direct.keys() == g_op.keys()
    for key in g_direct:
        assert torch.equal(g_direct[key], g_op[key]), key


def test_plain_call_does_not_dispatch_the_custom_op(fast_path, seed, monkeypatch):
    def fail(*args):
        raise AssertionError("the registered forward op was dispatched")

    monkeypatch.setattr(ops, "_gated_lora_fwd", fail)
    case = _case("N37-K3-ragged", "all")
    t = make_inputs(case)
    check_against_oracle(case, t, call(llf.gated_lora_linear, case, t), torch.float32)


def test_create_graph_backward_matches_the_plain_backward(fast_path, seed):
    """``create_graph`` gives the same first-order gradients; differentiating them again raises
    (the backward is once-differentiable on both paths), instead of a silently wrong result."""
    case = _case("zero-gates", "all")
    t = make_inputs(case)
    inputs = list(leaves(t).values())
    dy = torch.randn(*case.lead, case.d_out)
    plain = torch.autograd.grad(call(llf.gated_lora_linear, case, t), inputs, dy)
    graph = torch.autograd.grad(call(llf.gated_lora_linear, case, t), inputs, dy,
                                create_graph=True)
    for a, b in zip(plain, graph):
        assert torch.equal(a, b.detach())
    with pytest.raises(RuntimeError):
        torch.autograd.grad(graph[0].sum(), inputs)


def test_fake_tensors_take_the_custom_op_and_its_fake_implementation(fast_path, seed):
    from torch._subclasses.fake_tensor import FakeTensorMode

    case = _case("3d-perrow-K4", "all")
    with FakeTensorMode():
        t = make_inputs(case)
        y = call(llf.gated_lora_linear, case, t)
        y.sum().backward()
    assert y.shape == (*case.lead, case.d_out)
    assert all(leaf.grad.shape == leaf.shape for leaf in leaves(t).values())
