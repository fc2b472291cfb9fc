"""``llf.patch_peft`` under PEFT's own Trainer flow (default optimizer: fused AdamW; bf16
autocast; gradient checkpointing; resume) and on a bitsandbytes 4-bit base (QLoRA)."""
import os

import pytest
import torch

import litelora_fast as llf
from litelora_fast.models import peft_patch_layers
from numerics import TOL, assert_rel
from tiny_llms import VOCAB, quantized_llama, tiny

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from peft import LoraConfig, get_peft_model  # noqa: E402


@pytest.fixture(autouse=True)
def _unpatched_after(fast_path):
    yield
    llf.unpatch_peft()


def dataset(n=8, seq=6):
    g = torch.Generator().manual_seed(5)
    return [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(1, VOCAB, (n, seq), generator=g)]


def peft_llama(dropout=0.1):
    torch.manual_seed(0)
    return get_peft_model(tiny("llama").train(),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                     lora_dropout=dropout))


def trainer(model, out, max_steps=4):
    args = transformers.TrainingArguments(
        output_dir=os.fspath(out), max_steps=max_steps, save_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100, seed=7, bf16=True,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=0, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=dataset())


def lora_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_trainer_default_optimizer_bf16_checkpointing_resume(tmp_path):
    llf.patch_peft()
    straight = peft_llama()
    t = trainer(straight, tmp_path / "a")
    assert t.args.optim == transformers.training_args.OptimizerNames.ADAMW_TORCH_FUSED
    before = peft_patch_layers.OP_CALLS["fused"]
    t.train()
    assert peft_patch_layers.OP_CALLS["fused"] > before
    expected = lora_state(straight)
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file()

    resumed = peft_llama()
    trainer(resumed, tmp_path / "b").train(resume_from_checkpoint=os.fspath(ckpt))
    got = lora_state(resumed)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)



def _train_without_dropout(tmp_path, patched):
    (llf.patch_peft if patched else llf.unpatch_peft)()
    model = peft_llama(dropout=0.0)
    start = lora_state(model)
    trainer(model, tmp_path / f"run{int(patched)}").train()
    end = lora_state(model)
    return torch.cat([(end[n] - start[n]).reshape(-1) for n in end if "lora_B" in n])


def test_trainer_moves_the_adapters_as_peft_does(tmp_path):
    # (without dropout: ours is Philox in the op, PEFT's is nn.Dropout's draw, never equal)
    ours = _train_without_dropout(tmp_path, patched=True)
    theirs = _train_without_dropout(tmp_path, patched=False)
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=0)
    assert cos > 0.99, float(cos)


def test_qlora_4bit_base_runs_the_lora_only_op(tmp_path):
    base = quantized_llama(tmp_path / "base", bits=4)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear",
                                            init_lora_weights=False))
    x = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    plain = model(x).logits
    llf.patch_peft()
    status = llf.patched_layers(model)
    assert status and all(s.runs_op for s in status.values()), status
    before = peft_patch_layers.OP_CALLS["lora_only"]
    ours = model(x).logits
    assert peft_patch_layers.OP_CALLS["lora_only"] - before == 14
    assert_rel("qlora logits", ours, plain, torch.float32, tol=TOL[torch.float32] * 10)
