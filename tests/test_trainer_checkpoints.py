"""HF ``Trainer`` with ``llf.trainer_callbacks()``: adapter-only checkpoints (no base key in the
file, sizes against PEFT's on the same model), ``resume_from_checkpoint`` bit-identical to an
uninterrupted run, and the whole-model round trip ``llf.save_pretrained`` /
``llf.from_pretrained``."""
import copy
import os

import pytest
import torch

import litelora_fast as llf
from tiny_llms import VOCAB, tiny

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
pytest.importorskip("accelerate")


def dataset(n=8, seq=6):
    g = torch.Generator().manual_seed(5)
    return [{"input_ids": ids, "labels": ids}
            for ids in torch.randint(1, VOCAB, (n, seq), generator=g)]


def injected():
    model = tiny("llama").train()
    llf.inject(model, "all-linear", rank=4, alpha=8, num_adapters=1)
    return model


def trainer(model, out, max_steps=4, callbacks=True):
    args = transformers.TrainingArguments(
        output_dir=os.fspath(out), max_steps=max_steps, save_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100, seed=7,
        save_only_model=False, dataloader_num_workers=0, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=dataset(),
                                callbacks=llf.trainer_callbacks(model) if callbacks else None)


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_adapter_only_checkpoints_resume_exactly(fast_path, tmp_path):
    probe = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    straight = injected()
    trainer(straight, tmp_path / "a").train()
    expected = straight.eval()(probe).logits

    ckpt = tmp_path / "a" / "checkpoint-2"
    state = safetensors_torch.load_file(os.fspath(ckpt / "model.safetensors"))
    model_keys = set(straight.state_dict())
    assert set(state) == llf.models.hf_checkpoints.adapter_keys(straight)
    assert set(state) < model_keys and not any(k.endswith(".weight") and "lora" not in k
                                               for k in state)
    assert (ckpt / "optimizer.pt").is_file()
    # After train() the model saves whole again (the ignore list is restored).
    assert not straight._keys_to_ignore_on_save

    torch.manual_seed(0)
    resumed = injected()
    trainer(resumed, tmp_path / "b").train(resume_from_checkpoint=os.fspath(ckpt))
    assert torch.equal(resumed.eval()(probe).logits, expected)


def test_save_model_after_training_loads_back_with_the_adapters(fast_path, tmp_path):
    """``trainer.save_model()`` at the end writes what ``llf.save_pretrained`` writes: the base
    under its own names (plain ``from_pretrained`` gives the base, as documented) and the
    adapter files, so ``llf.from_pretrained`` gives the trained model back exactly."""
    probe = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    model = injected()
    run = trainer(model, tmp_path / "run", max_steps=2)
    run.train()
    run.save_model(os.fspath(tmp_path / "final"))
    expected = model.eval()(probe).logits
    with llf.disable_adapters(model):
        base = model(probe).logits
    assert not torch.equal(expected, base)              # the adapters trained
    back = llf.from_pretrained(transformers.AutoModelForCausalLM, tmp_path / "final").eval()
    assert torch.equal(back(probe).logits, expected)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert torch.equal(plain(probe).logits, base)
    twin = copy.deepcopy(model)                         # a copy saves itself, not model
    assert twin.save_pretrained.__self__ is twin


def test_checkpoint_size_against_peft(fast_path, tmp_path):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ours = injected()
    trainer(ours, tmp_path / "ours", max_steps=2).train()
    twin = peft.get_peft_model(tiny("llama").train(), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer(twin, tmp_path / "peft", max_steps=2, callbacks=False).train()
    full = injected()
    trainer(full, tmp_path / "full", max_steps=2, callbacks=False).train()
    size = {k: dir_bytes(tmp_path / k / "checkpoint-2") for k in ("ours", "peft", "full")}
    print(f"\ncheckpoint bytes: {size}")
    # The same adapters and optimizer state as PEFT's; the base is left out.
    base = sum(p.numel() * p.element_size() for p in full.parameters() if not p.requires_grad)
    assert size["ours"] <= 1.1 * size["peft"] and size["full"] - size["ours"] > 0.9 * base


def test_whole_model_round_trip(fast_path, tmp_path, seed):
    model = injected().eval()
    with torch.no_grad():
        for layer in llf.injected_layers(model).values():
            layer.lora_B[0].normal_(0, 0.1)
    probe = torch.randint(1, VOCAB, (2, 5))
    expected = model(probe).logits
    llf.save_pretrained(model, tmp_path)
    back = llf.from_pretrained(transformers.AutoModelForCausalLM, tmp_path).eval()
    assert torch.equal(back(probe).logits, expected)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with llf.disable_adapters(model):
        assert torch.equal(plain(probe).logits, model(probe).logits)
    llf.merge_adapters(model)
    with pytest.raises(ValueError, match="merged adapters"):
        llf.save_pretrained(model, tmp_path / "m")
