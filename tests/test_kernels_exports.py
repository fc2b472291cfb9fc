"""The launchers are exported from the package ``litelora_fast.kernels`` itself, lazily: importing
the package imports neither torch nor triton, and each name resolves to its launcher."""
import pathlib
import subprocess
import sys

import pytest

from litelora_fast import kernels

LAUNCHERS = ("shrink", "fused_forward", "grad_shrink", "fused_dx", "lora_weight_grads",
             "matmul_tn", "masked_addmm_", "dropout_mask")


def test_package_import_loads_neither_torch_nor_triton():
    init = pathlib.Path(kernels.__file__)
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('probe_kernels', {str(init)!r},\n"
        f"    submodule_search_locations=[{str(init.parent)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['probe_kernels'] = m\n"
        "spec.loader.exec_module(m)\n"
        "assert hasattr(m, 'LAUNCH_COUNTS')\n"
        "print(sorted(k for k in ('torch', 'triton') if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", LAUNCHERS)
def test_each_launcher_is_exported(name):
    fn = getattr(kernels, name)
    assert callable(fn) and fn.__name__ == name
    assert name in dir(kernels) and name in kernels.__all__


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_launcher"):
        kernels.no_such_launcher   # noqa: B018
