"""litelora-fast: a linear layer with a gated bank of LoRA adapters, fused in Triton.

Public API (SPEC section 2)::

    import litelora_fast as llf
    y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    y = llf.reference.gated_lora_linear_ref(...)          # the unfused oracle
    layer = llf.GatedLoRALinear(in_features, out_features, rank=8, alpha=16)
    llf.inject(model, target_modules=["q_proj", "v_proj"], rank=8, alpha=16)
    learner = llf.ContinualLearner(model, method="litelora")   # recruit-or-reuse, per task:
    record = learner.learn_task(X, Y, loss_fn, head=head)      # record.recruited: kept or reused
    llf.redundancy, llf.cl                     # subspace overlap metrics; CPU task streams
"""
from . import reference
from .ops import gated_lora_linear
from .layer import GatedLoRALinear
from .inject import extract_base, inject
from .peft_bridge import from_peft, to_peft
from .litelora import ContinualLearner
from . import cl, litelora, redundancy

__all__ = ["gated_lora_linear", "reference", "GatedLoRALinear", "inject", "extract_base",
           "from_peft", "to_peft", "ContinualLearner", "litelora", "redundancy", "cl"]
__version__ = "0.1.0"
