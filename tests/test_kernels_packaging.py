"""The top-level ``kernels/`` folder never hides an installed package named ``kernels`` (Hugging
Face's kernels hub, which bitsandbytes imports), while it still serves as ``litelora_fast.kernels``
from the source tree and from an installed copy (``litelora_fast/kernels.py`` is the package's
``__init__``; see its docstring)."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run with ``python -m``, as pytest and the benchmark scripts are: sys.path[0] is the working
# directory. The last line is where a kernel file of ours resolves (no triton import needed).
PROBE = ("import importlib.util, kernels, litelora_fast.kernels as k\n"
         "from kernels import get_kernel\n"
         "print(kernels.__file__); print(k.__file__); print(k.__path__[0])\n"
         "print(importlib.util.find_spec('litelora_fast.kernels.tiles').origin)\n")


@pytest.fixture
def hub_site(tmp_path):
    """A site directory holding a fake installed ``kernels`` package with ``get_kernel``."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("def get_kernel(name):\n    return name\n")
    (site / "probe_module.py").write_text(PROBE)
    return site


def _run(args, cwd, pythonpath):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    env.pop("PYTHONSAFEPATH", None)       # the repository root must be sys.path[0], as by default
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_repo_root_does_not_hide_an_installed_kernels(hub_site):
    # sys.path[0] is the repository root; the fake hub comes later on the path.
    hub, ours, folder, tiles = _run(["-m", "probe_module"], ROOT, [hub_site, ROOT])
    assert pathlib.Path(hub) == hub_site / "kernels" / "__init__.py"
    assert pathlib.Path(ours) == ROOT / "litelora_fast" / "kernels.py"
    assert pathlib.Path(folder) == ROOT / "kernels"
    assert pathlib.Path(tiles) == ROOT / "kernels" / "tiles.py"


def test_installed_layout_serves_the_kernels_from_its_own_folder(hub_site, tmp_path):
    # What a normal install copies (setup.py build_py), imported from its own root.
    build = tmp_path / "build"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(build)], cwd=ROOT,
                   check=True, capture_output=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert not (build / "litelora_fast" / "kernels" / "__init__.py").exists()
    assert not (build / "kernels").exists(), "the kernels must not install as a top-level package"
    hub, ours, folder, tiles = _run(["-m", "probe_module"], build, [hub_site, build])
    assert pathlib.Path(hub) == hub_site / "kernels" / "__init__.py"
    assert pathlib.Path(ours) == build / "litelora_fast" / "kernels.py"
    assert pathlib.Path(folder) == build / "litelora_fast" / "kernels"
    assert pathlib.Path(tiles) == build / "litelora_fast" / "kernels" / "tiles.py"


def test_no_init_in_the_top_level_folder():
    # An __init__.py there would make the folder a regular package named "kernels" at the root.
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_an_install_carries_every_module_and_the_public_names(tmp_path):
    """setup.py lists every subpackage: what ``build_py`` copies (what a wheel holds) has every
    module of the source tree, and the public API imports from that copy alone."""
    build = tmp_path / "build"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(build)], cwd=ROOT,
                   check=True, capture_output=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "litelora_fast").rglob("*.py")
              if "__pycache__" not in p.parts}
    built = {p.relative_to(build).as_posix() for p in (build / "litelora_fast").rglob("*.py")}
    assert source - built == set(), "modules setup.py leaves out of an install"
    code = ("import litelora_fast as llf, litelora_fast.op.ops, litelora_fast.module.layer, "
            "litelora_fast.models.inject\n"
            "names = [llf.gated_lora_linear, llf.reference.gated_lora_linear_ref, "
            "llf.GatedLoRALinear, llf.inject, llf.patch_peft, llf.route, llf.save_adapters]\n"
            "print(llf.__file__)")
    env = dict(os.environ, PYTHONPATH=str(build), TRITON_INTERPRET="0")
    env.pop("PYTHONSAFEPATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=build, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert pathlib.Path(out.stdout.strip()) == build / "litelora_fast" / "__init__.py"
