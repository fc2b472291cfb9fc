"""Tiny decoder LLMs built from transformers configs (random weights, no download) for the
integration tests: Llama, Qwen2, GPT-2, and a bitsandbytes-quantized Llama (QLoRA base, CPU)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 64


def tiny(kind: str = "llama", dtype=torch.float32, seed: int = 0):
    """A 2-layer model of ``kind`` (``"llama"``, ``"qwen2"``, ``"gpt2"``) in ``dtype``, eval mode."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=32)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
        cfg = cfg_cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)
        cls = {"llama": transformers.LlamaForCausalLM,
               "qwen2": transformers.Qwen2ForCausalLM}[kind]
        model = cls(cfg)
    return model.to(dtype).eval()


def quantized_llama(path, bits: int = 4, compute_dtype=torch.float32):
    """The tiny Llama saved to ``path`` and loaded back through bitsandbytes (``bits`` 4: NF4
    ``Linear4bit``; 8: ``Linear8bitLt``), on the CPU, as a QLoRA user loads a base."""
    pytest.importorskip("bitsandbytes")
    tiny("llama").save_pretrained(path)
    if bits == 4:
        q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=compute_dtype)
    else:
        q = transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, device_map="cpu").eval()


def peft_twin(model, **config):
    """``(PEFT model of a deep copy of model, its inner model)`` with random non-zero adapters
    (``init_lora_weights=False``), for copying into the bank."""
    peft = pytest.importorskip("peft")
    twin = peft.get_peft_model(copy.deepcopy(model),
                               peft.LoraConfig(init_lora_weights=False, **config))
    return twin, twin.base_model.model


def copy_adapters_from_peft(model, inner, adapter: str = "default", k: int = 0):
    """Copy PEFT's adapter ``adapter`` into bank entry ``k`` of every gated layer of ``model``."""
    import litelora_fast as llf
    layers = llf.injected_layers(model)
    assert layers
    with torch.no_grad():
        for name, layer in layers.items():
            lora = inner.get_submodule(name)
            A, B = layer.adapter(k)
            A.copy_(lora.lora_A[adapter].weight)
            B.copy_(lora.lora_B[adapter].weight)
    return layers


def ids(batch: int = 2, seq: int = 7):
    return torch.randint(0, VOCAB, (batch, seq))
