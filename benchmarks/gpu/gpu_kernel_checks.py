"""The kernels' own GPU checks, run by the numerics step of ``gpu_check.sh`` (``gpu_numerics.py``
runs them where ``gpu_plan.numerics_plan`` puts them):

- ``kernel_tests``: the 8 ``test_bf16_on_gpu`` tests of ``tests/test_kernels_forward.py`` and
  ``tests/test_kernels_backward.py`` (each kernel in bf16 on the pointer path and each
  descriptor variant, ``lora_weight_grads``/``matmul_tn`` with the split-N reduction,
  ``split_n=3``), called as plain functions: pytest would load ``tests/conftest.py``, which
  forces the interpreter, so those tests can never run there under pytest;
- ``non_first_configs``: a non-first launch config of each fused GEMM (``config=`` of the launchers; the numerics runs
  use the first config only, ``LITELORA_AUTOTUNE=0``) against float64, on a descriptor-legal
  shape with a ragged adapter width.

``run(check, seed, bound)`` runs one of ``CHECKS`` and returns ``[(name, ok, message)]``, ``ok``
``False`` with the reason where a test of ``KERNEL_TESTS`` cannot be imported (renamed) or a
sweep list is too short: a failure.
"""
from __future__ import annotations

import importlib

import torch

import sweep_configs

KERNEL_TESTS = (("test_kernels_forward", "test_bf16_on_gpu"),
                ("test_kernels_backward", "test_bf16_on_gpu"))
VARIANTS = ("pointer", "tma", "tma_persistent", "tma_ws")
CONFIG_INDEX = 1        # the non-first config
SHAPE = (1000, 1024, 1536, 44)   # N, D_in, D_out, R (ragged, not a multiple of 16)


def kernel_tests(seed: int) -> list:
    out = []
    for module_name, fn_name in KERNEL_TESTS:
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as e:
            out.append((f"{module_name}.{fn_name}", False, f"cannot import: {e}"))
            continue
        for variant in VARIANTS:
            name = f"{module_name}.{fn_name}[{variant}]"
            torch.manual_seed(seed)
            try:
                fn(seed, variant)
                out.append((name, True, "passed"))
            except Exception as e:   # an assertion or a launch failure
                out.append((name, False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return out


def _rel(out, ref) -> float:
    out = out.double()
    return float((out - ref).norm() / ref.norm())


def non_first_configs(seed: int, bound: float) -> list:
    """Each fused GEMM launched with config number ``CONFIG_INDEX`` of its sweep list, against
    float64."""
    N, Di, Do, R = SHAPE
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = torch.bfloat16

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(bf)

    x, w, bias = randn(N, Di), randn(Do, Di, scale=Di ** -0.5), randn(Do)
    SG, B = randn(N, R), randn(Do, R, scale=R ** -0.5)
    dy, dS, A = randn(N, Do), randn(N, R), randn(R, Di, scale=R ** -0.5)
    ref = {"fused_forward": x.double() @ w.double().t() + SG.double() @ B.double().t()
           + bias.double(),
           "fused_dx": dy.double() @ w.double() + dS.double() @ A.double()}
    args = {"fused_forward": (x, w, bias, SG, B), "fused_dx": (dy, w, dS, A)}
    out = []
    for kernel in ("fused_forward", "fused_dx"):
        configs, source = sweep_configs.sweep_list(kernel)
        if len(configs) <= CONFIG_INDEX:
            out.append((f"{kernel} config #{CONFIG_INDEX}", False,
                        f"only {len(configs)} configs in {source}"))
            continue
        name, config, variant = configs[CONFIG_INDEX]
        try:
            y = sweep_configs.launch(kernel, args[kernel], config, variant)
            err = _rel(y, ref[kernel])
            out.append((f"{kernel} [{name}] ({source})", err <= bound,
                        f"rel err {err:.2e} (bound {bound:g})"))
        except Exception as e:
            out.append((f"{kernel} [{name}] ({source})", False,
                        f"raised {type(e).__name__}: {str(e).splitlines()[0][:300]}"))
    return out


CHECKS = ("non_first_configs", "kernel_tests")


def run(check: str, seed: int, bound: float) -> list:
    if check == "kernel_tests":
        return kernel_tests(seed)
    if check == "non_first_configs":
        return non_first_configs(seed, bound)
    raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
