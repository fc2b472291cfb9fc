"""Tiny decoder LLMs for the model-level tests: built from transformers configs (random weights,
no download), with a bank of named tenants whose ``B`` is random (so every adapter changes the
output)."""
import torch

import litelora_fast as llf

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama(vocab=64, hidden=32, layers=2, dtype=torch.float64):
    import transformers
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                                      intermediate_size=2 * hidden, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).to(dtype)


def with_tenants(model, names=("a", "b", "c", "d"), targets=LLAMA_TARGETS, rank=4, alpha=8,
                 dropout=0.0):
    """``model`` injected on ``targets`` with one adapter per name, ``B ~ N(0, 0.1)``."""
    llf.inject(model, targets, rank=rank, alpha=alpha, dropout=dropout)
    for layer in llf.injected_layers(model).values():
        for name in names:
            k = layer.add_adapter(name=name)
            with torch.no_grad():
                layer.lora_B[k].normal_(0, 0.1)
    return model


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
