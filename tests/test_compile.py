"""``torch.compile``, ``torch.library.opcheck`` and autocast with ``GatedLoRALinear`` (fast path).

The compiled model must trace in one graph (``fullgraph=True``: a graph break is an error) and
match eager in the output and every gradient. The backend is ``aot_eager``: it runs Dynamo and
AOTAutograd (fake tensors, functionalisation, the registered autograd of our custom ops), which is
where a graph break or a wrong fake implementation would show. Inductor's C++ code generation adds
nothing for an opaque custom op and took 53 s to compile this MLP's forward and backward on the
2-core CI machine (it matched eager to 2e-7 when run by hand), too slow for the suite.
"""
import pytest
import torch
import torch.nn as nn

from litelora_fast import GatedLoRALinear
from litelora_fast.op.reference import gated_lora_linear_ref
from numerics import assert_rel
from op_cases import gate_grad_scale

# Compiled and eager run the same kernels; they agree to rounding of the surrounding ops (~1e-7),
# well inside numerics.TOL[float32].


class MLP(nn.Module):
    """Two gated layers around a GELU; adapter 0 frozen (an earlier task), adapter 1 training."""

    def __init__(self, gate: str):
        super().__init__()
        self.fc1 = GatedLoRALinear(24, 40, rank=4, num_adapters=2, gate=gate)
        self.fc2 = GatedLoRALinear(40, 10, rank=3, num_adapters=2, gate=gate)
        for layer in (self.fc1, self.fc2):
            with torch.no_grad():
                for B in layer.lora_B:
                    B.normal_()
            layer.freeze_adapter(0)
            if gate == "per_adapter":
                layer.gates.requires_grad_(True)
            else:
                with torch.no_grad():
                    layer.router_weight.normal_()

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def run(model, x):
    y = model(x)
    y.backward(torch.ones_like(y) * torch.arange(y.shape[-1], dtype=y.dtype))
    # The compiled wrapper shares the eager model's Parameters under the prefix "_orig_mod.".
    grads = {n.removeprefix("_orig_mod."): p.grad.clone()
             for n, p in model.named_parameters() if p.grad is not None}
    grads["x"] = x.grad.clone()
    model.zero_grad()
    x.grad = None
    return y.detach(), grads


def compare(eager, compiled, x):
    y_e, g_e = run(eager, x)
    y_c, g_c = run(compiled, x)
    assert_rel("y", y_c, y_e, torch.float32)
    assert g_c.keys() == g_e.keys()
    for name in g_e:
        assert_rel(name, g_c[name], g_e[name], torch.float32)


@pytest.mark.parametrize("gate", ["per_adapter", "per_row"])
def test_compiled_model_matches_eager_in_one_graph(gate, fast_path, seed):
    torch._dynamo.reset()
    model = MLP(gate)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 7, 24, requires_grad=True)
    compare(model, compiled, x)
    # The bank is guarded: recruiting an adapter recompiles instead of reusing a stale graph.
    model.fc1.add_adapter(rank=2)
    with torch.no_grad():
        model.fc1.lora_B[2].normal_()
    compare(model, compiled, x)


def test_compiled_shared_external_gates(fast_path, seed):
    torch._dynamo.reset()
    model = MLP("per_adapter")
    g = (torch.rand(2) + 0.5).requires_grad_()
    for layer in (model.fc1, model.fc2):
        layer.set_gates(g)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(9, 24, requires_grad=True)
    y_e, _ = run(model, x)
    grad_e, g.grad = g.grad, None
    y_c, _ = run(compiled, x)
    assert_rel("y", y_c, y_e, torch.float32)
    assert_rel("gates", g.grad, grad_e, torch.float32)


def test_explain_reports_no_graph_break(fast_path, seed):
    torch._dynamo.reset()
    model = MLP("per_adapter")
    with torch.no_grad():
        model.fc1.gates.zero_()           # under compile no gate is read: no data-dependent branch
    report = torch._dynamo.explain(model)(torch.randn(5, 24))
    assert report.graph_break_count == 0 and report.graph_count == 1


