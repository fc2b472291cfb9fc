"""One real training step end to end (``gpu_check.sh --tune``): a Llama-like decoder block built
from a transformers config (``gpu_plan.BLOCK``: hidden 4096, MLP 14336, 32 heads, 8 KV heads,
bf16, 4 x 2048 tokens), LoRA r = 16 on all seven projections (``gpu_plan.BLOCK_TARGETS``),
dropout 0.1, adapters trained with AdamW, the block's input requiring grad (a block in the middle
of a model), with

- ``ours``: ``litelora_fast.models.inject`` (one adapter per layer, ``GatedLoRALinear``);
- ``peft``: PEFT's ``get_peft_model`` with the same ``LoraConfig`` values;

the same base weights and inputs for both. Per implementation: the median time of a training
step (forward, backward, optimizer step; CUDA events after warm-up steps), peak memory above
the model and inputs, trainable parameters, and (ours) the op's implementation choice per bucket.

    python benchmarks/gpu/gpu_block.py --json block.json --deadline T   # GPU
    python benchmarks/gpu/gpu_block.py --tiny                     # CPU, a tiny block (the test)
    python benchmarks/gpu/gpu_block.py --list                     # the plan, no work

The JSON is rewritten after each implementation, so a killed step keeps what it measured; with
``--deadline`` (seconds since the epoch: gpu_check.sh sets it a few seconds before the step's
limit) an implementation whose estimated cost (``gpu_estimate.block_costs``) would end past it is
not started and is listed under ``not_reached``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402

IMPLS = ("ours", "peft")
TINY = dict(hidden=64, intermediate=128, heads=4, kv_heads=2, batch=2, seq=8, rank=4, alpha=8,
            dropout=0.1, warmup_steps=1, timed_steps=2)


def build(impl: str, p: dict, device: str, dtype: torch.dtype):
    """``(block, rotary)``: a ``LlamaDecoderLayer`` (seeded: the same base weights for every
    impl) with LoRA on the seven projections, and its rotary embedding."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=p["hidden"], intermediate_size=p["intermediate"],
                         num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                         num_hidden_layers=1, max_position_embeddings=max(p["seq"], 128))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):   # initialised where it runs (218M parameters at hidden 4096)
        block = LlamaDecoderLayer(config, layer_idx=0).to(dtype=dtype)
        rotary = LlamaRotaryEmbedding(config)
    targets = list(gpu_plan.BLOCK_TARGETS)
    if impl == "ours":
        import litelora_fast as llf
        llf.inject(block, targets, rank=p["rank"], alpha=p["alpha"], num_adapters=1,
                   dropout=p["dropout"])
    elif impl == "peft":
        from peft import LoraConfig, get_peft_model
        block = get_peft_model(block, LoraConfig(r=p["rank"], lora_alpha=p["alpha"],
                                                 lora_dropout=p["dropout"],
                                                 target_modules=targets),
                               autocast_adapter_dtype=False)
    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    block.to(device=device, dtype=dtype).train()
    return block, rotary


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(impl: str, p: dict, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> dict:
    """One implementation's training step: time, peak memory, trainable parameters."""
    block, rotary = build(impl, p, device, dtype)
    params = [t for t in block.parameters() if t.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator(device=device).manual_seed(1)
    shape = (p["batch"], p["seq"], p["hidden"])
    x = torch.randn(*shape, generator=g, device=device).to(dtype).requires_grad_()
    dy = torch.randn(*shape, generator=g, device=device).to(dtype)
    position_ids = torch.arange(p["seq"], device=device).unsqueeze(0).expand(p["batch"], -1)
    cos_sin = rotary(x, position_ids)

    def step():
        out = block(x, position_embeddings=cos_sin, attention_mask=None)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(dy)
        opt.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None

    for _ in range(p["warmup_steps"]):
        step()
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(p["timed_steps"]):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    out = {"ms_step_median": statistics.median(times), "ms_steps": times,
           "trainable_params": sum(t.numel() for t in params),
           "peak_bytes_above_start": (torch.cuda.max_memory_allocated() - before
                                      if device == "cuda" else None)}
    if impl == "ours" and device == "cuda":
        import tuning_record   # benchmarks/ (gpu_plan put it on sys.path)
        out["op_choices"] = tuning_record._jsonable(tuning_record.all_timings())
    del block, opt, x, dy
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def _write(result: dict, json_path) -> None:
    if json_path:   # whole or not at all: a kill mid-write leaves the previous version
        with open(json_path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(json_path + ".tmp", json_path)


def block_costs() -> dict:
    """``{impl: estimated seconds}`` (``gpu_estimate``'s model); zeros if it cannot be made."""
    try:
        import gpu_estimate
        return gpu_estimate.block_costs()
    except Exception as e:   # never lose the block step over the estimate
        print(f"(no cost estimate: {type(e).__name__}: {e}; every implementation is tried)")
        return {impl: 0.0 for impl in IMPLS}


def run(p: dict, device: str, dtype: torch.dtype, json_path: str = None,
        deadline: float = math.inf) -> dict:
    import importlib.metadata
    result = {"block": dict(p), "targets": list(gpu_plan.BLOCK_TARGETS), "device": device,
              "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
              "transformers": importlib.metadata.version("transformers")}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    costs = block_costs() if deadline < math.inf else {}
    result["not_reached"] = []
    for impl in IMPLS:
        if time.time() + costs.get(impl, 0.0) > deadline:
            result["not_reached"].append(impl)
            print(f"{impl}: not started (~{costs[impl]:.0f} s would end past the deadline)",
                  flush=True)
            continue
        try:
            result[impl] = measure(impl, p, device, dtype)
        except Exception as e:   # one impl failing still reports the other
            result[impl] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(f"{impl}: {result[impl]}", flush=True)
        _write(result, json_path)
    o, q = result.get("ours", {}), result.get("peft", {})
    if "ms_step_median" in o and "ms_step_median" in q:
        result["speedup_vs_peft"] = q["ms_step_median"] / o["ms_step_median"]
    _write(result, json_path)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the result here (rewritten after each impl)")
    parser.add_argument("--deadline", type=float, default=math.inf,
                        help="seconds since the epoch: start no implementation that would end "
                             "after it")
    parser.add_argument("--tiny", action="store_true", help="a tiny fp32 block on the CPU")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    ns = parser.parse_args(argv)
    p = TINY if ns.tiny else gpu_plan.BLOCK
    if ns.list:
        print(f"gpu_block: Llama-like block {p}, LoRA on {len(gpu_plan.BLOCK_TARGETS)} "
              f"projections, ours (inject) vs PEFT")
        return 0
    if ns.tiny:
        device, dtype = "cpu", torch.float32
    elif torch.cuda.is_available():
        device, dtype = "cuda", torch.bfloat16
    else:
        print("gpu_block: no CUDA device (use --tiny for the CPU check)")
        return 2
    result = run(p, device, dtype, ns.json, ns.deadline)
    if "speedup_vs_peft" in result:
        o, q = result["ours"], result["peft"]
        print(f"block step: ours {o['ms_step_median']:.2f} ms, PEFT {q['ms_step_median']:.2f} ms "
              f"({result['speedup_vs_peft']:.2f}x); peak MB ours "
              f"{(o['peak_bytes_above_start'] or 0) / 2**20:.0f}, PEFT "
              f"{(q['peak_bytes_above_start'] or 0) / 2**20:.0f}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
