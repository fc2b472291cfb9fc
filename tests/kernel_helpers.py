"""Helpers shared by the kernel tests (test_kernels_forward.py, test_kernels_backward.py):
NaN-poisoned output buffers, the plan's per-column tables, strided layouts, gates, and the float64
references of each launcher. Numerics checks go through ``numerics.assert_rel``.
"""
import pytest
import torch

# The interpreter runs tl.dot exactly on fp32 ("ieee") and fp16; bf16 is wrong there (triton
# issue 11584), so the bf16 cases run under the bf16 interpreter patch (tests/bf16_interpreter.py:
# exact fp32 products and accumulation, round-to-nearest-even casts, as a GPU computes them).
BF16 = pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.bf16_interpreter)
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"), BF16]
TMA_VARIANTS = ["tma", "tma_persistent", "tma_ws"]


def nan_like(shape, dtype):
    """A buffer every element of which a kernel must overwrite."""
    return torch.full(shape, float("nan"), dtype=dtype)


def column_tables(ranks, scaling, skip=()):
    """The plan's per-column tables for adapters of ``ranks``, leaving out adapters in ``skip``
    (inactive ones), so the active columns are ragged and their adapter ids have gaps."""
    adapter, scale = [], []
    for k, (r, s) in enumerate(zip(ranks, scaling)):
        if k not in skip:
            adapter += [k] * r
            scale += [s] * r
    return torch.tensor(adapter, dtype=torch.int32), torch.tensor(scale, dtype=torch.float32)


def strided(t, how):
    """The same values as ``t`` (2-D) in a non-contiguous layout."""
    if how == "transposed":
        return t.t().contiguous().t()
    if how == "sliced":
        wide = torch.randn(t.shape[0], t.shape[1] + 5, dtype=t.dtype)
        wide[:, 2:2 + t.shape[1]] = t
        return wide[:, 2:2 + t.shape[1]]
    return t


def make_gates(mode, N, K, dtype=torch.float32):
    """Per-row gates ``(N, K)``, or per-adapter gates as the op passes them (a row-stride-0
    expanded view); "zero" zeroes the first and last adapter's gate."""
    if mode == "per_row":
        return torch.randn(N, K).to(dtype)
    g = torch.randn(K)
    if mode == "zero":
        g[0] = 0.0
        g[-1] = 0.0
    return g.to(dtype).unsqueeze(0).expand(N, K)


def expanded_gates_ref(gates2d, col_adapter, col_scale):
    return gates2d.double()[:, col_adapter.long()] * col_scale.double()


def shrink_ref(x2d, lora_A, gates2d, col_adapter, col_scale):
    S = x2d.double() @ lora_A.double().t()
    return S, S * expanded_gates_ref(gates2d, col_adapter, col_scale)


def fused_ref(x2d, weight, bias, SG, lora_B):
    y = x2d.double() @ weight.double().t() + SG.double() @ lora_B.double().t()
    return y + bias.double() if bias is not None else y


def grad_shrink_ref(dy, lora_B, S, gates2d, col_adapter, col_scale):
    dS_g = dy.double() @ lora_B.double()
    P = dS_g * S.double() * col_scale.double() if S is not None else None
    return dS_g * expanded_gates_ref(gates2d, col_adapter, col_scale), P


def fused_dx_ref(dy, weight, dS, lora_A):
    dx = dy.double() @ weight.double()
    return dx + dS.double() @ lora_A.double() if dS is not None else dx


def launches(counts, before, *names):
    """How many launches of each of ``names`` happened since the ``before`` copy."""
    return {n: counts[n] - before[n] for n in names}


def variant_launches(counts, before, kernel):
    """``{"<kernel>/<variant>": launches}`` of the variants that ran since ``before``."""
    return {k: v - before[k] for k, v in counts.items()
            if k.startswith(kernel + "/") and v - before[k]}
