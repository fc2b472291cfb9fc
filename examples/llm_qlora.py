"""QLoRA fine-tuning of a Llama-style model with litelora-fast, the way an LLM user runs it, plus
what PEFT cannot do: two tenants trained in one run, each sample routed to its own adapter.

    python examples/llm_qlora.py --fast        # the CI run: a tiny model, a few steps (CPU)
    python examples/llm_qlora.py               # a larger model, more steps

Steps (each prints a line; ``main`` returns the numbers):

1. a Llama-style model from a config (random weights, no download), saved and loaded back
   4-bit (bitsandbytes NF4, on the CPU): the QLoRA base;
2. ``llf.inject(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
   target_modules="all-linear"), adapter_name="tenant_a")`` and a second adapter
   ``llf.add_adapter(model, "tenant_b")``;
3. one HF ``Trainer`` run with gradient checkpointing and adapter-only checkpoints
   (``callbacks=llf.trainer_callbacks(model)``); the collator puts ``adapter_ids`` in each batch,
   so every sample trains its tenant's adapter (tenant A counts up, tenant B counts down);
4. resume from the middle checkpoint in a fresh process-like setup: the adapters end
   bit-identical to the uninterrupted run;
5. ``generate`` with a KV cache under ``llf.route``: one prompt per tenant in one batch;
6. merge: the adapters loaded onto a non-quantized copy of the base, ``merge_and_unload``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

import litelora_fast as llf

TENANTS = ("tenant_a", "tenant_b")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="tiny model, few steps (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    return p.parse_args(argv)


def build_base(path: Path, fast: bool, seed: int):
    """A random-weight Llama saved to ``path`` (the "pretrained" base of this example)."""
    import transformers
    torch.manual_seed(seed)
    hidden = 128 if fast else 256
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=hidden,
                                      intermediate_size=2 * hidden,
                                      num_hidden_layers=2 if fast else 4, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(path)


def load_4bit(path: Path):
    import transformers
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_compute_dtype=torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=q,
                                                             device_map="cpu")


def sequence(tenant: int, start: int, length: int) -> torch.Tensor:
    """Tenant 0 counts up, tenant 1 counts down, through the tokens 3..47."""
    step = 1 if tenant == 0 else -1
    return torch.tensor([3 + (start + step * i) % 45 for i in range(length)])


def dataset(n: int, length: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 45, (n,), generator=g).tolist()
    return [{"input_ids": sequence(i % 2, s, length), "tenant": TENANTS[i % 2]}
            for i, s in enumerate(starts)]


def collate(rows: list) -> dict:
    ids = torch.stack([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids, "adapter_ids": [r["tenant"] for r in rows]}


def qlora_model(base_path: Path):
    from peft import LoraConfig
    model = load_4bit(base_path)
    llf.inject(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                 target_modules="all-linear", task_type="CAUSAL_LM"),
               adapter_name=TENANTS[0])
    llf.add_adapter(model, TENANTS[1])
    return model


def trainer(model, out: Path, data: list, steps: int, seed: int):
    import transformers
    args = transformers.TrainingArguments(
        output_dir=os.fspath(out), max_steps=steps, save_steps=steps // 2,
        per_device_train_batch_size=4, learning_rate=5e-3, lr_scheduler_type="constant",
        gradient_checkpointing=True, remove_unused_columns=False, report_to=[], use_cpu=True,
        logging_steps=max(1, steps // 4), seed=seed, disable_tqdm=True,
        dataloader_num_workers=0)
    return transformers.Trainer(model=model, args=args, train_dataset=data,
                                data_collator=collate, callbacks=llf.trainer_callbacks(model))


def adapter_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(out: Path, fast: bool, seed: int) -> dict:
    build_base(out / "base", fast, seed)
    data = dataset(24 if fast else 512, 12, seed)
    steps = 6 if fast else 120
    result = {}

    torch.manual_seed(seed)
    model = qlora_model(out / "base")
    trainable, total = llf.print_trainable_parameters(model)
    history = trainer(model, out / "run", data, steps, seed).train()
    result["loss"] = history.training_loss
    ckpt = out / "run" / f"checkpoint-{steps // 2}"
    result["checkpoint_bytes"] = dir_bytes(ckpt)
    result["model_file_bytes"] = (ckpt / "model.safetensors").stat().st_size
    result["base_bytes"] = (out / "base" / "model.safetensors").stat().st_size
    print(f"trained {steps} steps, both tenants in every batch: mean loss "
          f"{history.training_loss:.3f}; {ckpt.name}: {result['checkpoint_bytes']:,} B in all, "
          f"of which the model file (2 adapters, no base) {result['model_file_bytes']:,} B; "
          f"the base alone is {result['base_bytes']:,} B")

    torch.manual_seed(seed)
    again = qlora_model(out / "base")
    trainer(again, out / "resumed", data, steps, seed).train(resume_from_checkpoint=os.fspath(ckpt))
    final, resumed = adapter_state(model), adapter_state(again)
    result["resume_identical"] = all(torch.equal(final[n], resumed[n]) for n in final)
    print(f"resumed from {ckpt.name}: adapters bit-identical to the uninterrupted run: "
          f"{result['resume_identical']}")

    model.eval()
    prompts = torch.stack([sequence(0, 10, 4), sequence(1, 30, 4)])
    with llf.route(model, list(TENANTS)):
        generated = model.generate(prompts, max_new_tokens=6, min_new_tokens=6,
                                   do_sample=False, use_cache=True)
    new = generated[:, prompts.shape[1]:]
    wanted = torch.stack([sequence(0, 14, 6), sequence(1, 26, 6)])
    result["generate_accuracy"] = [float((new[i] == wanted[i]).float().mean()) for i in range(2)]
    for i, t in enumerate(TENANTS):
        print(f"generate ({t}): {prompts[i].tolist()} -> {new[i].tolist()} "
              f"(expected {wanted[i].tolist()})")

    llf.save_adapters(model, out / "adapters")
    import transformers
    plain = transformers.AutoModelForCausalLM.from_pretrained(out / "base").eval()
    llf.load_adapters(plain, out / "adapters")
    llf.set_active_adapters(plain, TENANTS[0])
    probe = prompts[:1]
    with torch.no_grad():
        before = plain(probe).logits
        merged = llf.merge_and_unload(plain)
        after = merged(probe).logits
    result["merge_rel_err"] = float((after - before).norm() / before.norm())
    print(f"merged {TENANTS[0]} into a non-quantized copy: plain nn.Linear layers, logits "
          f"relative change {result['merge_rel_err']:.1e}")
    result["trainable"], result["total"] = trainable, total
    return result


def main(argv=None) -> dict:
    args = parse(argv)
    if args.out:
        return run(Path(args.out), args.fast, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp), args.fast, args.seed)


if __name__ == "__main__":
    main()
