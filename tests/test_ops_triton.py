"""The public op through the Triton kernels, run by the interpreter on CPU tensors.

This is the end-to-end check of dispatch + kernels + autograd: outputs and every gradient against
the float64 reference, and a launch counter proving the kernels (not the fallback) ran.
Under TRITON_INTERPRET=1, tl.dot on bfloat16 operands is wrong (triton issue 11584), so bf16 is
left to the GPU check (benchmarks/gpu_check.sh).
"""
import dataclasses

import pytest
import torch

import litelora_fast as llf
from litelora_fast import kernels
from litelora_fast.kernels import fused_dyw_dsa, fused_xw_sgb  # noqa: F401  (a broken kernel file fails here)
from op_cases import ARG_NAMES, CASES, call, case_params, check_against_oracle, make_inputs
TRAINABLE = {
    "all": set(ARG_NAMES),
    "frozen-base-and-gates": {"x", "lora_A", "lora_B"},
    "gates-only": {"gates"},
}
SELECTED = ("N1-K1", "N37-K3-ragged", "3d-perrow-K4", "zero-gates", "zero-gates-perrow-nobias",
            "strided-x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("trainable", list(TRAINABLE), ids=list(TRAINABLE))
@pytest.mark.parametrize("case", case_params({k: CASES[k] for k in SELECTED}))
def test_kernels_match_float64(case, trainable, dtype, interpreter, seed):
    case = dataclasses.replace(case, trainable={n: n in TRAINABLE[trainable] for n in ARG_NAMES})
    t = make_inputs(case, dtype)
    start = kernels.LAUNCH_COUNTS.copy()
    y = call(llf.gated_lora_linear, case, t)
    forward = kernels.LAUNCH_COUNTS - start
    assert y.dtype == dtype
    check_against_oracle(case, t, y, dtype)
    backward = kernels.LAUNCH_COUNTS - start - forward
    # The kernels that must have produced each result (not merely "some kernel ran"): the fused
    # GEMM wrote y, the shrink S (every selected case keeps an active adapter), the fused dx GEMM
    # dx, the weight-gradient kernels dA/dB and dW.
    assert forward["fused_forward"] == 1 and forward["shrink"] == 1, dict(forward)
    if case.trainable["x"]:
        assert backward["fused_dx"] == 1, dict(backward)
    if case.trainable["lora_A"] or case.trainable["lora_B"]:
        assert backward["lora_weight_grads"] >= 1, dict(backward)
    if case.trainable["weight"]:
        assert backward["matmul_tn"] >= 1, dict(backward)


def test_cpu_tensors_take_the_fast_path_without_the_interpreter(fast_path, seed):
    case = CASES["N37-K3-ragged"]
    t = make_inputs(case)
    before = sum(kernels.LAUNCH_COUNTS.values())
    call(llf.gated_lora_linear, case, t).sum().backward()
    assert sum(kernels.LAUNCH_COUNTS.values()) == before
