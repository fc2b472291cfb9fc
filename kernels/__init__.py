"""Triton kernels of litelora-fast, installed as ``litelora_fast.kernels``.

The launchers (the math in docs/MATH.md, the contracts in docs/DESIGN.md, the internals in
docs/kernels.md) are exported from this package itself, resolved lazily on first use:

    from litelora_fast import kernels
    S, SG = kernels.shrink(x2d, lora_A, gates2d, col_adapter, col_scale)
    y = kernels.fused_forward(x2d, weight, bias, SG, lora_B)

``shrink``, ``fused_forward``, ``grad_shrink``, ``fused_dx``, ``lora_weight_grads``,
``matmul_tn``, ``masked_addmm_``, ``dropout_mask``.

``LAUNCH_COUNTS`` counts kernel launches by kernel name (and ``"<kernel>/<variant>"`` for the
fused GEMMs); every launcher increments it, so tests can prove that the interpreter really ran
our kernels and which variant it took. Importing this package imports neither torch nor triton:
the first use of an exported name imports the file that defines it.
"""
import collections
import importlib

LAUNCH_COUNTS = collections.Counter()

# exported name -> the module (in this package) that defines it
_EXPORTS = {
    "shrink": "forward",
    "fused_forward": "forward",
    "grad_shrink": "backward",
    "fused_dx": "backward",
    "lora_weight_grads": "weight_grad",
    "matmul_tn": "weight_grad",
    "masked_addmm_": "dropout",
    "dropout_mask": "dropout",
}

__all__ = ["LAUNCH_COUNTS", *_EXPORTS]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value          # resolved once; later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
