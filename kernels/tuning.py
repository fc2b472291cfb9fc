"""Launch helpers shared by every kernel family: autotune switch, shared-memory fit, dot precision,
variant choice (pointer vs tensor-descriptor kernels) and descriptor legality.

``tuned(kernel, configs, ...)`` returns what the launchers index with a grid:
- on a GPU with autotuning on, ``triton.autotune`` over the configs that fit in shared memory;
- under ``TRITON_INTERPRET=1`` (the CPU test path) one small config, so tests stay fast;
- with ``LITELORA_AUTOTUNE=0``, the first config of the list that fits (no benchmarking), so a
  run is reproducible and starts without the autotuning pause.

Variants of the fused GEMMs (``fused_forward``, ``fused_dx``), chosen per call by
``choose_variant``: ``"pointer"`` (masked pointer loads, any strides), ``"tma"`` (host tensor
descriptors, one tile per program), ``"tma_persistent"`` (a grid of one program per SM looping
over tiles) and ``"tma_ws"`` (warp-specialized: a producer warp issues the TMA loads). A launcher's
``variant=`` keyword, else the environment variable ``LITELORA_KERNEL_VARIANT``, forces one;
unset (or ``"auto"``) takes the descriptor kernels whenever the operands allow them.
"""
from __future__ import annotations

import contextlib
import functools
import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE = os.environ.get("LITELORA_AUTOTUNE", "1") != "0" and not INTERPRET

# Hopper allows 227 KiB of shared memory per block; leave room for the epilogue's layout
# conversion scratch, which Triton allocates on top of the pipelined operand buffers.
SMEM_BUDGET = 200 * 1024

VARIANTS = ("pointer", "tma", "tma_persistent", "tma_ws")
TMA_VARIANTS = VARIANTS[1:]
VARIANT_ENV = "LITELORA_KERNEL_VARIANT"
_CPU_NUM_SMS = 4             # the "SM count" persistent grids and split heuristics assume on CPU


def torch_allows_tf32() -> bool:
    """What ``F.linear`` on CUDA fp32 tensors does: TF32 iff torch's cuBLAS setting allows it.

    Both of torch's APIs: the per-backend ``torch.backends.cuda.matmul.fp32_precision`` (torch
    >= 2.9: "tf32" or "ieee", and "none" while unset; it also reflects the global
    ``torch.backends.fp32_precision`` and the legacy setters) is read first, because once a user
    has set it, reading the legacy ``allow_tf32`` raises ("mix of the legacy and new APIs"). Unset
    (or an older torch), the legacy ``allow_tf32``, which ``torch.set_float32_matmul_precision``
    "high"/"medium" turns on and "highest", the default, turns off."""
    import torch

    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def dot_precision(t, *, cuda=None) -> str:
    """``tl.dot``'s ``input_precision`` for operands like ``t``.

    fp32 on a GPU follows torch's TF32 setting as ``F.linear`` does, so a layer's precision does
    not change with whether an adapter is active: "tf32" only when torch would use TF32, else
    "ieee" (exact fp32 products). Off the GPU (the interpreter) always "ieee". fp16/bf16 ignore
    the value; they get "tf32" on the GPU so a change of torch's setting recompiles nothing.
    ``cuda`` overrides ``t.is_cuda`` (tests of the chooser on a CPU tensor).
    """
    import torch

    on_cuda = t.is_cuda if cuda is None else cuda
    if not on_cuda:
        return "ieee"
    if t.dtype != torch.float32:
        return "tf32"
    return "tf32" if torch_allows_tf32() else "ieee"


def fit_stages(configs, smem_per_stage, smem_fixed=None):
    """Configs whose pipelined operand tiles fit ``SMEM_BUDGET``; stages are lowered (to 2 at
    least) before a config is dropped, so fp32 inputs still find a config on the GPU.

    ``smem_per_stage(config)`` gives the bytes one pipeline stage holds for this call;
    ``smem_fixed(config)`` the bytes held once (a TMA-store epilogue's output tile). A config's
    ``pre_hook`` (descriptor block shapes) is kept.
    """
    kept, seen = [], set()
    for c in configs:
        per_stage = smem_per_stage(c)
        budget = SMEM_BUDGET - (smem_fixed(c) if smem_fixed else 0)
        stages = c.num_stages
        while stages > 2 and stages * per_stage > budget:
            stages -= 1
        if stages * per_stage > budget:
            continue
        key = (tuple(sorted(c.kwargs.items())), c.num_warps, stages)
        if key in seen:
            continue
        seen.add(key)
        kept.append(triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages,
                                  pre_hook=c.pre_hook))
    return kept


class _FirstFit:
    """Untuned launch: the first config that fits, applied like ``triton.autotune`` would
    (pruning, then the config's ``pre_hook``, then the launch)."""

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
            if config.pre_hook is not None:
                config.pre_hook(meta)
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


@functools.lru_cache(maxsize=None)
def _cuda_props(index: int):
    import torch

    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, (props.major, props.minor)


