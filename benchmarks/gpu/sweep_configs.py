"""The launch configs of the fused GEMMs that the GPU scripts launch one at a time.

Each fused GEMM's kernel file ships ``SWEEP_CONFIGS``, a dict ``{variant: [triton.Config, ...]}``
(variants "pointer", "tma", "tma_persistent", "tma_ws"), and its launcher takes ``variant=`` and
``config=`` to launch one explicit config (docs/kernels.md):

- ``sweep_list(kernel)``: ``([(label, config, variant)], source)`` from that ``SWEEP_CONFIGS``,
  variant by variant in the kernel's order;
- ``launcher(kernel)``: the package's launcher (``litelora_fast.kernels.fused_forward`` /
  ``fused_dx``);
- ``launch(kernel, args, config, variant)``: one launch with that config.
"""
from __future__ import annotations

import importlib

# kernel (the launcher's name) -> the kernel file (``litelora_fast.kernels.<module>``) holding
# its SWEEP_CONFIGS
KERNEL_MODULES = {"fused_forward": "fused_xw_sgb", "fused_dx": "fused_dyw_dsa"}


def _check(kernel: str) -> str:
    if kernel not in KERNEL_MODULES:
        raise ValueError(f"kernel: expected one of {sorted(KERNEL_MODULES)}, got {kernel!r}")
    return KERNEL_MODULES[kernel]


def launcher(kernel: str):
    """The launcher function of ``kernel`` (``fused_forward`` or ``fused_dx``)."""
    _check(kernel)
    from litelora_fast import kernels
    return getattr(kernels, kernel)


def label(config, variant=None) -> str:
    """``variant:BLOCK_K=..,BLOCK_M=..,...,w8,s3``: one config in one line."""
    text = ",".join(f"{k}={v}" for k, v in sorted(config.kwargs.items()))
    text += f",w{config.num_warps},s{config.num_stages}"
    return f"{variant}:{text}" if variant else text


def sweep_list(kernel: str) -> tuple:
    """``([(label, config, variant)], source)``: every entry of the kernel's ``SWEEP_CONFIGS``,
    variant by variant; ``source`` names the list."""
    module_name = _check(kernel)
    module = importlib.import_module(f"litelora_fast.kernels.{module_name}")
    out = [(label(c, variant), c, variant)
           for variant, configs in module.SWEEP_CONFIGS.items() for c in configs]
    return out, f"kernels.{module_name}.SWEEP_CONFIGS"


def launch(kernel: str, args: tuple, config, variant: str):
    """One launch of ``kernel`` on ``args`` with exactly ``config`` of ``variant``."""
    return launcher(kernel)(*args, variant=variant, config=config)
