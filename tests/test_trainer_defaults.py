"""The HF ``Trainer`` as users run it, with its own defaults (``optim="adamw_torch_fused"``), in
fp32 and with ``bf16=True``: our injected model trains as PEFT's does on the same weights (the same
losses within the dtype's bound after 20 steps), a bf16 base and a bank of 2 adapters train as they
do under the for-loop AdamW, the trained model equals a fresh one loaded from its state dict, and
``resume_from_checkpoint`` is exact.

Fused AdamW writes the Parameters without bumping their version counters: a layer that re-packed
its bank only on a version change trained nothing here (loss 4.1538 -> 4.151 in 30 steps).
"""
import copy
import os

import pytest
import torch

import litelora_fast as llf
from numerics import TOL, rel_err
from tiny_llms import VOCAB, copy_adapters_from_peft, tiny

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("accelerate")

STEPS = 20
# The loss drops 0.12-0.19 over the 20 steps here (random tokens, measured 2026-12-08); a bank
# that never saw the fused optimizer's writes dropped 0.003.
DROP = 0.05
# The losses' relative error from PEFT's over the 20 steps (measured 2026-12-08, these seeds):
# fp32 5.6e-6 (PEFT adds the LoRA term in another order, and 20 AdamW steps carry each step's
# rounding forward: 28 times the one-op fp32 bound), so 5e-5; bf16 autocast 4.1e-3, under the
# bf16 bound 2e-2.
LOSS_BOUND = {False: 5e-5, True: TOL[torch.bfloat16]}
TARGETS = "all-linear"


def dataset(n=16, seq=8):
    g = torch.Generator().manual_seed(11)
    return [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(1, VOCAB, (n, seq), generator=g)]


def args(out, bf16=False, optim=None, max_steps=STEPS, save_steps=STEPS):
    extra = {} if optim is None else {"optim": optim}
    return transformers.TrainingArguments(
        output_dir=os.fspath(out), max_steps=max_steps, per_device_train_batch_size=4,
        learning_rate=2e-2, report_to=[], use_cpu=True, logging_steps=1, seed=3, bf16=bf16,
        save_steps=save_steps, save_only_model=False, dataloader_num_workers=0,
        disable_tqdm=True, **extra)


def losses(trainer):
    return torch.tensor([h["loss"] for h in trainer.state.log_history if "loss" in h])


def ours_and_peft(dtype=torch.float32):
    """Our injected tiny Llama and PEFT's on the same base and the same (random, non-zero)
    adapter weights."""
    base = tiny("llama", dtype).train()
    twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    llf.inject(base, TARGETS, rank=4, alpha=8, num_adapters=1)
    copy_adapters_from_peft(base, twin.base_model.model)
    return base, twin


def test_default_optimizer_is_the_fused_adamw(tmp_path):
    """What the tests below rely on: the Trainer's default optimizer on this install."""
    assert args(tmp_path).optim == "adamw_torch_fused"


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_trainer_defaults_train_as_peft_does(bf16, fast_path, tmp_path):
    ours, twin = ours_and_peft()
    runs = {}
    for name, model in (("ours", ours), ("peft", twin)):
        trainer = transformers.Trainer(model=model, args=args(tmp_path / name, bf16=bf16),
                                       train_dataset=dataset())
        trainer.train()
        runs[name] = losses(trainer)
    print(f"\nlosses ours {runs['ours'][[0, -1]].tolist()} peft {runs['peft'][[0, -1]].tolist()}")
    assert len(runs["ours"]) == STEPS
    assert runs["ours"][-1] < runs["ours"][0] - DROP          # it trains
    err = rel_err(runs["ours"], runs["peft"])
    print(f"relative error of the losses: {err:.3g}")
    bound = LOSS_BOUND[bf16]
    assert err <= bound, f"losses {err:.3g} from PEFT's (bound {bound:g})"


def _bank_model(dtype):
    model = tiny("llama", dtype).train()
    llf.inject(model, TARGETS, rank=4, alpha=8, num_adapters=2)
    with torch.no_grad():
        for layer in llf.injected_layers(model).values():
            for B in layer.lora_B:
                B.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("case", ["bf16-base-K1", "fp32-K2", "bf16-base-K2"])
def test_fused_adamw_trains_as_the_loop_adamw_and_saves_what_it_computes(case, fast_path,
                                                                         tmp_path):
    dtype = torch.bfloat16 if case.startswith("bf16") else torch.float32
    K = int(case[-1])
    runs, models = {}, {}
    for optim in ("adamw_torch_fused", "adamw_torch"):
        model = _bank_model(dtype) if K == 2 else tiny("llama", dtype).train()
        if K == 1:
            llf.inject(model, TARGETS, rank=4, alpha=8, num_adapters=1)
        trainer = transformers.Trainer(model=model, args=args(tmp_path / optim, optim=optim),
                                       train_dataset=dataset())
        trainer.train()
        runs[optim], models[optim] = losses(trainer), model
    fused = runs["adamw_torch_fused"]
    print(f"\n{case}: fused {fused[[0, -1]].tolist()} loop {runs['adamw_torch'][[0, -1]].tolist()}")
    assert fused[-1] < fused[0] - DROP
    assert rel_err(fused, runs["adamw_torch"]) <= TOL[torch.bfloat16]
    model = models["adamw_torch_fused"].eval()
    fresh = _bank_model(dtype) if K == 2 else tiny("llama", dtype)
    if K == 1:
        llf.inject(fresh, TARGETS, rank=4, alpha=8, num_adapters=1)
    fresh.load_state_dict(model.state_dict())
    probe = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(probe).logits, fresh.eval()(probe).logits)


def test_bf16_resume_is_exact_with_two_adapters(fast_path, tmp_path):
    """``bf16=True``, the default fused AdamW, 2 adapters, adapter-only checkpoints: resuming from
    step 4 of 8 ends where the uninterrupted run ends."""
    probe = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    logits = []
    for resume in (False, True):
        torch.manual_seed(0)
        model = _bank_model(torch.float32)
        out = tmp_path / "run"
        trainer = transformers.Trainer(
            model=model, args=args(out, bf16=True, max_steps=8, save_steps=4),
            train_dataset=dataset(), callbacks=llf.trainer_callbacks(model))
        trainer.train(resume_from_checkpoint=os.fspath(out / "checkpoint-4") if resume else None)
        with torch.no_grad():
            logits.append(model.eval()(probe).logits)
    assert torch.equal(logits[0], logits[1])
