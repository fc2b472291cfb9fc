"""Triton kernels of litelora-fast, installed as ``litelora_fast.kernels``.

Launchers (the math in docs/MATH.md, the contracts in docs/DESIGN.md):

- ``forward``: the shrink kernel (``S = x @ lora_A^T`` and the gated ``SG``) and the fused
  base-plus-adapter GEMM ``y = x @ weight^T + SG @ lora_B^T + bias`` (pointer kernel), with the
  launchers ``shrink`` and ``fused_forward``.
- ``backward``: grad-shrink (``dS`` and the gate-gradient partials ``P``) and the fused
  ``dx = dy @ weight + dS @ lora_A`` (pointer kernel), with ``grad_shrink`` and ``fused_dx``;
  re-exports ``matmul_tn`` and ``lora_weight_grads``.
- ``fused_tma``: the tensor-descriptor (TMA) kernel behind both fused GEMMs: variants "tma",
  "tma_persistent" and "tma_ws" (warp-specialized), chosen per call (``tuning.choose_variant``).
- ``weight_grad``: the deterministic ``a^T @ b`` GEMM (dA, dB, dW) and ``lora_weight_grads``
  (dA and dB from one launch), with the fixed-order split-N partial sum.

- ``dropout``: LoRA dropout's keep-mask materialised (``dropout_mask``) and the masked adapter
  term of ``dx`` (``masked_addmm_``); the kernels draw the mask in-kernel (``tiles.keep_scale``).

Shared pieces:

- ``tiles``: device helpers inlined into the kernels (grouped tile order, the masked K-loop,
  the Philox dropout keep factor).
- ``tuning``: launch helpers (autotune switch, shared-memory fit, TF32 choice, variant choice,
  descriptor legality, padded buffers).
- ``aot_specs``: the ahead-of-time compile specs of every shipped config, generated from the
  config lists, and ``config_lists()``, the registry of launch configs.
- ``compile_report``: ``compile_report(arch="sm_90")`` compiles those specs without a GPU and
  reads registers, spills, shared memory, HGMMA, TMA and warp specialization from the SASS
  (``python -m litelora_fast inspect``).

``LAUNCH_COUNTS`` counts kernel launches by kernel name (and ``"<kernel>/<variant>"`` for the fused
GEMMs); every launcher increments it, so tests can prove that the interpreter really ran our
kernels and which variant it took. Importing this package imports neither torch nor triton.
"""
import collections

LAUNCH_COUNTS = collections.Counter()
