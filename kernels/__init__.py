"""Triton kernels of litelora-fast, installed as ``litelora_fast.kernels``.

- ``forward``: the shrink kernel (``S = x @ lora_A^T`` and the gated ``SG``) and the fused
  base-plus-adapter GEMM, with their launchers ``shrink`` and ``fused_forward``.
- ``backward``: grad-shrink, the fused ``dx`` GEMM and the ``a^T @ b`` weight-gradient GEMM.
- ``tuning``: launch helpers shared by both (autotune switch, shared-memory fit, dot precision).
- ``inspect``: ``compile_report(arch="sm_90")``, an ahead-of-time compile of every shipped config.

``LAUNCH_COUNTS`` counts kernel launches by kernel name; every launcher increments it, so tests can
prove that the interpreter really ran our kernels. Importing this package imports neither torch
nor triton.
"""
import collections

LAUNCH_COUNTS = collections.Counter()
