"""Multi-tenant training step on the CPU: K = 4 tenants, one adapter per sample (``llf.route``),
against a single-adapter step of the same model on the same batch, timed side by side.

The model is a small Llama-style decoder built from a config (random weights, no download), LoRA
on all seven projections of every block. Peers, timed round-robin in one run
(``timing.cpu_median_ms``), each one forward + backward of the whole model:

- ``single``: one adapter in the bank, the whole batch on it (the floor a routed step aims at);
- ``routed``: four adapters, ``with llf.route(model, tenant_of_each_sample)``: rows grouped by
  adapter, each row pays for its own adapter only;
- ``per_row_gates``: the same four adapters through the packed op with per-row one-hot gates
  (what a hand-made multi-tenant step ran before ``llf.route``: every row pays for all four).

SPEC's CPU target: ``routed / single <= 1.1``. ``extra_info`` holds each peer's median and the
ratios; pytest-benchmark's own statistics are those of the ``routed`` step.
"""
import pytest
import torch

import litelora_fast as llf
import timing

transformers = pytest.importorskip("transformers")

K, BATCH, SEQ, RANK = 4, 8, 64, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def decoder(num_adapters: int):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688,
                                      num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=4, max_position_embeddings=SEQ)
    model = transformers.LlamaForCausalLM(config)
    llf.inject(model, TARGETS, rank=RANK, alpha=2 * RANK)
    for layer in llf.injected_layers(model).values():
        for k in range(num_adapters):
            layer.add_adapter(name=f"tenant{k}")
            with torch.no_grad():
                layer.lora_B[k].normal_(0, 0.02)
    return model.train()


def step(model, ids, context=None):
    def run():
        model.zero_grad(set_to_none=True)
        if context is None:
            loss = model(ids, labels=ids).loss
        else:
            with context():
                loss = model(ids, labels=ids).loss
        loss.backward()
    return run


def per_row_gates(model, tenants):
    """A forward pre-hook per layer giving it one-hot per-row gates (the hand-made way)."""
    gates = torch.nn.functional.one_hot(torch.tensor(tenants), K).float()

    class Hooks:
        def __enter__(self):
            self.handles = [layer.register_forward_pre_hook(
                lambda m, args, kw: (args, {"gates": gates[:, None, :].expand(
                    *args[0].shape[:-1], K)}), with_kwargs=True)
                for layer in llf.injected_layers(model).values()]

        def __exit__(self, *exc):
            for h in self.handles:
                h.remove()
    return Hooks


def test_multi_tenant_step_cost(benchmark):
    ids = torch.randint(0, 512, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    # Two samples per tenant, shuffled: the order a data loader gives.
    tenants = [int(t) for t in torch.randperm(BATCH, generator=torch.Generator().manual_seed(2))
               % K]
    single, multi = decoder(1), decoder(K)
    names = [f"tenant{t}" for t in tenants]
    peers = {"single": step(single, ids),
             "routed": step(multi, ids, lambda: llf.route(multi, names)),
             "per_row_gates": step(multi, ids, per_row_gates(multi, tenants))}
    ms = timing.cpu_median_ms(peers)
    benchmark.extra_info.update({f"ms_{name}": v for name, v in ms.items()})
    benchmark.extra_info["routed_over_single"] = ms["routed"] / ms["single"]
    benchmark.extra_info["per_row_gates_over_single"] = ms["per_row_gates"] / ms["single"]
    benchmark.extra_info["shape"] = (f"Llama 2 blocks, hidden 256, inter 688, 7 projections, "
                                     f"r={RANK}, batch {BATCH} x seq {SEQ}, K={K}")
    print(f"\nmulti-tenant step (ms, median): {ms}; routed/single = "
          f"{ms['routed'] / ms['single']:.3f}, per-row gates/single = "
          f"{ms['per_row_gates'] / ms['single']:.3f}")
    benchmark.pedantic(peers["routed"], rounds=3, iterations=1, warmup_rounds=1)
