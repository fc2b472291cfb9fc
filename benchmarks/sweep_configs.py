"""The launch configs of the fused GEMMs that the GPU scripts launch one at a time.

``kernels/`` (helper "kernels") ships a ``SWEEP_CONFIGS`` list beside the fused-forward and the
fused-dx kernels, and a ``config=`` keyword on ``fused_forward``/``fused_dx`` that launches one
explicit config. This module finds them without assuming they have landed:

- ``sweep_list(kernel)``: ``[(label, config, variant or None)]`` from ``SWEEP_CONFIGS`` (a list,
  or a dict by kernel name, in ``kernels.forward``/``kernels.backward``/``kernels.fused_tma``),
  else from the shipped config lists (``aot_specs.config_lists()``), with the reason it fell back;
- ``takes_config(fn)``: whether a launcher has the ``config=`` keyword;
- ``launch(kernel, args, config, variant)``: one launch with that config.

An entry of ``SWEEP_CONFIGS`` may be a ``triton.Config``, a ``(variant, config)`` pair or a dict
with ``"config"`` (and ``"variant"``); anything else is passed to ``config=`` as it is.
"""
from __future__ import annotations

import importlib
import inspect

KERNEL_MODULES = {"fused_forward": ("forward", "fused_tma"), "fused_dx": ("backward", "fused_tma")}


def launcher(kernel: str):
    """The launcher function of ``kernel`` (``fused_forward`` or ``fused_dx``)."""
    module = importlib.import_module("litelora_fast.kernels."
                                     + ("forward" if kernel == "fused_forward" else "backward"))
    return getattr(module, kernel)


def takes_config(fn) -> bool:
    try:
        return "config" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def label(config, variant=None) -> str:
    kw = getattr(config, "kwargs", None)
    if kw is None:
        text = str(config)
    else:
        text = ",".join(f"{k}={v}" for k, v in sorted(kw.items()))
        text += f",w{getattr(config, 'num_warps', '?')},s{getattr(config, 'num_stages', '?')}"
        if getattr(config, "num_ctas", 1) not in (None, 1):
            text += f",ctas{config.num_ctas}"
    return f"{variant}:{text}" if variant else text


def _normalize(entry):
    if isinstance(entry, dict) and "config" in entry:
        return entry["config"], entry.get("variant")
    if isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
        return entry[1], entry[0]
    return entry, getattr(entry, "variant", None) if not hasattr(entry, "kwargs") else None


def sweep_list(kernel: str) -> tuple:
    """``([(label, config, variant)], source)``: the kernel's ``SWEEP_CONFIGS``, else its shipped
    configs; ``source`` says which (and why it fell back)."""
    for name in KERNEL_MODULES[kernel]:
        try:
            module = importlib.import_module(f"litelora_fast.kernels.{name}")
        except ImportError:
            continue
        raw = getattr(module, "SWEEP_CONFIGS", None)
        if isinstance(raw, dict):
            raw = raw.get(kernel)
        if raw:
            out = []
            for entry in raw:
                config, variant = _normalize(entry)
                out.append((label(config, variant), config, variant))
            return out, f"kernels.{name}.SWEEP_CONFIGS"
    from litelora_fast.kernels import aot_specs
    out = []
    for (k, variant), configs in sorted(aot_specs.config_lists().items()):
        if k == kernel and "fp32" not in variant:
            out += [(label(c, variant), c, variant) for c in configs]
    return out, "shipped config lists (SWEEP_CONFIGS unavailable)"


def launch(kernel: str, args: tuple, config, variant=None):
    """One launch of ``kernel`` on ``args`` with ``config`` (``config=``) and ``variant``."""
    fn = launcher(kernel)
    kwargs = {"config": config}
    if variant and "variant" in inspect.signature(fn).parameters:
        kwargs["variant"] = variant
    return fn(*args, **kwargs)
