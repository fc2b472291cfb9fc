"""What a GPU benchmark run records for tuning, beside the peers' times (``harness.py`` puts it in
each case's ``extra_info``):

- ``candidates(case)``: the op's own timing of every implementation candidate of the case's
  shape bucket (``autotune.CANDIDATES``: ``"triton"``, ``"hybrid"``, ``"torch"``) and the
  winner, from ``litelora_fast.op.autotune.timings()`` (seconds);
- ``triton_configs()``: the Triton config each kernel's autotuner chose, from
  ``litelora_fast.kernels.chosen_configs()``;
- ``base_gemm(case)``: our fused GEMMs (``fused_forward``, ``fused_dx``) at the case's shape and
  adapter width against cuBLAS doing the base GEMM alone (``F.linear``, ``dy @ W``) and the same
  work (the composite): TFLOP/s and % of each. This is the number that decides whether the fused
  kernels can win at all.

``base_gemm`` records a launch that raises as ``"error"`` instead of failing the case.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import timing

NOT_TIMED = "not_timed"


def _jsonable(v):
    """A JSON-safe copy: dicts/lists kept, non-finite floats as None, anything else as str."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def all_timings() -> dict:
    """``{bucket name: {"times": {candidate: seconds}, "winner": name, "device"}}`` of every
    bucket the op's tuner knows (``litelora_fast.op.autotune.timings()``); ``{}`` when none."""
    from litelora_fast.op import autotune

    return {str(k): v for k, v in autotune.timings().items()}


def bucket_name(case, needs) -> str:
    """The op's bucket name of ``case`` (per-adapter gates) with gradient ``needs``."""
    from litelora_fast.op import autotune

    key = autotune.bucket(case.n, case.d_in, case.d_out, case.active_rank,
                          getattr(torch, case.dtype), False, needs, bool(case.dropout))
    return autotune.bucket_name(key)


def candidates(case, needs) -> dict:
    """The op's candidate times of ``case``'s bucket, ``{"bucket", "times" (s), "winner",
    "device"}`` (one time per ``autotune.CANDIDATES``: "triton", "hybrid", "torch"), or
    ``{"bucket", "not_timed": the buckets that were}`` when the op has not timed it."""
    name = bucket_name(case, needs)
    table = all_timings()
    entry = table.get(name)
    if entry is None:
        return {"bucket": name, NOT_TIMED: f"not timed in this process (timed buckets: "
                                           f"{sorted(table)[:8]})"}
    return _jsonable({"bucket": name, **entry})


def triton_configs() -> dict:
    """``litelora_fast.kernels.chosen_configs()`` as JSON: ``{kernel: [record, ...]}``, the
    config (and, for the fused GEMMs under "auto", the variant) each tuned launch picked."""
    from litelora_fast import kernels

    return _jsonable(kernels.chosen_configs())


def base_gemm(case, median_ms=timing.gpu_median_ms) -> dict:
    """Our fused GEMMs against cuBLAS at ``case``'s shape and active adapter width ``R``:
    ``fused_forward`` (``y = x W^T + SG B^T``) against ``F.linear`` (the base GEMM alone) and
    against the cuBLAS composite doing the same work (``addmm``), likewise ``fused_dx``
    (``dx = dy W + dS A``) against ``dy @ W``. The launches are the autotuned ones the op's
    kernels candidate makes (same specialisation: no new compile). Per kernel: ``ms_triton``,
    ``ms_cublas_base``, ``ms_cublas_composite``, ``tflops_triton`` (base and adapter FLOPs),
    ``tflops_cublas_base``, ``pct_of_flinear`` (the fused GEMM's TFLOP/s as % of F.linear's)
    and ``pct_of_composite`` (100 = as fast as the composite), or ``"error"``."""
    from litelora_fast import kernels

    dtype, dev = getattr(torch, case.dtype), case.device
    N, Di, Do, R = case.n, case.d_in, case.d_out, case.active_rank
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dtype)

    x, w, dy = randn(N, Di), randn(Do, Di, scale=Di ** -0.5), randn(N, Do)
    SG, B = randn(N, R), randn(Do, R, scale=max(R, 1) ** -0.5)
    dS, A = randn(N, R), randn(R, Di, scale=max(R, 1) ** -0.5)
    runs = {
        "fwd": (lambda: kernels.fused_forward(x, w, None, SG, B), lambda: F.linear(x, w),
                lambda: torch.addmm(F.linear(x, w), SG, B.t()), 2 * N * Do * Di, 2 * N * Do * R),
        "dx": (lambda: kernels.fused_dx(dy, w, dS, A), lambda: dy @ w,
               lambda: torch.addmm(dy @ w, dS, A), 2 * N * Di * Do, 2 * N * Di * R),
    }
    out = {"R": R}
    for name, (ours, base, composite, base_flops, lora_flops) in runs.items():
        try:
            t_tri, t_base, t_comp = median_ms(ours), median_ms(base), median_ms(composite)
            tf_tri = (base_flops + lora_flops) / (t_tri * 1e-3) / 1e12
            tf_base = base_flops / (t_base * 1e-3) / 1e12
            out[name] = {"ms_triton": t_tri, "ms_cublas_base": t_base,
                         "ms_cublas_composite": t_comp, "tflops_triton": tf_tri,
                         "tflops_cublas_base": tf_base, "pct_of_flinear": 100.0 * tf_tri / tf_base,
                         "pct_of_composite": 100.0 * t_comp / t_tri}
        except Exception as e:   # record, never fail the case over this extra
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return out
