"""litelora-fast: a linear layer with a gated bank of LoRA adapters, fused in Triton.

Public API (SPEC section 2)::

    import litelora_fast as llf
    y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    y = llf.reference.gated_lora_linear_ref(...)          # the unfused oracle
"""
from . import reference
from .ops import gated_lora_linear
from .layer import GatedLoRALinear
from .inject import extract_base, inject
from .peft_bridge import from_peft, to_peft

__all__ = ["gated_lora_linear", "reference", "GatedLoRALinear", "inject", "extract_base",
           "from_peft", "to_peft"]
__version__ = "0.1.0"
