"""Every environment variable the project reads, read here and only here (docs/settings.md).

Each variable has one reader below; the rest of the code calls the reader, never ``os.environ``.
Readers run when called (not at import), so a variable set between calls takes effect at the next
call, except where the docs say a value is fixed at import (``TRITON_INTERPRET`` for triton's
``@triton.jit``).

One spelling of true and false for every switch, the one triton 3.6.0 uses for
``TRITON_INTERPRET`` (its C++ ``getenv_bool``, measured on the installed wheel): case-insensitive
``1``/``true``/``on``/``yes``/``y`` are true; we read ``0``/``false``/``off``/``no``/``n`` as false.
Unset or empty means the default. Any other value raises ``SettingError`` naming the variable and
the allowed values: triton itself reads every non-true value of ``TRITON_INTERPRET`` as false, so
for the values we accept our reading is exactly triton's, and a value such as ``2`` or ``banana``
is refused instead of guessed at.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

TRUE = ("1", "true", "on", "yes", "y")
FALSE = ("0", "false", "off", "no", "n")

INTERPRET = "TRITON_INTERPRET"
AUTOTUNE = "LITELORA_AUTOTUNE"
CACHE_DIR = "LITELORA_CACHE_DIR"
KERNEL_VARIANT = "LITELORA_KERNEL_VARIANT"
BENCH_DEADLINE = "LITELORA_BENCH_DEADLINE"
BENCH_JSONL = "LITELORA_BENCH_JSONL"
NUMERICS_END = "LITELORA_NUMERICS_END"
SWEEP_DEADLINE = "LITELORA_SWEEP_DEADLINE"
GPU_CHECK_WARM = "LITELORA_GPU_CHECK_WARM"

# name -> (allowed values, default, meaning): the table of docs/settings.md (a test checks that
# the page lists every name here and that no module outside this one reads os.environ).
VARIABLES = {
    INTERPRET: ("a switch", "off",
                "run the Triton kernels in triton's interpreter; CPU tensors then take the kernels"),
    AUTOTUNE: ("a switch", "on",
               "time at run time (implementation per shape bucket, kernel configs); off: "
               "the kernels with their first fitting config, nothing timed"),
    CACHE_DIR: ("a directory", "~/.cache/litelora_fast",
                "where the autotune cache and the BBC stream's encoded articles are kept"),
    KERNEL_VARIANT: ("auto, pointer, tma, tma_persistent, tma_ws", "auto",
                     "force one variant of the fused GEMMs"),
    BENCH_DEADLINE: ("a Unix time in seconds", "none",
                     "benchmarks: skip the cases that would start after it"),
    BENCH_JSONL: ("a file path", "none", "benchmarks: also append each result as a JSON line"),
    NUMERICS_END: ("a Unix time in seconds", "none",
                   "GPU check: numerics runs that would end after it are skipped and listed"),
    SWEEP_DEADLINE: ("a Unix time in seconds", "none",
                     "GPU check: sweep rows that would end after it are skipped"),
    GPU_CHECK_WARM: ("a switch", "off",
                     "GPU check: the rerun on a machine whose Triton cache holds what the first "
                     "call compiled (warm limits and budgets)"),
}


class SettingError(ValueError):
    """An environment variable holds a value the project cannot read."""

    def __init__(self, name: str, value: str, allowed: str):
        meaning = VARIABLES[name][2] if name in VARIABLES else "a setting"
        super().__init__(f"environment variable {name}={value!r} is not understood ({name}: "
                         f"{meaning}); allowed: {allowed} (unset or empty: the default)")
        self.name, self.value = name, value


def _raw(name: str) -> Optional[str]:
    """The variable's value, ``None`` when unset or empty (both mean: the default)."""
    value = os.environ.get(name)
    return value if value else None


def switch(name: str, default: bool) -> bool:
    """A true/false variable in the project's one spelling (see the module docstring)."""
    value = _raw(name)
    if value is None:
        return default
    low = value.lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise SettingError(name, value, f"{'/'.join(TRUE)} for on, {'/'.join(FALSE)} for off "
                                    f"(any case)")


def choice(name: str, allowed: Sequence[str], default: str) -> str:
    """A variable that names one of ``allowed`` (exact spelling)."""
    value = _raw(name)
    if value is None:
        return default
    if value not in allowed:
        raise SettingError(name, value, ", ".join(allowed))
    return value


def interpret() -> bool:
    """``TRITON_INTERPRET``: whether triton interprets kernels (default off). Read as triton does;
    the op reads it per call to route CPU tensors, the kernels once at import."""
    return switch(INTERPRET, False)


def autotune() -> bool:
    """``LITELORA_AUTOTUNE``: whether anything is timed at run time (default on): on CUDA the
    implementation of each shape bucket (``autotune.py``) and the kernels' launch configs
    (``kernels/tuning.py``). Off: the kernels with the first config that fits, nothing timed."""
    return switch(AUTOTUNE, True)


def cache_dir() -> str:
    """``LITELORA_CACHE_DIR``, else ``~/.cache/litelora_fast``: the autotune cache's directory
    (and that of the BBC stream's encoded articles, ``litelora.cl.bbc``)."""
    return _raw(CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "litelora_fast")


def kernel_variant(allowed: Sequence[str]) -> str:
    """``LITELORA_KERNEL_VARIANT``: one of ``allowed`` (the kernels' variant names and
    ``"auto"``), default ``"auto"``."""
    return choice(KERNEL_VARIANT, allowed, "auto")


def _unix_time(name: str) -> Optional[float]:
    """A deadline variable: a Unix time in seconds, ``None`` when unset."""
    value = _raw(name)
    if value is None:
        return None
    try:
        deadline = float(value)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline):
        raise SettingError(name, value, "a finite number of seconds since the epoch")
    return deadline


def bench_deadline() -> Optional[float]:
    """``LITELORA_BENCH_DEADLINE``: a Unix time in seconds after which benchmark cases are
    skipped; ``None`` when unset."""
    return _unix_time(BENCH_DEADLINE)


def numerics_end() -> Optional[float]:
    """``LITELORA_NUMERICS_END``: the GPU check's numerics step ends by this Unix time."""
    return _unix_time(NUMERICS_END)


def sweep_deadline() -> Optional[float]:
    """``LITELORA_SWEEP_DEADLINE``: the GPU check's config sweep ends by this Unix time."""
    return _unix_time(SWEEP_DEADLINE)


def gpu_check_warm() -> bool:
    """``LITELORA_GPU_CHECK_WARM``: the GPU check reruns on a machine whose Triton cache is warm."""
    return switch(GPU_CHECK_WARM, False)


def bench_jsonl() -> Optional[str]:
    """``LITELORA_BENCH_JSONL``: a file each benchmark result is appended to; ``None``: none."""
    return _raw(BENCH_JSONL)
