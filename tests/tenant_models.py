"""Tiny Llama models (``tiny_llms.tiny``) with a bank of named tenants whose ``B`` is random, so
that every adapter changes the output: the model-level tests of routing and adapter management."""
import torch

import litelora_fast as llf
from tiny_llms import tiny

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama_with_tenants(names=("a", "b", "c", "d"), dtype=torch.float64, rank=4, alpha=8,
                       seed=0):
    """A 2-layer Llama in ``dtype`` with one adapter per name on every projection."""
    model = tiny("llama", dtype=dtype, seed=seed)
    llf.inject(model, LLAMA_TARGETS, rank=rank, alpha=alpha, num_adapters=0)
    for layer in llf.injected_layers(model).values():
        for name in names:
            k = layer.add_adapter(name=name)
            with torch.no_grad():
                layer.lora_B[k].normal_(0, 0.1)
    return model


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
