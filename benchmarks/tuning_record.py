"""What a GPU benchmark run records for tuning, beside the peers' times (``harness.py`` puts it in
each case's ``extra_info``):

- ``candidates(case)``: the op's own timing of every implementation candidate of the case's
  shape bucket (``"triton"``, ``"torch"``, and ``"hybrid"`` where the op has it) and the winner,
  from ``litelora_fast.autotune.timings()`` (seconds), else from the tuner's in-memory record;
- ``triton_configs()``: the Triton config each kernel's autotuner chose, from
  ``litelora_fast.kernels.chosen_configs()``;
- ``base_gemm(case)``: the fused GEMMs with no adapter columns (the base GEMM alone through our
  Triton kernels, ``fused_forward`` and ``fused_dx``) against ``F.linear`` / ``dy @ W`` (cuBLAS)
  at the case's shape: TFLOP/s of each and the Triton kernel's % of cuBLAS. This is the number
  that decides whether the fused kernels can win at all.

Every name of another module is looked up with ``getattr``: where one is missing (a branch that
has not landed) the field says ``"unavailable: ..."`` instead of failing the benchmark.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import timing

UNAVAILABLE = "unavailable"


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
    """``{bucket name: {"times": {candidate: seconds}, "winner": name}}`` of every bucket the op
    has timed in this process; ``{}`` when none."""
    from litelora_fast import autotune

    fn = getattr(autotune, "timings", None)
    if fn is not None:
        return {str(k): v for k, v in fn().items()}
    tuner = getattr(autotune, "TUNER", None)
    times, choices = getattr(tuner, "times", None), getattr(tuner, "_choices", None)
    if times is None or choices is None:
        return {}
    out = {}
    for (device, key), ms in times.items():
        out[autotune.bucket_name(key)] = {
            "times": {c: (None if v is None else v / 1e3) for c, v in ms.items()},
            "winner": choices.get((device, key))}
    return out


def bucket_name(case, needs) -> str:
    """The op's bucket name of ``case`` (per-adapter gates) with gradient ``needs``."""
    from litelora_fast import autotune

    key = autotune.bucket(case.n, case.d_in, case.d_out, case.active_rank,
                          getattr(torch, case.dtype), False, needs, bool(case.dropout))
    return autotune.bucket_name(key)


def candidates(case, needs) -> dict:
    """The op's candidate times of ``case``'s bucket, ``{"bucket", "times" (s), "winner"}``, or
    ``{"bucket", "unavailable": why}``."""
    try:
        name = bucket_name(case, needs)
    except Exception as e:   # the bucket API changed
        return {UNAVAILABLE: f"autotune.bucket/bucket_name: {type(e).__name__}: {e}"}
    table = all_timings()
    entry = table.get(name)
    if entry is None:   # the key may carry more than the name (a device, a tuple)
        entry = next((v for k, v in table.items() if name in k), None)
    if entry is None:
        return {"bucket": name, UNAVAILABLE: f"not timed in this process (timed buckets: "
                                             f"{sorted(table)[:8]})"}
    return _jsonable({"bucket": name, **entry})


def triton_configs():
    """``litelora_fast.kernels.chosen_configs()`` as JSON, or ``"unavailable: ..."``."""
    from litelora_fast import kernels

    fn = getattr(kernels, "chosen_configs", None)
    if fn is None:
        return f"{UNAVAILABLE}: litelora_fast.kernels.chosen_configs is missing"
    try:
        return _jsonable(fn())
    except Exception as e:
        return f"{UNAVAILABLE}: chosen_configs() raised {type(e).__name__}: {e}"


def base_gemm(case, median_ms=timing.gpu_median_ms) -> dict:
    """The base GEMM alone through our fused kernels (no adapter columns) and through cuBLAS at
    ``case``'s shape: ``{"fwd": {...}, "dx": {...}}`` with ``ms_triton``, ``ms_cublas``,
    ``tflops_triton``, ``tflops_cublas`` and ``pct_of_cublas`` (100 = as fast as cuBLAS), or
    ``"error"`` where the kernel failed."""
    from litelora_fast.kernels import backward as kb
    from litelora_fast.kernels import forward as kf

    dtype, dev = getattr(torch, case.dtype), case.device
    N, Di, Do = case.n, case.d_in, case.d_out
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(N, Di, generator=g, device=dev).to(dtype)
    w = (torch.randn(Do, Di, generator=g, device=dev) * Di ** -0.5).to(dtype)
    dy = torch.randn(N, Do, generator=g, device=dev).to(dtype)
    flops = 2 * N * Di * Do
    runs = {
        "fwd": (lambda: kf.fused_forward(x, w, None, x.new_empty(N, 0), w.new_empty(Do, 0)),
                lambda: F.linear(x, w)),
        "dx": (lambda: kb.fused_dx(dy, w, dy.new_empty(N, 0), x.new_empty(0, Di)),
               lambda: dy @ w),
    }
    out = {}
    for name, (ours, cublas) in runs.items():
        try:
            t_tri, t_cub = median_ms(ours), median_ms(cublas)
            out[name] = {"ms_triton": t_tri, "ms_cublas": t_cub,
                         "tflops_triton": flops / (t_tri * 1e-3) / 1e12,
                         "tflops_cublas": flops / (t_cub * 1e-3) / 1e12,
                         "pct_of_cublas": 100.0 * t_cub / t_tri}
        except Exception as e:   # record, never fail the case over this extra
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return out
