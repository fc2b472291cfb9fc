"""The setup probe of ``gpu_check.sh``: one Python process (each costs a torch import) that, run
from the repository root with the package copy on ``PYTHONPATH`` and ``PYTHONSAFEPATH=1`` as every
step runs,

- appends the versions (python, torch, CUDA, triton, numpy, peft, transformers) and the GPU to
  the summary file;
- prints, for the script's ``eval``: the steps and limits of the call (``gpu_plan.shell_limits``:
  cold, or the rerun where ``LITELORA_GPU_CHECK_WARM`` is on),
  ``PKG_FILE`` and ``KERNELS_FILE`` (where ``litelora_fast`` and the kernel files come from:
  ``litelora_fast.kernels.fused_xw_sgb``, one file of the ``kernels/`` folder that
  ``litelora_fast/kernels.py`` puts on the package's ``__path__``) and ``HAVE_GPU``.

    python benchmarks/gpu/gpu_setup.py SUMMARY

Exits non-zero (the script then stops with this process's message) if the plan cannot be read.
"""
from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv=None) -> int:
    summary = (sys.argv[1:] if argv is None else argv)[0]
    import gpu_plan   # imports the package (tests/op_cases): the copy on the path
    from litelora_fast import settings
    limits = gpu_plan.shell_limits(settings.gpu_check_warm())

    import litelora_fast
    from litelora_fast.kernels import fused_xw_sgb
    import numpy
    import torch
    import triton

    have_gpu = int(torch.cuda.is_available())
    with open(summary, "a") as f:
        f.write(f"python {sys.version.split()[0]} torch {torch.__version__} cuda "
                f"{torch.version.cuda} triton {triton.__version__} numpy {numpy.__version__} "
                f"peft {_version('peft')} transformers {_version('transformers')}\n")
        if have_gpu:
            from litelora_fast.tools import roofline
            peak = roofline.device_ceilings()
            f.write(f"gpu {torch.cuda.get_device_name()}, "
                    f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs; "
                    f"roofline ceilings {peak.describe()}\n")
    print(limits)
    print(f"PKG_FILE={shlex.quote(litelora_fast.__file__)}")
    print(f"KERNELS_FILE={shlex.quote(fused_xw_sgb.__file__)}")
    print(f"HAVE_GPU={have_gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
