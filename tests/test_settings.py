"""The settings module: every environment variable is read there, one spelling of true/false,
``TRITON_INTERPRET`` read exactly as triton reads it, and a clear error for a value it cannot
read (issue 18, item 3)."""
import ast
import pathlib
import subprocess
import sys

import pytest
import torch
from triton._C.libtriton import getenv_bool

import litelora_fast as llf
from litelora_fast.op import autotune, backends
from litelora_fast import settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPELLINGS = [(v, True) for v in settings.TRUE] + [(v, False) for v in settings.FALSE]


@pytest.mark.parametrize("value,expected", SPELLINGS + [(v.upper(), e) for v, e in SPELLINGS]
                         + [("True", True), ("Off", False)])
def test_interpret_reads_every_spelling_as_triton_does(monkeypatch, value, expected):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert settings.interpret() is expected
    # triton's own reader (the C++ getenv_bool behind triton.knobs.runtime.interpret)
    assert getenv_bool("TRITON_INTERPRET", False) is expected
    assert backends.interpreter_requested() is expected


@pytest.mark.parametrize("name,reader,default", [
    ("TRITON_INTERPRET", settings.interpret, False),
    ("LITELORA_AUTOTUNE", settings.autotune, True)])
def test_unset_and_empty_mean_the_default(monkeypatch, name, reader, default):
    monkeypatch.delenv(name, raising=False)
    assert reader() is default
    monkeypatch.setenv(name, "")
    assert reader() is default


@pytest.mark.parametrize("name,reader", [("TRITON_INTERPRET", settings.interpret),
                                         ("LITELORA_AUTOTUNE", settings.autotune)])
@pytest.mark.parametrize("value", ["2", "banana", " 1", "enabled"])
def test_a_value_it_cannot_read_names_the_variable_and_the_allowed_values(monkeypatch, name,
                                                                           reader, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingError) as err:
        reader()
    msg = str(err.value)
    assert name in msg and repr(value) in msg and "true" in msg and "off" in msg
    assert isinstance(err.value, ValueError)


def test_op_refuses_an_unreadable_interpret_value_instead_of_guessing(monkeypatch):
    # Before: "2" sent CPU tensors to the kernels (compiled mode: triton's "0 active drivers").
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    A, B, g = torch.randn(2, 8), torch.randn(4, 2), torch.ones(1)
    monkeypatch.setenv("TRITON_INTERPRET", "2")
    with pytest.raises(settings.SettingError, match="TRITON_INTERPRET='2'"):
        llf.gated_lora_linear(x, w, None, A, B, g)


def test_autotune_off_in_every_spelling(monkeypatch):
    for value in ("0", "false", "FALSE", "off", "no"):
        monkeypatch.setenv("LITELORA_AUTOTUNE", value)
        assert autotune.enabled() is False, value
    monkeypatch.setenv("LITELORA_AUTOTUNE", "")
    assert autotune.enabled() is True      # empty is unset: the default, in both readers


def test_cache_dir_and_variant(monkeypatch, tmp_path):
    monkeypatch.setenv("LITELORA_CACHE_DIR", str(tmp_path))
    assert autotune.cache_dir() == str(tmp_path)
    monkeypatch.setenv("LITELORA_CACHE_DIR", "")
    assert autotune.cache_dir().endswith("litelora_fast")
    from litelora_fast.kernels import tuning
    monkeypatch.setenv("LITELORA_KERNEL_VARIANT", "")
    assert tuning.requested_variant() == "auto"
    monkeypatch.setenv("LITELORA_KERNEL_VARIANT", "TMA")
    with pytest.raises(settings.SettingError, match="LITELORA_KERNEL_VARIANT.*pointer, tma"):
        tuning.requested_variant()


def test_bench_settings(monkeypatch):
    monkeypatch.delenv("LITELORA_BENCH_DEADLINE", raising=False)
    assert settings.bench_deadline() is None
    monkeypatch.setenv("LITELORA_BENCH_DEADLINE", "1700000000.5")
    assert settings.bench_deadline() == 1700000000.5
    for bad in ("soon", "nan", "inf"):
        monkeypatch.setenv("LITELORA_BENCH_DEADLINE", bad)
        with pytest.raises(settings.SettingError, match="LITELORA_BENCH_DEADLINE"):
            settings.bench_deadline()
    monkeypatch.setenv("LITELORA_BENCH_JSONL", "/tmp/x.jsonl")
    assert settings.bench_jsonl() == "/tmp/x.jsonl"


@pytest.mark.parametrize("value,expected", [("true", True), ("Y", True), ("off", False)])
def test_kernels_read_interpret_at_import_as_triton_does(value, expected, tmp_path):
    # Before: TRITON_INTERPRET=true made triton interpret while kernels/tuning.py thought not.
    code = ("import triton; from litelora_fast.kernels import tuning; "
            "print(tuning.INTERPRET, triton.knobs.runtime.interpret)")
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": value, "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(expected), str(expected)]


def _environ_reads(path: pathlib.Path) -> list:
    """Lines of ``path`` that read the environment: ``os.environ.get``, ``os.getenv``,
    ``os.environ[...]`` loads (writes, ``setdefault`` and copies for a subprocess are fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "getenv" or (f.attr == "get" and ast.unparse(f.value) == "os.environ"):
                found.append(node.lineno)
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and ast.unparse(node.value) == "os.environ"):
            found.append(node.lineno)
    return found


def test_no_module_reads_the_environment_but_settings():
    files = [f for d in ("litelora_fast", "kernels", "benchmarks", "examples")
             for f in (ROOT / d).rglob("*.py")]
    reads = {str(f.relative_to(ROOT)): lines for f in files
             if f.name != "settings.py" and (lines := _environ_reads(f))}
    assert reads == {}


def test_docs_list_every_variable():
    page = (ROOT / "docs" / "settings.md").read_text()
    for name in settings.VARIABLES:
        assert f"`{name}`" in page, name
