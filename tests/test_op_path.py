"""The path of one op call, pinned: each step is entered once, in order (docs/DESIGN.md, "Dispatch").

A profile hook (``sys.setprofile``) records every Python function of ``litelora_fast/op/`` that a
call enters; the steps of the path must appear exactly once each, in the documented order, on both
dispatch paths, with and without dropout and gradients. No timing: only which functions run.
"""
import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import litelora_fast as llf
from litelora_fast.module.layer import GatedLoRALinear
from litelora_fast.op.plan import OpArgs

OP_DIR = os.path.dirname(llf.op.ops.__file__)

# (file, function) -> the name the trace gives it; every other function of op/ is left out.
STEPS = {
    ("validation.py", "validate_call"): "validate_call",
    ("validation.py", "validate"): "validate",
    ("ops.py", "_func_transform"): "func_check",
    ("plan.py", "plan_call"): "plan_call",
    ("plan.py", "decide_active"): "decide_active",
    ("recompute_seeds.py", "call_seed"): "call_seed",
    ("ops.py", "_dispatch"): "dispatch",
    ("ops.py", "direct_ok"): "direct_ok",
    ("ops.py", "_GatedLoRA.forward"): "direct_forward",
    ("ops.py", "_GatedLoRA.backward"): "direct_backward",
    ("ops.py", "_gated_lora_fwd"): "custom_fwd",
    ("ops.py", "_gated_lora_bwd"): "custom_bwd",
    ("ops.py", "_forward"): "forward_block",
    ("ops.py", "_plan_and_backend"): "plan_and_backend",
    ("plan.py", "pack"): "pack",
    ("autotune.py", "select"): "select",
    ("op_math.py", "forward"): "op_math.forward",
    ("op_math.py", "backward"): "op_math.backward",
}


def _trace(fn):
    """``(fn's result, the step names entered, in order)``; the first call into ``backends.py``
    after each ``op_math`` step is recorded as ``backend``."""
    names = []

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        path = code.co_filename
        if os.path.dirname(path) != OP_DIR:
            return
        base = os.path.basename(path)
        if base == "backends.py":
            if names and names[-1].startswith("op_math."):
                names.append("backend")
            return
        name = STEPS.get((base, code.co_qualname))
        if name is not None:
            names.append(name)

    sys.setprofile(profile)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return out, names


def _inputs(requires_grad: bool):
    x = torch.randn(2, 3, 8, requires_grad=requires_grad)
    weight = torch.randn(6, 8, requires_grad=requires_grad)
    bias = torch.randn(6)
    lora_A = torch.randn(5, 8, requires_grad=requires_grad)
    lora_B = torch.randn(6, 5, requires_grad=requires_grad)
    gates = torch.tensor([0.5, 0.0, 2.0])
    return x, weight, bias, lora_A, lora_B, gates


OPTIONS = dict(rank_offsets=[0, 2, 3, 5], scaling=[1.0, 0.5, 2.0])

PLAN = ["validate_call", "validate", "func_check", "plan_call", "decide_active"]
BLOCK = ["forward_block", "plan_and_backend", "pack", "select", "op_math.forward", "backend"]


@pytest.mark.parametrize("dropout", [0.0, 0.25], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("requires_grad", [True, False], ids=["grad", "no-grad"])
def test_a_plain_call_enters_each_step_once_in_order(fast_path, seed, dropout, requires_grad):
    t = _inputs(requires_grad)
    y, names = _trace(lambda: llf.gated_lora_linear(*t, **OPTIONS, dropout=dropout))
    assert y.shape == (2, 3, 6)
    seeded = ["call_seed"] if dropout else []
    direct = ["direct_forward"] if requires_grad else []
    assert names == PLAN + seeded + ["dispatch", "direct_ok"] + direct + BLOCK


def test_the_direct_backward_repacks_and_keeps_the_forwards_backend(fast_path, seed):
    t = _inputs(True)
    y = llf.gated_lora_linear(*t, **OPTIONS)
    _, names = _trace(lambda: y.sum().backward())
    assert names == ["direct_backward", "pack", "op_math.backward", "backend"]


def test_the_custom_op_path_enters_the_same_block(fast_path, seed):
    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    t = _inputs(True)
    with PassThrough():
        y, names = _trace(lambda: llf.gated_lora_linear(*t, **OPTIONS))
        assert names == PLAN + ["dispatch", "direct_ok", "custom_fwd"] + BLOCK
        _, names = _trace(lambda: y.sum().backward())
    assert names == ["custom_bwd", "plan_and_backend", "pack", "select", "op_math.backward",
                     "backend"]


def test_the_module_reaches_the_op_once(fast_path, seed):
    layer = GatedLoRALinear(8, 6, rank=2, num_adapters=2, dropout=0.1).train()
    x = torch.randn(4, 8)
    _, names = _trace(lambda: layer(x))
    assert [n for n in names if n != "direct_forward"] == (
        PLAN + ["call_seed", "dispatch", "direct_ok"] + BLOCK)


def test_torch_func_goes_through_the_reference_without_a_plan(fast_path, seed):
    x, weight, bias, lora_A, lora_B, gates = (a.detach() for a in _inputs(False))

    def loss(a):
        return llf.gated_lora_linear(x, weight, bias, a, lora_B, gates, **OPTIONS).sum()

    _, names = _trace(lambda: torch.func.grad(loss)(lora_A))
    assert names[:3] == ["validate_call", "validate", "func_check"]
    assert "plan_call" not in names and "dispatch" not in names


def test_the_custom_op_schemas_take_the_op_args_in_field_order():
    fwd = [a.name for a in torch.ops.litelora_fast.gated_lora_fwd.default._schema.arguments]
    bwd = [a.name for a in torch.ops.litelora_fast.gated_lora_bwd.default._schema.arguments]
    tensors = ["x2d", "weight", "bias", "lora_A", "lora_B", "gates2d"]
    assert fwd == tensors + list(OpArgs._fields)
    assert bwd == ["dy", "x2d", "weight", "lora_A", "lora_B", "gates2d", "S", "grad_needs",
                   *OpArgs._fields]
