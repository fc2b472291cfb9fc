"""The op: ``gated_lora_linear`` and what it stands on.

Argument checks (``validation``), the active set and packed columns (``plan``), the math written
once over any backend (``op_math``), the backends (``backends``: PyTorch, the Triton kernels, the
hybrid), the per-bucket choice (``autotune``), LoRA dropout and its recompute seeds
(``lora_dropout``, ``recompute_seeds``, ``checkpoint_regions``), the routed op for multi-tenant
batches (``routed_op``), and the unfused reference beside them (``reference``). Imports reach down
only: the kernels' package and ``settings``.
"""
