"""How the benchmarks time and weigh one peer.

- GPU: ``triton.testing.do_bench`` with ``return_mode="median"`` (CUDA events; warm-up and the L2
  flush between repetitions are do_bench's own). This median is the headline number.
- CPU: ``time.perf_counter`` around each call after warm-up calls. The peers of a case are timed
  round-robin (one call of each per round, until a time budget is spent), so that load from other
  processes on a shared machine hits every peer alike; each peer's median is the headline number.
- Activation memory: bytes of the distinct storages autograd saves for backward, the inputs'
  storages excluded (works on both devices).
- Peak memory (CUDA only): ``torch.cuda.max_memory_allocated`` over one forward+backward, minus
  what was allocated before it.
"""
from __future__ import annotations

import statistics
import time

import torch

# 10 + 60 ms: the timed calls take 0.3-5 ms on an H200, so each median is over 12-200 calls;
# ~0.08 s per peer and mode keeps the headline grid inside gpu_check.sh's budget.
GPU_WARMUP_MS, GPU_REP_MS = 10, 60
# pytest-benchmark's own rounds of ours (a cross-check, not the headline): the harness runs them,
# benchmarks/gpu/gpu_estimate.py prices them
BENCH_ROUNDS = 10
CPU_WARMUP_CALLS, CPU_MIN_CALLS, CPU_BUDGET_S = 2, 5, 1.0   # 1 s per peer: more samples


def describe(device: str) -> str:
    if device == "cuda":
        return f"triton.testing.do_bench median (warmup {GPU_WARMUP_MS} ms, rep {GPU_REP_MS} ms)"
    return (f"time.perf_counter median ({CPU_WARMUP_CALLS} warm-up calls, then >= {CPU_MIN_CALLS} "
            f"calls and >= {CPU_BUDGET_S} s)")


def gpu_median_ms(fn) -> float:
    """Median time of ``fn()`` on the GPU in milliseconds, warm-up excluded."""
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=GPU_WARMUP_MS, rep=GPU_REP_MS,
                                         return_mode="median"))


def cpu_median_ms(fns: dict) -> dict:
    """``{name: median ms}`` of CPU callables timed round-robin, warm-up excluded."""
    for fn in fns.values():
        for _ in range(CPU_WARMUP_CALLS):
            fn()
    samples = {name: [] for name in fns}
    start, budget = time.perf_counter(), CPU_BUDGET_S * len(fns)
    while (len(next(iter(samples.values()))) < CPU_MIN_CALLS
           or time.perf_counter() - start < budget):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {name: statistics.median(s) * 1e3 for name, s in samples.items()}


def synced(fn, device: str):
    """``fn`` followed by a device sync, for host-clock timers (pytest-benchmark's own stats)."""
    if device != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def saved_bytes(forward, inputs) -> int:
    """Bytes autograd keeps for backward when ``forward()`` runs, minus the inputs' storages."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    skip = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    return sum(b for p, b in storages.items() if p not in skip)


def peak_bytes(fwd_bwd, device: str):
    """Peak CUDA memory of one ``fwd_bwd()`` above what was allocated before; ``None`` on CPU."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fwd_bwd()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
