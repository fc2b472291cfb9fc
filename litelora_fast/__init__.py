"""litelora-fast: a linear layer with a gated bank of LoRA adapters, fused in Triton.

Public API (contract in docs/MATH.md)::

    import litelora_fast as llf
    y = llf.gated_lora_linear(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    y = llf.reference.gated_lora_linear_ref(...)          # the unfused oracle
    layer = llf.GatedLoRALinear(in_features, out_features, rank=8, alpha=16)
    llf.patch_peft()            # PEFT keeps its modules; its LoRA layers compute through our op
    llf.inject(model, target_modules=["q_proj", "v_proj"], rank=8, alpha=16)  # rest frozen
    llf.inject(model, peft.LoraConfig(r=8, target_modules="all-linear"))   # PEFT's config
    llf.injected_layers(model); llf.print_trainable_parameters(model)
    llf.save_adapters(model, "dir"); llf.load_adapters(model, "dir")  # banks only, safetensors
    llf.set_active_adapters(model, ["task0"]); llf.merge_and_unload(model)
    learner = llf.ContinualLearner(model, method="litelora")   # recruit-or-reuse, per task:
    record = learner.learn_task(X, Y, loss_fn, head=head)      # record.recruited: kept or reused
    llf.redundancy, llf.cl                     # subspace overlap metrics; CPU task streams
    # llf.ContinualLearner, llf.litelora, llf.cl load the method's subpackage on first use
"""
from .op import reference
from .op.ops import gated_lora_linear
from .module.layer import GatedLoRALinear
from .module.layer_on_module import GatedLoRAOnModule    # (also registers it for from_linear)
from .models.inject import extract_base, inject, injected_layers
from .models.peft_bridge import from_peft, to_peft
from .models.peft_patch import patch_peft, patch_peft_model, patched_layers, unpatch_peft
from .models.model_utils import print_trainable_parameters, set_active_adapters, trainable_parameters
from .models.adapter_files import load_adapters, save_adapters
from .models.merge import merge_and_unload
from .models.routing import accept_adapter_ids, route
from .models.model_adapters import (add_adapter, delete_adapter, disable_adapters, merge_adapters,
                             unmerge_adapters)
from .models.hf_checkpoints import from_pretrained, save_pretrained, trainer_callbacks
from . import redundancy

# The method (LiteLoRA: learner, streams, table, demo) lives in the subpackage
# ``litelora_fast.litelora``, loaded only when one of these names is first used.
_METHOD = {"ContinualLearner": "ContinualLearner", "litelora": None, "cl": "cl"}


def __getattr__(name):
    if name in _METHOD:
        import importlib
        method = importlib.import_module(".litelora", __name__)
        return method if _METHOD[name] is None else getattr(method, _METHOD[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["gated_lora_linear", "reference", "GatedLoRALinear", "GatedLoRAOnModule",
           "inject", "extract_base",
           "injected_layers", "from_peft", "to_peft", "patch_peft", "unpatch_peft",
           "patch_peft_model", "patched_layers", "set_active_adapters",
           "trainable_parameters", "print_trainable_parameters", "save_adapters",
           "load_adapters", "merge_and_unload", "route", "accept_adapter_ids",
           "disable_adapters", "add_adapter", "delete_adapter", "merge_adapters",
           "unmerge_adapters", "trainer_callbacks", "save_pretrained", "from_pretrained",
           "ContinualLearner", "litelora", "redundancy", "cl"]
__version__ = "0.1.0"
