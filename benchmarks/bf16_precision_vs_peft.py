"""Logit error of a bf16 base with fp32 adapters (no autocast) against the same model in float64:
ours (the bank rounded to bf16 for the fused kernels) beside PEFT (an fp32 LoRA term added to the
bf16 base output). Prints one error per seed for each; docs/integrations.md quotes the ranges.

    .venv/bin/python benchmarks/bf16_precision_vs_peft.py [--seeds 5]
"""
import argparse
import copy
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "0")      # the CPU fast path
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import peft  # noqa: E402
import torch  # noqa: E402

import litelora_fast as llf  # noqa: E402
from numerics import rel_err  # noqa: E402
from tiny_llms import copy_adapters_from_peft, ids, tiny  # noqa: E402


def errors(seed: int) -> tuple:
    base = tiny("llama", torch.float32, seed=seed)
    twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    exact = copy.deepcopy(twin).double()
    llf.inject(base, "all-linear", rank=4, alpha=8, num_adapters=1)
    copy_adapters_from_peft(base, twin.base_model.model)
    torch.manual_seed(seed)
    batch = ids()
    with torch.no_grad():
        want = exact(batch).logits
        ours = base.to(torch.bfloat16)
        for layer in llf.injected_layers(ours).values():      # the adapters stay float32
            for p in list(layer.lora_A) + list(layer.lora_B) + [layer.gates]:
                p.data = p.data.float()
        theirs = twin.to(torch.bfloat16)
        for m in theirs.modules():
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict):
                m.lora_A.float()
                m.lora_B.float()
        return rel_err(ours(batch).logits, want), rel_err(theirs(batch).logits, want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    rows = [errors(seed) for seed in range(args.seeds)]
    print(f"torch {torch.__version__}, peft {peft.__version__}, seeds 0-{args.seeds - 1}")
    print("seed  ours     peft")
    for seed, (ours, theirs) in enumerate(rows):
        print(f"{seed:4d}  {ours:.4f}   {theirs:.4f}")


if __name__ == "__main__":
    main()
