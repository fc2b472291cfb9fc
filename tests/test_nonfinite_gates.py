"""inf and NaN gates give one result through every spelling of the gates and both paths: the
math's, ``S = x A^T``, ``SG = S * G_E``, ``y = x W^T + b + SG B^T`` in IEEE arithmetic, as
``nn.Linear`` layers computing it would (docs/MATH.md, section 4; issue 18, item 2).

Before, frozen ``(K,)`` gates holding an inf were sent to the reference, which scales each
adapter's finite update by the gate (``inf`` where the op's order gives ``NaN``), while every
other spelling gave the op's result."""
import pytest
import torch
import torch.nn.functional as F

import litelora_fast as llf
from numerics import assert_rel

N, D_IN, D_OUT = 7, 12, 9
OFFSETS = [0, 1, 3, 3, 5]          # ragged ranks 1, 2, 0, 2
SCALING = [0.5, 2.0, 1.0, 1.5]
K = len(SCALING)


def _inputs():
    return (torch.randn(N, D_IN), torch.randn(D_OUT, D_IN), torch.randn(D_OUT),
            torch.randn(OFFSETS[-1], D_IN), torch.randn(D_OUT, OFFSETS[-1]))


def _oracle(x, W, b, A, B, gates2d):
    """The math in float64, layer by layer (two nn.Linear-style products around the gating)."""
    cols = [k for k in range(K) for _ in range(OFFSETS[k + 1] - OFFSETS[k])]
    G_E = gates2d.double()[:, cols] * torch.tensor([SCALING[k] for k in cols],
                                                   dtype=torch.float64)
    S = F.linear(x.double(), A.double())
    return F.linear(x.double(), W.double(), b.double()) + F.linear(S * G_E, B.double())


def _spellings(x, g):
    """The same per-adapter gate values ``g`` (K,), spelled four ways: ``(x, gates)`` pairs."""
    return {
        "(K,) frozen": (x, g),
        "(K,) trainable": (x, g.clone().requires_grad_(True)),
        "(N, K)": (x, g.expand(N, K).contiguous()),
        "3-D x, (1, N, K)": (x.view(1, N, D_IN), g.expand(1, N, K).contiguous()),
    }


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("adapter", [0, 1], ids=["rank1", "rank2"])
def test_a_nonfinite_gate_gives_the_math_through_every_spelling(path, value, adapter, request,
                                                                seed):
    request.getfixturevalue(path)
    x, W, b, A, B = _inputs()
    g = torch.tensor([0.3, -0.7, 0.0, 1.1])
    g[adapter] = value
    ref = _oracle(x, W, b, A, B, g.expand(N, K))
    # rank 1 and an inf gate: +-inf everywhere; rank 2: NaN where the two columns' signs differ
    assert not torch.isfinite(ref).any()
    for name, (xs, gs) in _spellings(x, g).items():
        y = llf.gated_lora_linear(xs, W, b, A, B, gs, OFFSETS, SCALING)
        assert_rel(f"{name} ({path})", y.reshape(N, D_OUT), ref, torch.float32)


@pytest.mark.parametrize("path", ["fast_path", "interpreter"])
def test_a_nonfinite_row_leaves_the_other_rows_finite(path, request, seed):
    request.getfixturevalue(path)
    x, W, b, A, B = _inputs()
    gates = torch.randn(N, K)
    gates[:, 2] = 0.0
    gates[2, 1], gates[5, 3] = float("inf"), float("nan")
    ref = _oracle(x, W, b, A, B, gates)
    y = llf.gated_lora_linear(x, W, b, A, B, gates, OFFSETS, SCALING)
    assert torch.isfinite(ref[[0, 1, 3, 4, 6]]).all() and not torch.isfinite(ref[[2, 5]]).any()
    assert_rel(f"per-row ({path})", y, ref, torch.float32)


def test_the_module_follows_the_same_rule(fast_path, seed):
    layer = llf.GatedLoRALinear(D_IN, D_OUT, rank=2, alpha=2, num_adapters=2)
    with torch.no_grad():
        layer.adapter(0)[1].normal_()
        layer.adapter(1)[1].normal_()
        layer.gates.copy_(torch.tensor([float("inf"), 0.5]))
    x = torch.randn(N, D_IN)
    frozen = layer(x)
    layer.gates.requires_grad_(True)
    assert_rel("trainable gates", layer(x), frozen.detach(), torch.float32)
    assert torch.isnan(frozen).any()   # two rank columns of mixed sign at inf: NaN (the math)
