"""What machine a LiteLoRA result came from: CPU model, the CPU flags that pick float kernels,
torch's version, BLAS and kernel level, thread count. The demo and the table write it into their
JSON and print it above their tables.

Why it matters: the runs are deterministic on one machine, but a float kernel that sums in another
order (MKL picks its code path per CPU vendor and instruction set; torch's own kernels per
``torch.backends.cpu.get_cpu_capability()``) moves a result by an ulp, and 20 epochs of SGD turn
that ulp into a different trajectory. Two machines then print different numbers for one seed.
"""
from __future__ import annotations

import os
import platform
import re

import torch

# the flags that decide which float kernels MKL, oneDNN and torch's own code run
FLOAT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq",
               "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
               "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2")


def _cpuinfo() -> tuple:
    """(model name, set of flags) from /proc/cpuinfo; (platform.processor(), empty) elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = re.search(r"^(?:model name|Model|CPU part)\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    return (model.group(1).strip() if model else platform.machine(),
            set(flags.group(1).split()) if flags else set())


def _blas() -> str:
    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def machine_info(threads: int | None = None) -> dict:
    """The machine a run happens on (module docstring); ``threads``: the torch threads of each
    run (default: ``torch.get_num_threads()`` now)."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cpu_flags": [f for f in FLOAT_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": _blas(),
        "threads_per_run": torch.get_num_threads() if threads is None else threads,
        "gpu": torch.cuda.is_available(),
        "platform": platform.platform(),
    }


def describe(machine) -> str:
    """One line for a table's header (a list of machines, a merged table's: one line each);
    says so where a result predates the recording."""
    if isinstance(machine, list):
        return "\n".join(describe(m) for m in machine)
    if not machine:
        return "machine: not recorded"
    if "cpu" not in machine:        # JSON written before the CPU and its flags were recorded
        return (f"machine: {machine.get('cpu_count')}-core CPU, model and flags not recorded "
                f"({machine.get('platform')}), torch {machine.get('torch')}, "
                f"{machine.get('threads_per_run')} thread(s) per run")
    return (f"machine: {machine['cpu']} ({machine['cpu_count']} cores; float flags: "
            f"{' '.join(machine['cpu_flags']) or 'none'}), torch {machine['torch']} "
            f"(BLAS {machine['blas']}, kernels {machine['torch_cpu_capability']}), "
            f"{machine['threads_per_run']} thread(s) per run")
