"""``pytest benchmarks/``: one training step of a tiny Llama with LoRA dropout 0.1 on the CPU, ours
(``llf.inject``) against PEFT (``get_peft_model``, ``lora_dropout``), side by side.

Both models are the same 2-layer fp32 Llama (``tests/tiny_llms.tiny``, hidden 128, intermediate
256), LoRA r = 4 on all seven projections, one adapter, a step of ``16 x 32`` tokens (forward,
loss, backward; no optimizer: both would run the same one). The same step without dropout is
timed in the same round-robin, so each row also says what dropout itself costs each peer.
``extra_info``: ``ms_<peer>`` (median), ``ratio_ours_peft`` (dropout 0.1), ``saved_mib_<peer>``
(what autograd keeps for backward, ``timing.saved_bytes``). The layer-level CPU case with dropout
(``cases.CPU_CASES``) puts ours beside (a), (b) and PEFT on one layer.
"""
import os
import sys

import pytest
import torch

import timing

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tiny_llms import VOCAB, tiny  # noqa: E402  (the suite's tiny models)

import litelora_fast as llf  # noqa: E402

DROPOUT = 0.1
BATCH, SEQ = 16, 32          # SEQ: the tiny models' max_position_embeddings
WIDTHS = dict(hidden=128, intermediate=256)


def _model(peer: str, p: float):
    model = tiny("llama", seed=0, **WIDTHS)
    if peer == "peft":
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=p)
        model = peft.get_peft_model(model, config)
    else:
        llf.inject(model, "all-linear", rank=4, alpha=8, num_adapters=1, dropout=p)
    return model.train()


def test_tiny_llama_dropout_step(benchmark):
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))
    models = {f"{peer}{'' if p else '_nodrop'}": _model(peer, p)
              for p in (DROPOUT, 0.0) for peer in ("ours", "peft")}

    def step(model):
        return lambda: model(ids, labels=ids).loss.backward()

    ms = timing.cpu_median_ms({name: step(m) for name, m in models.items()})
    info = benchmark.extra_info
    info.update(case_id="tiny-llama-step-dropout", dropout=DROPOUT, tokens=BATCH * SEQ,
                timer=timing.describe("cpu"), threads=torch.get_num_threads(), **WIDTHS)
    for name, t in ms.items():
        info[f"ms_{name}"] = t
    info["ratio_ours_peft"] = ms["ours"] / ms["peft"]
    info["ratio_ours_peft_nodrop"] = ms["ours_nodrop"] / ms["peft_nodrop"]
    for name in ("ours", "peft"):
        saved = timing.saved_bytes(lambda: models[name](ids, labels=ids).loss, [ids])
        info[f"saved_mib_{name}"] = saved / 2**20
    assert info["saved_mib_ours"] < info["saved_mib_peft"]   # the dropped x is never stored
    benchmark.group = "tiny-llama-step-dropout"
    benchmark.pedantic(step(models["ours"]), rounds=3, iterations=1)