def _op_args(seed_rows: int):
    x2d = torch.randn(seed_rows, 12, requires_grad=True)
    weight = torch.randn(6, 12, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    lora_A = torch.randn(5, 12, requires_grad=True)
    lora_B = torch.randn(6, 5, requires_grad=True)
    gates2d = (torch.rand(seed_rows, 2) + 0.5).requires_grad_()
    return x2d, weight, bias, lora_A, lora_B, gates2d


@pytest.mark.parametrize("keep_zero", [False, True], ids=["skip-zero", "keep-zero"])
def test_opcheck_forward_op(keep_zero, fast_path, seed):
    x2d, weight, bias, lora_A, lora_B, gates2d = _op_args(7)
    if not keep_zero:
        gates2d = gates2d.detach()
        gates2d[:, 1] = 0.0
    needs = [True, True, True, True, True, keep_zero]
    active = [0, 1] if keep_zero else [0]
    args = (x2d, weight, bias, lora_A, lora_B, gates2d, [0, 2, 5], [2.0, 0.5], active,
            [True, True], "torch", needs)
    torch.library.opcheck(torch.ops.litelora_fast.gated_lora_fwd.default, (*args, 0.0, None))
    # LoRA dropout: the seed is an input, so every run of the op draws the same mask.
    seed_t = torch.tensor([seed], dtype=torch.int64)
    torch.library.opcheck(torch.ops.litelora_fast.gated_lora_fwd.default, (*args, 0.25, seed_t))


def test_opcheck_backward_op(fast_path, seed):
    x2d, weight, bias, lora_A, lora_B, gates2d = (t.detach() for t in _op_args(7))
    S = x2d @ lora_A.t()
    dy = torch.randn(7, 6)
    for needs, grad_adapters in (([True] * 6, [True, True]),
                                 ([True, False, False, False, True, True], [False, True])):
        for active in ([0, 1], [1]):
            args = (dy, x2d, weight, lora_A, lora_B, gates2d, S, needs, [0, 2, 5], [2.0, 0.5],
                    active, grad_adapters, "torch", needs)
            for drop in ((0.0, None), (0.25, torch.tensor([seed], dtype=torch.int64))):
                torch.library.opcheck(torch.ops.litelora_fast.gated_lora_bwd.default,
                                      (*args, *drop))


def test_autocast_bf16_runs_the_matmuls_in_bf16(fast_path, seed):
    model = MLP("per_adapter")
    layer = model.fc1
    x = torch.randn(4, 6, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_linear = nn.functional.linear(x, layer.weight, layer.bias)
        assert y.dtype == y_linear.dtype == torch.bfloat16
        y_grad = []
        y.register_hook(y_grad.append)
        y.float().sum().backward()
    # Oracle: float64 on the bf16-rounded operands, i.e. what the bf16 matmuls were given.
    A, B = layer.packed_bank()
    r64 = [t.detach().to(torch.bfloat16).double() for t in (x, layer.weight, layer.bias, A, B)]
    A64, B64 = (t.requires_grad_(True) for t in r64[3:])
    g64 = layer.gates.detach().double().requires_grad_(True)
    ref = gated_lora_linear_ref(*r64[:3], A64, B64, g64, layer.rank_offsets, layer.scaling)
    assert_rel("y", y, ref, torch.bfloat16)
    # The gradients too: the fp32 parameters get bf16-computed gradients of the right values,
    # against the oracle given the same upstream gradient (the bf16 one the layer received).
    dy = y_grad[0].detach().to(torch.bfloat16).double()
    ref.backward(dy)
    lo, hi = layer.rank_offsets[1], layer.rank_offsets[2]
    assert layer.lora_A[1].grad.dtype == torch.float32
    assert_rel("dA_1", layer.lora_A[1].grad, A64.grad[lo:hi], torch.bfloat16)
    assert_rel("dB_1", layer.lora_B[1].grad, B64.grad[:, lo:hi], torch.bfloat16)
    assert layer.lora_A[0].grad is None                      # the frozen adapter gets none
    scale = gate_grad_scale(r64[0], r64[3], r64[4], dy, layer.rank_offsets, layer.scaling,
                            per_row=False)
    assert_rel("dgates", layer.gates.grad, g64.grad, torch.bfloat16, scale=scale)