def num_sms(device) -> int:
    """SMs of ``device`` (cached); ``_CPU_NUM_SMS`` off the GPU, so persistent grids still loop."""
    if device.type == "cuda":
        import torch

        return _cuda_props(device.index if device.index is not None else torch.cuda.current_device())[0]
    return _CPU_NUM_SMS


def has_tma(device) -> bool:
    """Tensor descriptors run on sm_90+ GPUs and under the interpreter (which enforces the same
    16-byte rules)."""
    if device.type == "cuda":
        import torch

        return _cuda_props(device.index if device.index is not None else torch.cuda.current_device())[1] >= (9, 0)
    return INTERPRET


TMA_DTYPES = ("float16", "bfloat16", "float32")


def tma_legal(t) -> bool:
    """A 2-D tensor a host ``TensorDescriptor`` can address as is: unit inner stride, the row
    stride and the base address 16-byte aligned (the TMA unit's rules), a 16-bit or fp32 dtype."""
    if t is None or t.dim() != 2 or t.numel() == 0 or str(t.dtype).split(".")[-1] not in TMA_DTYPES:
        return False
    size = t.element_size()
    return (t.stride(1) == 1 and (t.stride(0) * size) % 16 == 0 and t.data_ptr() % 16 == 0)


def requested_variant(variant=None) -> str:
    """``variant`` if given, else ``LITELORA_KERNEL_VARIANT`` (read per call), else "auto"."""
    value = variant if variant is not None else os.environ.get(VARIANT_ENV, "auto") or "auto"
    if value != "auto" and value not in VARIANTS:
        raise ValueError(f"variant: expected one of {('auto',) + VARIANTS} (argument or "
                         f"{VARIANT_ENV}), got {value!r}")
    return value


def choose_variant(variant, device, operands, ws_ok: bool, precision: str = "tf32") -> str:
    """The variant a fused GEMM launches.

    The requested one (``variant``, else ``LITELORA_KERNEL_VARIANT``), or under "auto" the
    descriptor kernels ("tma_auto": the autotuner picks among the "tma", "tma_persistent" and
    "tma_ws" configs) when every operand in ``operands`` (the large ones: input, weight, output)
    is ``tma_legal`` on an sm_90+ device (interpreter too), else "pointer". The thin adapter
    operands are made legal by the launcher (``tma_operand``) and do not decide. ``ws_ok``: the
    warp-specialized kernel fits this call (``fused_tma.ws_fits``). Exact fp32 on the GPU
    (``precision == "ieee"``: torch's TF32 switch off) takes the pointer kernel: without wgmma the
    descriptor kernels' FMA tiles spill registers (thousands of bytes per thread in the sm_90
    compile). A forced descriptor variant that cannot run raises ``ValueError`` rather than
    running something else.
    """
    value = requested_variant(variant)
    exact_fp32_gpu = precision == "ieee" and device.type == "cuda" and operands[0].element_size() == 4
    if value == "pointer" or (value == "auto" and exact_fp32_gpu):
        return "pointer"
    if exact_fp32_gpu:
        raise ValueError(f"variant={value!r}: exact fp32 (torch's TF32 setting off) runs on the "
                         "pointer kernel only")
    legal = has_tma(device) and all(tma_legal(t) for t in operands)
    if value == "auto":
        return "tma_auto" if legal else "pointer"
    if not legal:
        shapes = [(tuple(t.shape), tuple(t.stride()), str(t.dtype)) for t in operands]
        raise ValueError(f"variant={value!r}: the operands are not tensor-descriptor legal (need "
                         f"unit inner stride, 16-byte aligned rows and base, sm_90+): {shapes}")
    if value == "tma_ws" and not ws_ok:
        raise ValueError("variant='tma_ws' does not fit this call: the adapter bank is wider "
                         "than its single adapter tile, or fp32 fused_dx (see fused_tma.ws_fits)")
    return value


def check_out(out, name, shape, dtype, device):
    """A caller-supplied output buffer must match exactly what the launcher would allocate."""
    import torch

    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{name}: expected a {tuple(shape)} {dtype} tensor on {device}, "
                         f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    return out


def padded_columns(rows: int, cols: int, dtype, device):
    """An ``(rows, cols)`` view of a fresh ``(rows, pad16(cols))`` buffer: its row stride is a
    multiple of 16 elements, so a tensor descriptor can read it (TMA needs 16-byte aligned row
    strides; R_act = 5 bf16 columns would be 10 bytes). The pad columns are never read: the
    descriptor's shape stops at ``cols`` and the TMA unit fills tiles past it with zeros."""
    import torch

    width = max(16, (cols + 15) // 16 * 16)
    return torch.empty((rows, width), dtype=dtype, device=device)[:, :cols]


def tma_operand(t):
    """``t`` if a descriptor can read it, else a copy into a padded, aligned buffer (used for the
    thin ``lora_B`` bank, D_out x R_act, whose row stride R is often not 16-byte aligned; a small
    copy next to the GEMM)."""
    if tma_legal(t):
        return t
    buf = padded_columns(t.shape[0], t.shape[1], t.dtype, t.device)
    return buf.copy_(t)
