"""Tiny decoder LLMs built from transformers configs (random weights, no download) for the
integration tests: Llama, Qwen2, GPT-2, and a bitsandbytes-quantized Llama (QLoRA base, CPU)."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB = 64


# bitsandbytes' packed 4-bit CPU kernel (taken on CPUs with AVX512-BF16, in eval mode, when ``x``
# needs no grad) takes output widths divisible by 32 and input widths that are whole quantization
# blocks (64): the quantized Llama is this wide, every projection's D_in in {64, 128} and D_out in
# {32, 64, 128}.
QUANTIZABLE = dict(hidden=64, intermediate=128)


def tiny(kind: str = "llama", dtype=torch.float32, seed: int = 0, hidden: int = 32,
         intermediate: int = 48):
    """A 2-layer model of ``kind`` (``"llama"``, ``"qwen2"``, ``"gpt2"``) in ``dtype``, eval mode;
    ``hidden``/``intermediate`` size the Llama and Qwen2 blocks."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=32)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind]
        cfg = cfg_cls(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=32)
        cls = {"llama": transformers.LlamaForCausalLM,
               "qwen2": transformers.Qwen2ForCausalLM}[kind]
        model = cls(cfg)
    return model.to(dtype).eval()


def quantized_llama(path, bits: int = 4, compute_dtype=torch.float32, packed: bool = False):
    """A tiny Llama (``QUANTIZABLE`` widths) saved to ``path`` and loaded back through
    bitsandbytes (``bits`` 4: NF4 ``Linear4bit``; 8: ``Linear8bitLt``), on the CPU, as a QLoRA user
    loads a base. ``packed`` (4-bit): whether eval-mode forwards may take bitsandbytes' packed
    AVX512-BF16 kernel (skips where this CPU lacks it); else every forward takes the portable
    dequantize-and-matmul path, as on a CPU without those instructions."""
    pytest.importorskip("bitsandbytes")
    tiny("llama", **QUANTIZABLE).save_pretrained(path)
    if bits == 4:
        q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=compute_dtype)
    else:
        q = transformers.BitsAndBytesConfig(load_in_8bit=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, quantization_config=q, device_map="cpu").eval()
    if bits == 4:
        select_4bit_cpu_path(model, packed)
    return model


def select_4bit_cpu_path(model, packed: bool) -> None:
    """Set every ``Linear4bit``'s ``support_avx512bf16_for_cpu`` flag (bitsandbytes sets it from the
    CPU): ``packed=True`` skips the test where the CPU has no AVX512-BF16."""
    from bitsandbytes.functional import has_avx512bf16
    if packed and not has_avx512bf16():
        pytest.skip("bitsandbytes' packed 4-bit CPU kernel needs AVX512-BF16; this CPU lacks it")
    found = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert found, "no Linear4bit layer to select a path for"
    for m in found:
        m.support_avx512bf16_for_cpu = packed


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


def assert_4bit_cpu_path(model, packed: bool) -> None:
    """After an eval-mode forward: the ``Linear4bit`` layers took the path ``select_4bit_cpu_path``
    chose (bitsandbytes marks a repacked weight's quant state). ``packed``: at least one took the
    packed kernel (only layers whose input needs no grad can: those before the first trainable
    adapter); else none did."""
    found = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert found
    took = [bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in found]
    assert any(took) == packed, f"{sum(took)} of {len(took)} Linear4bit layers took the packed path"
