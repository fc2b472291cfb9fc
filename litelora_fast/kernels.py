"""Triton kernels of litelora-fast, installed as ``litelora_fast.kernels``.

The launchers (the math in docs/MATH.md, the contracts in docs/DESIGN.md, the internals in
docs/kernels.md) are exported from this package itself, resolved lazily on first use:

    from litelora_fast import kernels
    S, SG = kernels.shrink(x2d, lora_A, gates2d, col_adapter, col_scale)
    y = kernels.fused_forward(x2d, weight, bias, SG, lora_B)

``shrink``, ``fused_forward``, ``grad_shrink``, ``fused_dx``, ``lora_weight_grads``,
``matmul_tn``, ``masked_addmm_``, ``dropout_mask``; and for tools: ``chosen_configs()`` (the config
each tuned launch of this process picked), ``config_lists()`` (every config list the launchers
tune over), ``ws_fits`` (whether the warp-specialized kernel takes a bank), ``STATUS`` (how far the
configs are tuned).

One file per fused product (docs/kernels.md): ``shrink_xa`` (S, SG), ``fused_xw_sgb`` (y),
``shrink_dyb`` (dS, P), ``fused_dyw_dsa`` (dx), ``weight_grad`` (dA, dB, dW), ``dropout``
(masked dx term, the mask); ``tiles`` (device helpers), ``tuning`` (launch helpers),
``fused_launch`` (the fused GEMMs' variant records and launch),
``compile_spec`` and ``compile_report`` (the offline sm_90 check).

``LAUNCH_COUNTS`` counts kernel launches by kernel name (and ``"<kernel>/<variant>"`` for the
fused GEMMs); every launcher increments it, so tests can prove that the interpreter really ran
our kernels and which variant it took. Importing this package imports neither torch nor triton:
the first use of an exported name imports the file that defines it.

Why this file is a module with a ``__path__`` and not ``kernels/__init__.py``: the kernel files
live in the repository's top-level folder ``kernels/``. With an ``__init__.py`` there, that folder
is a regular package named ``kernels`` for any Python started at the repository root (the root
is ``sys.path[0]``), and it hides an installed package of that name (Hugging Face's kernels hub,
which bitsandbytes imports). Without one, the folder is only a namespace portion, which loses to
a regular package found later on the path. This module is the package's ``__init__``: Python
takes ``litelora_fast/kernels.py`` as ``litelora_fast.kernels`` (a module beats a directory
without ``__init__.py``), and its ``__path__`` makes the kernel files its submodules.
"""
import collections
import importlib
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
# Installed (setup.py maps kernels/ to litelora_fast/kernels/, as does benchmarks/gpu_check.sh's
# copy): the folder beside this file. In the source tree (editable install, PYTHONPATH=repo):
# the repository's top-level kernels/, next to setup.py.
_INSTALLED = os.path.join(_HERE, "kernels")
__path__ = [_INSTALLED if os.path.isdir(_INSTALLED) else os.path.join(os.path.dirname(_HERE), "kernels")]

LAUNCH_COUNTS = collections.Counter()

# exported name -> the module (in this package) that defines it
_EXPORTS = {
    "shrink": "shrink_xa",
    "fused_forward": "fused_xw_sgb",
    "grad_shrink": "shrink_dyb",
    "fused_dx": "fused_dyw_dsa",
    "lora_weight_grads": "weight_grad",
    "matmul_tn": "weight_grad",
    "masked_addmm_": "dropout",
    "dropout_mask": "dropout",
    "chosen_configs": "tuning",
    "STATUS": "tuning",
    "ws_fits": "fused_launch",
    "config_lists": "compile_report",
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
