"""The one numerics check of the test suite: relative error against a float64 reference.

``assert_rel(name, out, ref, dtype, scale=None)`` fails when ``out`` holds a NaN or an inf that
``ref`` does not (a kernel that forgets to write a NaN-poisoned element fails here first), then
when ``||out - ref|| / ||scale||`` exceeds ``TOL[dtype]``. ``scale`` defaults to ``ref``; pass a
larger one for sums that cancel (``op_cases.gate_grad_scale``: rounding is relative to the sum of
the terms' magnitudes, not to the possibly tiny result).

``TOL`` is the only tolerance table; each bound says why it is what it is.
"""
from __future__ import annotations

from typing import Optional

import torch

TOL = {
    # Exact fp32 products (the interpreter runs tl.dot in "ieee"; the CPU fast path is plain
    # fp32 BLAS) summed over <= a few hundred terms: ~1e-7 per term, 1e-5 leaves a 100x margin
    # while a wrong index or a missing term misses by O(1).
    torch.float32: 1e-5,
    # float64 paths (gradcheck dtype, the torch backend in float64): rounding ~1e-16 per term.
    torch.float64: 1e-12,
    # fp16 operands, fp32 accumulation, one rounding of the output to fp16 (2**-11 ~ 5e-4 per
    # element, more where an intermediate such as S or dS is stored in fp16 and re-read).
    torch.float16: 1e-2,
    # bf16 has 8 mantissa bits (2**-8 ~ 4e-3 per stored element): same structure as fp16.
    torch.bfloat16: 2e-2,
}

# TF32 tensor cores (fp32 operands on a GPU with allow_tf32): 10 mantissa bits like fp16.
TOL_TF32 = 1e-2


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """``||out - ref|| / ||scale||`` in float64 (``scale`` defaults to ``ref``; 0 norms -> 1)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = (ref if scale is None else scale.detach().double()).norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_rel(name: str, out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
               scale: Optional[torch.Tensor] = None, tol: Optional[float] = None) -> float:
    """Assert ``out`` matches the float64 ``ref`` within ``TOL[dtype]`` (or ``tol``); returns
    the relative error. Checks shapes, then non-finite values, then the error."""
    assert tuple(out.shape) == tuple(ref.shape), \
        f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    bad = ~torch.isfinite(out.detach()) & torch.isfinite(ref.detach())
    assert not bad.any(), (f"{name}: {int(bad.sum())} non-finite element(s) where the reference "
                           f"is finite (first at {tuple(bad.nonzero()[0].tolist())})")
    bound = TOL[dtype] if tol is None else tol
    finite = torch.isfinite(ref.detach())
    if not finite.all():
        # Where the reference is inf/NaN the output must be the same value.
        same = (out.detach()[~finite].double() == ref.detach()[~finite].double()) | (
            out.detach()[~finite].isnan() & ref.detach()[~finite].isnan())
        assert same.all(), f"{name}: non-finite elements differ from the reference"
        out, ref = out.detach()[finite], ref.detach()[finite]
        scale = None if scale is None else scale.detach()[finite]
    err = rel_err(out, ref, scale)
    assert err < bound, f"{name}: relative error {err:.3g} >= {bound:.3g} ({dtype})"
    return err
