"""The module: ``GatedLoRALinear`` and what only it uses.

The layer (``layer``), the kinds of base it wraps (``base_layers``), the layer over a base the
kernels cannot read (``layer_on_module``, with ``bnb_cpu_packing`` for bitsandbytes' CPU layout),
the bank packed per call (``packed_bank``), its state-dict metadata (``layer_meta``), optimizer
state that follows resized gates (``resized_state``), and the routing state a forward reads
(``routing_state``). Imports reach down only: ``litelora_fast.op``, the kernels and ``settings``.
"""
