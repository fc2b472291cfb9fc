"""Launch helpers shared by the backward kernels: autotune switch, shared-memory fit, dot precision.

``tuned(kernel, configs, ...)`` returns what the launchers index with a grid:
- on a GPU with autotuning on, ``triton.autotune`` over the configs that fit in shared memory;
- under ``TRITON_INTERPRET=1`` (the CPU test path) one small config, so tests stay fast;
- with ``LITELORA_AUTOTUNE=0``, the first config of the list that fits (no benchmarking), so a
  run is reproducible and starts without the autotuning pause.
"""
from __future__ import annotations

import contextlib
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE = os.environ.get("LITELORA_AUTOTUNE", "1") != "0" and not INTERPRET

# Hopper allows 227 KiB of shared memory per block; leave room for the epilogue's layout
# conversion scratch, which Triton allocates on top of the pipelined operand buffers.
SMEM_BUDGET = 200 * 1024


def dot_precision(t) -> str:
    """fp32 operands: TF32 tensor cores on the GPU, exact fp32 on the interpreter (tests ~1e-5)."""
    return "tf32" if t.is_cuda else "ieee"


def fit_stages(configs, smem_per_stage):
    """Configs whose pipelined operand tiles fit ``SMEM_BUDGET``; stages are lowered (to 2 at
    least) before a config is dropped, so fp32 inputs still find a config on the GPU.

    ``smem_per_stage(config)`` gives the bytes one pipeline stage holds for this call.
    """
    kept, seen = [], set()
    for c in configs:
        per_stage = smem_per_stage(c)
        stages = c.num_stages
        while stages > 2 and stages * per_stage > SMEM_BUDGET:
            stages -= 1
        if stages * per_stage > SMEM_BUDGET:
            continue
        key = (tuple(sorted(c.kwargs.items())), c.num_warps, stages)
        if key in seen:
            continue
        seen.add(key)
        kept.append(triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages))
    return kept


class _FirstFit:
    """Untuned launch: the first config that fits, applied like ``triton.autotune`` would."""

    def __init__(self, kernel, configs, prune):
        self.kernel, self.configs, self.prune = kernel, configs, prune

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            nargs = dict(zip(self.kernel.arg_names, args))
            configs = self.prune(self.configs, nargs, **kwargs) if self.prune else self.configs
            if not configs:
                raise RuntimeError(f"{self.kernel.__name__}: no launch config fits shared memory")
            config = configs[0]
            meta = {**nargs, **kwargs, **config.kwargs}
            g = grid(meta) if callable(grid) else grid
            return self.kernel[g](*args, **kwargs, **config.kwargs,
                                  num_warps=config.num_warps, num_stages=config.num_stages)
        return launch


def tuned(kernel, configs, interpreter_config, key, prune=None):
    """The launchable form of ``kernel`` for this process (see the module docstring)."""
    if INTERPRET:
        return _FirstFit(kernel, [interpreter_config], None)
    if not AUTOTUNE:
        return _FirstFit(kernel, configs, prune)
    prune_by = {"early_config_prune": prune} if prune else None
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_by)(kernel)


def block_r(r_act: int, cap: int) -> int:
    """Column tile over the R_act adapter columns: a power of two in [16, cap] (tl.dot needs
    every extent >= 16)."""
    return min(max(16, triton.next_power_of_2(max(r_act, 1))), cap)


def n_bucket(n: int) -> int:
    """Autotune key for a row count: one tuning per power of two, not per sequence length."""
    return triton.next_power_of_2(max(n, 16))


def on_device(t):
    """Triton launches on the current CUDA device: make it the tensor's (multi-GPU safety)."""
    import torch

    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def check_out(out, name, shape, dtype, device):
    """A caller-supplied output buffer must match exactly what the launcher would allocate."""
    import torch

    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{name}: expected a {tuple(shape)} {dtype} tensor on {device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    return out
