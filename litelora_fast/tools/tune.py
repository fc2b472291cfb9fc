"""``python -m litelora_fast tune``: pre-tune the op's implementation choice for a model's shapes.

On CUDA the op times its three implementations (the fused Triton kernels, the hybrid of cuBLAS
base GEMMs and Triton LoRA kernels, and the cuBLAS composite) the first time it meets a shape
bucket, and caches the winner on disk (``litelora_fast.op.autotune``).
This command does that ahead of time, so the first training step runs at full speed:

    python -m litelora_fast tune --shape 8192,4096,4096 --shape 8192,4096,14336 \\
        --rank 16 --adapters 1,4,8 --dtype bf16
    python -m litelora_fast tune --model path/or/hf-name --target q_proj,v_proj --tokens 8192

``--shape N,D_in,D_out`` names layers directly; ``--model`` reads a Hugging Face config (no
weights: the model is built on the meta device) and takes the ``nn.Linear`` layers whose name
ends in one of ``--target``, with ``N = --tokens``. Each layer shape is tuned for every adapter
count in ``--adapters`` (``R_act = rank * K``). ``--dry-run`` lists the buckets without timing
(no GPU needed). The table printed names the winner of each bucket and every candidate's time.
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from ..op import autotune
from .cli_types import device as device_arg, positive_int

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _ints(text: str, what: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return values


def _needs(text: str) -> tuple:
    names = [] if text == "none" else [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(autotune.NEED_NAMES))
    if unknown:
        raise ValueError(f"--grads takes 'none' or names from {', '.join(autotune.NEED_NAMES)}, "
                         f"got {unknown}")
    return tuple(name in names for name in autotune.NEED_NAMES)


def model_shapes(model: str, targets: list) -> list:
    """``[(d_in, d_out), ...]``: the distinct shapes of ``model``'s ``nn.Linear`` layers whose
    qualified name ends in one of ``targets`` (built from its config on the meta device)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0]
        raise ValueError(f"--model {model!r}: no config found ({first})") from None
    with torch.device("meta"):
        net = AutoModel.from_config(config)
    shapes = []
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in targets:
            shape = (module.in_features, module.out_features)
            if shape not in shapes:
                shapes.append(shape)
    if not shapes:
        raise ValueError(f"no nn.Linear layer of {model!r} is named like {targets}")
    return shapes


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", default=[], metavar="N,D_in,D_out",
                        help="a layer shape to tune (repeatable)")
    parser.add_argument("--model", help="Hugging Face model name or local path (config only)")
    parser.add_argument("--target", default="q_proj,v_proj",
                        help="comma-separated layer names for --model (default q_proj,v_proj)")
    parser.add_argument("--tokens", type=positive_int, default=8192, help="rows N for --model")
    parser.add_argument("--rank", type=positive_int, default=16, help="rank of each adapter")
    parser.add_argument("--adapters", default="1", help="adapter counts K, e.g. 1,4,8")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--gates", choices=["per_adapter", "per_row"], default="per_adapter")
    parser.add_argument("--grads", default="x,lora_A,lora_B",
                        help="inputs that require grad ('none' for inference); default: LoRA "
                             "training with a frozen base")
    parser.add_argument("--device", type=device_arg, default="cuda")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the buckets, time nothing")
    return parser.parse_args(argv)


def main(argv=None, tuner: Optional[autotune.Tuner] = None) -> int:
    """Tune (or list) the buckets; ``tuner`` is injectable for tests (fake clock and GPU)."""
    opts = parse(argv)
    if not opts.shape and not opts.model:
        raise ValueError("give --shape N,D_in,D_out (repeatable) or --model NAME_OR_PATH")
    rows = []
    for text in opts.shape:
        values = _ints(text, "--shape")
        if len(values) != 3:
            raise ValueError(f"--shape must be N,D_in,D_out, got {text!r}")
        rows.append(tuple(values))
    if opts.model:
        targets = [t.strip() for t in opts.target.split(",") if t.strip()]
        rows += [(opts.tokens, d_in, d_out) for d_in, d_out in model_shapes(opts.model, targets)]
    counts = _ints(opts.adapters, "--adapters")
    dtype, needs = DTYPES[opts.dtype], _needs(opts.grads)
    per_row = opts.gates == "per_row"
    device = opts.device
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if not opts.dry_run and tuner is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError("tune times the kernels on a CUDA GPU and none is available here "
                             "(--dry-run lists the buckets without one)")
        if not autotune.enabled():
            raise ValueError("LITELORA_AUTOTUNE=0 fixes the choice (the kernels): nothing to tune")
    tuner = autotune.TUNER if tuner is None else tuner
    print(f"{'bucket':<72} {'winner':>7} "
          + " ".join(f"{c + ' ms':>10}" for c in autotune.CANDIDATES))
    for n, d_in, d_out in rows:
        for K in counts:
            ranks = [opts.rank] * K
            if opts.dry_run:
                key = autotune.bucket(n, d_in, d_out, sum(ranks), dtype, per_row, needs)
                print(f"{autotune.bucket_name(key):<72} {'-':>7}")
                continue
            key, winner = autotune.tune_shape(n, d_in, d_out, ranks, dtype, per_row, needs,
                                              device, tuner)
            ms = tuner.times.get((device, key), {})
            cells = [f"{ms[c]:.4f}" if ms.get(c) is not None else "-"
                     for c in autotune.CANDIDATES]
            print(f"{autotune.bucket_name(key):<72} {winner:>7} "
                  + " ".join(f"{c:>10}" for c in cells))
    if not opts.dry_run:
        print(f"cache: {tuner.path(device)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
