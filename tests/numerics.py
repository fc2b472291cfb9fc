"""The one numerics check of the test suite: relative error against a float64 reference.

``assert_rel(name, out, ref, dtype, scale=None)`` fails when ``out`` holds a NaN or an inf that
``ref`` does not (a kernel that forgets to write a NaN-poisoned element fails here first), then
when ``||out - ref|| / ||scale||`` exceeds ``TOL[dtype]``. ``scale`` defaults to ``ref``; pass a
larger one for sums that cancel (``op_cases.gate_grad_scale``: rounding is relative to the sum of
the terms' magnitudes, not to the possibly tiny result).

``TOL`` is the only tolerance table; each bound says why it is what it is. With
``LITELORA_LOG_ERRORS=FILE`` every check appends ``name dtype error`` to FILE: the measured errors
the bounds are judged against (``python tests/numerics.py FILE`` summarises them per dtype).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch

# Measured (LITELORA_LOG_ERRORS over the kernel, op, dropout, layer and compile tests, fixed
# seed, 2026-12-02): fp32 729 checks, median 7.9e-8, max 8.1e-7 (a router-bias gradient: a sum
# over rows that cancels; the op's own outputs and gradients stay under 2.6e-7); fp16 233
# checks, median 2.1e-4, max 5.3e-4; bf16 (CPU autocast) 19 checks, median 2.6e-3, max 4.4e-3. A wrong index, a missing
# adapter or a lost term misses by the share of that term: 1e-2 and more on these shapes.
TOL = {
    # fp32 operands, fp32 accumulation over the suite's reductions (<= ~1000 terms): recursive
    # rounding grows like 2**-24 * sqrt(n / 2), 1.3e-6 at n = 1000; 2e-6 is 2.5x the largest
    # error measured (7.7x the op's own).
    torch.float32: 2e-6,
    # float64 paths (gradcheck dtype, the torch backend in float64): rounding ~1e-16 per term.
    torch.float64: 1e-12,
    # fp16 operands, fp32 accumulation, at most three fp16 roundings on the way to a result (an
    # intermediate S or dS stored in fp16 and re-read, its product, the output): 3 * 2**-11 =
    # 1.5e-3 per element at worst; 2e-3 is 3.8x the largest error measured.
    torch.float16: 2e-3,
    # bf16: the same structure with 8 mantissa bits instead of 11 (2**3 = 8 times fp16's bound,
    # 1.6e-2, rounded to 2e-2); 4.6x the largest error measured (CPU autocast only: the
    # interpreter cannot run bf16 tl.dot, and no GPU has run the bf16 kernels).
    torch.bfloat16: 2e-2,
}

# fp32 on a GPU's long reductions (the GPU check's D_in = 4096..14336 terms): 2**-24 *
# sqrt(14336 / 2) = 5e-6 for recursive summation; 1e-5. Unmeasured: no GPU has run the check.
TOL_FP32_LONG = 1e-5

# TF32 tensor cores (fp32 operands on a GPU with allow_tf32): 10 mantissa bits like fp16, with
# the operands rounded on load (two roundings of 2**-11 per product) and reductions of thousands
# of terms; 1e-2 until the first GPU run measures it.
TOL_TF32 = 1e-2


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """``||out - ref|| / ||scale||`` in float64 (``scale`` defaults to ``ref``; 0 norms -> 1)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = (ref if scale is None else scale.detach().double()).norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def worst_row_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest ``||out_r - ref_r|| / ||ref_r||`` over the rows ``r`` (every index but the
    last dimension's), in float64: one wrong row of N moves the whole-tensor error by only about
    1/sqrt(N). A row whose reference is 0 is measured against the mean row norm (1 if all are
    0)."""
    out, ref = out.detach().double(), ref.detach().double()
    if ref.dim() < 2 or ref.numel() == 0:
        return rel_err(out, ref)
    diff = (out - ref).reshape(-1, ref.shape[-1]).norm(dim=1)
    norms = ref.reshape(-1, ref.shape[-1]).norm(dim=1)
    floor = norms.mean().item() or 1.0
    return (diff / torch.where(norms > 0, norms, torch.full_like(norms, floor))).max().item()


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
    log = os.environ.get("LITELORA_LOG_ERRORS")
    if log:
        with open(log, "a") as f:
            f.write(f"{name} {str(dtype).replace('torch.', '')} {err:.6g}\n")
    assert err < bound, f"{name}: relative error {err:.3g} >= {bound:.3g} ({dtype})"
    return err


def summarise(path: str) -> dict:
    """Per dtype: the number of checks, the median and the largest error logged in ``path``."""
    by_dtype: dict = {}
    with open(path) as f:
        for line in f:
            _, dtype, err = line.rsplit(maxsplit=2)
            by_dtype.setdefault(dtype, []).append(float(err))
    return {d: (len(v), sorted(v)[len(v) // 2], max(v)) for d, v in sorted(by_dtype.items())}


if __name__ == "__main__":
    for d, (n, med, top) in summarise(sys.argv[1]).items():
        print(f"{d:10s} {n:6d} checks   median {med:.3g}   max {top:.3g}")
