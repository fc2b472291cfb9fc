"""GPU numerics of the public op: ``gated_lora_linear`` on CUDA (the Triton kernels) against the
float64 reference on the GPU, in bf16, fp16 and fp32, output and every gradient.

Reuses the named edge cases of ``tests/op_cases.py`` (one row, K = 1, ragged ranks, rank-0
adapters, zero gates, per-row gates, 3-D and strided inputs) and adds block-multiple and
odd GPU-sized shapes; each case runs with trainable gates and with frozen gates (the zero-gate
skipping path), on two fresh seeds. Prints one line per draw and a summary; exits 1 on any error
over its bound or when a Triton kernel never launched. Run by ``benchmarks/gpu_check.sh``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import ERROR_BOUNDS  # noqa: E402
from op_cases import CASES, Case, call, leaves, make_inputs, oracle, rel_err  # noqa: E402

import litelora_fast as llf  # noqa: E402
from litelora_fast.kernels import LAUNCH_COUNTS  # noqa: E402

GPU_CASES = {
    "N2048-1024x1536-K8-r16": Case(lead=(2048,), d_in=1024, d_out=1536, ranks=[16] * 8),
    "N1000-777x1100-K5-ragged": Case(lead=(1000,), d_in=777, d_out=1100, ranks=[16, 3, 64, 0, 9],
                                     zero_gates=(1,)),
    "3d-perrow-N4x257-520x300-K4": Case(lead=(4, 257), d_in=520, d_out=300, ranks=[8] * 4,
                                        per_row=True, zero_gates=(2,)),
}
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
KERNELS = ("shrink", "fused_forward", "grad_shrink", "fused_dx", "matmul_tn")


def variants():
    for name, case in {**CASES, **GPU_CASES}.items():
        yield f"{name}/gates-train", case
        frozen = dict(case.trainable, gates=False)
        yield f"{name}/gates-frozen", dataclasses.replace(case, trainable=frozen)


def check(name: str, case: Case, dtype, seed: int, device: str = "cuda") -> tuple:
    torch.manual_seed(seed)
    t = make_inputs(case, dtype=dtype, device=device)
    y = call(llf.gated_lora_linear, case, t)
    dy = torch.randn_like(y)
    y_ref, g_ref = oracle(case, t, dy)
    errs = {"y": rel_err(y, y_ref)}
    if leaves(t):
        y.backward(dy)
        for arg, leaf in leaves(t).items():
            errs[f"d{arg}"] = (float("inf") if leaf.grad is None
                               else rel_err(leaf.grad, g_ref[arg]))
    worst = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
    return worst, errs[worst], errs


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_numerics: no CUDA device, nothing checked")
        return 2
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    start, failures, rows = time.time(), [], 0
    base_seed = torch.seed() % 2**31
    for dtype in DTYPES:
        bound = ERROR_BOUNDS[("cuda", str(dtype).split(".")[1])]
        for name, case in variants():
            for i in range(2):
                seed = base_seed + 1000 * rows + i
                try:
                    which, err, errs = check(name, case, dtype, seed)
                    ok = err <= bound
                    msg = f"worst {which} {err:.2e}"
                except Exception as e:   # a crash is a failure of this draw, not of the run
                    ok, msg = False, f"raised {type(e).__name__}: {e}"
                print(f"{'ok  ' if ok else 'FAIL'} {str(dtype):15s} {name:45s} seed {seed:<11d} "
                      f"{msg} (bound {bound:g})", flush=True)
                if not ok:
                    failures.append((dtype, name, seed, msg))
            rows += 1
    missing = [k for k in KERNELS if LAUNCH_COUNTS[k] == 0]
    print(f"\nkernel launches: {dict(LAUNCH_COUNTS)}")
    if missing:
        print(f"FAIL: kernels never launched (the op did not run Triton on CUDA?): {missing}")
    print(f"{len(failures)} failed draws of {2 * rows}; {time.time() - start:.1f} s")
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
