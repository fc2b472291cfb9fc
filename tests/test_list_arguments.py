"""List-like arguments of the op, the module and ``inject``: mappings, sets (where the entries
are per adapter), iterators and generators raise a ``TypeError`` naming the argument, instead of
being iterated (a dict as ``scaling`` used to give its *keys* as the scaling) (issue 18, item 2).
Lists, tuples, ranges, numpy arrays and tensors still work."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import litelora_fast as llf

K, R = 3, 6


def _args():
    return (torch.randn(4, 8), torch.randn(5, 8), None, torch.randn(R, 8), torch.randn(5, R),
            torch.rand(K))


def _bad_values(good: list):
    return {
        "dict": {k: v for k, v in enumerate(good)},
        "dict keys": dict.fromkeys(good).keys(),
        "dict values": {k: v for k, v in enumerate(good)}.values(),
        "set": set(good),
        "frozenset": frozenset(good),
        "generator": (v for v in good),
        "iterator": iter(good),
        "string": "".join(str(v)[0] for v in good),
    }


OP_ARGS = {   # argument -> (a good value, how to pass it)
    "scaling": ([5.0, 5.0, 5.0], lambda v: dict(scaling=v)),
    "rank_offsets": ([0, 2, 4, 6], lambda v: dict(rank_offsets=v)),
    "trainable_adapters": ([True, False, True], lambda v: dict(trainable_adapters=v)),
    "nonzero_gates": ([True, True, False], lambda v: dict(nonzero_gates=v)),
}


@pytest.mark.parametrize("fn,arg", [("op", a) for a in OP_ARGS]
                         + [("reference", "scaling"), ("reference", "rank_offsets")])
@pytest.mark.parametrize("kind", list(_bad_values([1])))
def test_the_op_refuses_unordered_and_one_shot_lists(arg, kind, fn, fast_path, seed):
    good, spell = OP_ARGS[arg]
    op = llf.gated_lora_linear if fn == "op" else llf.reference.gated_lora_linear_ref
    with pytest.raises(TypeError, match=f"^{arg} must be"):
        op(*_args(), **spell(_bad_values(good)[kind]))


@pytest.mark.parametrize("spelling", [list, tuple, np.array, torch.tensor])
def test_ordered_lists_still_work(spelling, fast_path, seed):
    args = _args()
    ref = llf.gated_lora_linear(*args, [0, 1, 3, 6], [0.5, 2.0, 1.5])
    y = llf.gated_lora_linear(*args, spelling([0, 1, 3, 6]), spelling([0.5, 2.0, 1.5]),
                              trainable_adapters=spelling([True, True, False]),
                              nonzero_gates=spelling([True, True, True]))
    assert torch.equal(y, ref)          # the same call, bit for bit
    y = llf.gated_lora_linear(*args, range(0, 7, 2), np.float32(2.0))
    assert torch.equal(y, llf.gated_lora_linear(*args, None, 2.0))


def test_the_module_refuses_them_too(seed):
    layer = llf.GatedLoRALinear(8, 5, rank=2, num_adapters=2)
    layer.add_adapter(name="task")
    for bad in ({0: 1}, {0, 1}, (k for k in [0, 1]), "task"):
        with pytest.raises(TypeError, match="^adapters must be a list or tuple of adapter"):
            layer.delta_weight(bad)
        with pytest.raises(TypeError, match="^adapters must be a list or tuple of adapter"):
            layer.merge(bad)
    with pytest.raises(TypeError, match="^gates must be K numbers"):
        layer.delta_weight(gates={0: 1.0, 1: 1.0, 2: 1.0})
    assert torch.equal(layer.delta_weight(["task", 0]), layer.delta_weight((2, 0)))
    assert torch.equal(layer.delta_weight(gates=torch.ones(3)), layer.delta_weight(gates=[1] * 3))


def _model():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize("bad", [{"0": 1}, (n for n in ["0"]), iter(["0"])],
                         ids=["dict", "generator", "iterator"])
def test_inject_refuses_them_and_takes_sets_of_names(bad):
    with pytest.raises(TypeError, match="^target_modules must be a list of module names"):
        llf.inject(_model(), bad)
    with pytest.raises(TypeError, match="^modules_to_save must be a list of module names"):
        llf.inject(_model(), ["0"], modules_to_save=bad)
    model = llf.inject(_model(), {"0"}, modules_to_save={"2"})
    assert list(llf.injected_layers(model)) == ["0"]
