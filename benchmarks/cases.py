"""Benchmark cases and their inputs.

The GPU grids are ``litelora_fast.tools.bench_cases.gpu_cases``, so the roofline
model and the benchmarks always talk about the same cases. The CPU cases are small fp32 shapes of
the same layer, run on every machine so that ``pytest benchmarks/`` always gives numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from litelora_fast.tools.bench_cases import Case, gpu_cases  # noqa: F401  (re-exported)

CPU_CASES = [
    Case(256, 256, 512, 1, 8, dtype="float32", device="cpu"),
    Case(256, 256, 512, 8, 8, dtype="float32", device="cpu"),
    Case(256, 256, 512, 8, 8, train_gates=True, dtype="float32", device="cpu"),
    Case(256, 256, 512, 8, 8, sparsity=0.5, dtype="float32", device="cpu"),
    Case(256, 256, 512, 4, 8, dtype="float32", device="cpu", dropout=0.1),
]


@dataclass
class Inputs:
    """One case's tensors. ``x``, ``lora_A``, ``lora_B`` (and ``gates`` when they train) are
    leaves that require grad; the base ``weight`` is frozen; there is no bias."""

    x: torch.Tensor
    weight: torch.Tensor
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    gates: torch.Tensor
    scaling: list
    dy: torch.Tensor

    def args(self) -> tuple:
        """Positional arguments of ``gated_lora_linear`` and its peers."""
        return (self.x, self.weight, None, self.lora_A, self.lora_B, self.gates, None, self.scaling)

    def grad_inputs(self) -> list:
        return [t for t in (self.x, self.lora_A, self.lora_B, self.gates) if t.requires_grad]

    def upcast(self, dtype=torch.float64) -> "Inputs":
        """Detached copies in ``dtype`` with the same requires_grad flags (the oracle's inputs)."""
        def up(t):
            return t.detach().to(dtype).requires_grad_(t.requires_grad)
        return Inputs(up(self.x), up(self.weight), up(self.lora_A), up(self.lora_B),
                      up(self.gates), list(self.scaling), self.dy.detach().to(dtype))


def make_inputs(case: Case, seed: int) -> Inputs:
    """Random inputs scaled so that the adapter part of ``y`` is as large as the base part (an
    error in the LoRA path cannot hide under the base GEMM). Every other gate is exactly 0 when
    ``case.sparsity`` asks for zero gates, so the active columns are not contiguous."""
    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=case.device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=case.device) * scale).to(dtype)

    R = case.rank
    x = randn(case.n, case.d_in).requires_grad_()
    weight = randn(case.d_out, case.d_in, scale=case.d_in ** -0.5)
    lora_A = randn(R, case.d_in, scale=case.d_in ** -0.5).requires_grad_()
    lora_B = randn(case.d_out, R, scale=R ** -0.5).requires_grad_()
    gates = torch.rand(case.k, generator=g, device=case.device) + 0.5
    gates[1::2][:case.zero_gates] = 0.0
    gates = gates.to(dtype).requires_grad_(case.train_gates)
    scaling = (torch.rand(case.k, generator=torch.Generator().manual_seed(seed)) + 0.5).tolist()
    dy = randn(case.n, case.d_out)
    return Inputs(x, weight, lora_A, lora_B, gates, scaling, dy)
