"""``python -m litelora_fast validate``: the fused (or fast) path against the float64 reference.

Draws random problems over a spread of shapes, runs forward and backward through
``gated_lora_linear`` and through ``gated_lora_linear_ref`` in float64, and prints one row per
problem: shape, dtype, backend, and the relative error ``||out - ref|| / ||ref||`` of the output
and of each gradient (the gate gradient relative to the sum of its terms' magnitudes, since it
can cancel). Exits non-zero when an error exceeds its dtype's bound.
"""
from __future__ import annotations

import argparse
import time

import torch

from ..op import autotune
from ..op.ops import gated_lora_linear
from ..op.reference import gated_lora_linear_ref
from .cli_types import device as device_arg

NAMES = ("x", "weight", "bias", "lora_A", "lora_B", "gates")
# Bounds: fp32 on the CPU is exact to ~1e-6; tf32 tensor cores (fp32 on a GPU) ~1e-3;
# half precision rounds every operand to 8-11 mantissa bits.
BOUNDS = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}
TF32_BOUND = 5e-3

# (rows, D_in, D_out, ranks, per-row gates, zero-gate adapters): odd sizes, ragged ranks, N = 1.
SHAPES = [
    ((1,), 64, 48, [8], False, ()),
    ((37,), 96, 80, [4, 8, 2], False, ()),
    ((4, 33), 128, 72, [8, 8, 8, 8], True, ()),
    ((129,), 160, 200, [16, 16, 16, 16, 16, 16, 16, 16], False, (1, 4, 5)),
    ((2, 65), 72, 136, [3, 5, 7], True, (2,)),
]


def _draw(lead, d_in, d_out, ranks, per_row, zero, dtype, device):
    R, K = sum(ranks), len(ranks)
    g = torch.rand(*(lead if per_row else ()), K, device=device) + 0.25
    for k in zero:
        g[..., k] = 0
    t = dict(x=torch.randn(*lead, d_in, device=device),
             weight=torch.randn(d_out, d_in, device=device) / d_in ** 0.5,
             bias=torch.randn(d_out, device=device),
             lora_A=torch.randn(R, d_in, device=device) / d_in ** 0.5,
             lora_B=torch.randn(d_out, R, device=device), gates=g)
    offsets = [0]
    for r in ranks:
        offsets.append(offsets[-1] + r)
    scaling = [2.0 / max(r, 1) for r in ranks]
    cast = {k: v.to(dtype) if k != "gates" else v for k, v in t.items()}
    return cast, offsets, scaling


def _run(fn, t, offsets, scaling, dy, dtype=None):
    leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_() for k, v in t.items()}
    y = fn(*(leaves[k] for k in NAMES), offsets, scaling)
    y.backward(dy.to(y.dtype))
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _gate_scale(t, offsets, scaling, dy, per_row) -> torch.Tensor:
    """``s_k * sum |(x A^T) * (dy B)|`` over adapter k's columns (per row for per-row gates).

    The gate gradient is an inner product whose terms have random signs: it can cancel far below
    its terms, and rounding is relative to the sum of their magnitudes, not to the result. Its
    error is measured against this scale, so a cancelling sum is not reported as a failure (a
    wrong formula still misses by O(1) of it)."""
    x = t["x"].double().reshape(-1, t["x"].shape[-1])
    terms = ((x @ t["lora_A"].double().t())
             * (dy.double().reshape(-1, dy.shape[-1]) @ t["lora_B"].double())).abs()
    cols = torch.stack([terms[:, a:b].sum(1) * abs(s)
                        for a, b, s in zip(offsets, offsets[1:], scaling)], dim=1)
    return cols.reshape(t["gates"].shape) if per_row else cols.sum(0)


def shape_label(lead, d_in, d_out, ranks, per_row) -> str:
    rows = "x".join(map(str, lead))
    return f"{rows} x {d_in} -> {d_out}, r={ranks}" + (" per-row" if per_row else "")


def validate_all(dtypes, device, backend=None, seed=None, log=print) -> bool:
    """Run every shape in every dtype; print the table (never truncated: the shape column is as
    wide as its longest entry); return True when all are in bounds."""
    if seed is not None:
        torch.manual_seed(seed)
    width = max(len(shape_label(*s[:5])) for s in SHAPES)
    header = f"{'shape (N x Din -> Dout, ranks)':<{width}} {'dtype':<9} {'backend':<7} {'y':>8} " + \
             " ".join(f"{'d' + n:>8}" for n in NAMES) + "  ok"
    log(header)
    log("-" * len(header))
    ok_all = True
    for lead, d_in, d_out, ranks, per_row, zero in SHAPES:
        for dtype in dtypes:
            t, offsets, scaling = _draw(lead, d_in, d_out, ranks, per_row, zero, dtype, device)
            dy = torch.randn(*lead, d_out, device=device)
            be = backend or autotune.implementation(t["x"].device, t["x"].dtype)

            def ours(*a):
                return gated_lora_linear(*a, backend=backend)

            y, grads = _run(ours, t, offsets, scaling, dy)
            y_ref, g_ref = _run(gated_lora_linear_ref, t, offsets, scaling, dy, torch.float64)
            errs = [_rel(y, y_ref)] + [_rel(grads[n], g_ref[n]) for n in NAMES[:-1]]
            scale = _gate_scale(t, offsets, scaling, dy, per_row)
            errs.append(((grads["gates"].double() - g_ref["gates"]).norm()
                         / scale.norm().clamp_min(1e-30)).item())
            bound = BOUNDS[dtype]
            if dtype == torch.float32 and device.type == "cuda" and be == "triton":
                bound = TF32_BOUND
            ok = max(errs) < bound
            ok_all &= ok
            shape = shape_label(lead, d_in, d_out, ranks, per_row)
            log(f"{shape:<{width}} {str(dtype)[6:]:<9} {be:<7} "
                + " ".join(f"{e:8.1e}" for e in errs) + f"  {'yes' if ok else 'NO'}")
    return ok_all


DTYPE_NAMES = ("float32", "float16", "bfloat16")


def _dtype_names(text: str) -> list:
    """``--dtypes``: a comma list of at least one of ``DTYPE_NAMES``."""
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in DTYPE_NAMES]    # '' too: "--dtypes ''" and "float32,"
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, bad))} not among "
                                         f"{', '.join(DTYPE_NAMES)} (a comma list of at least one)")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litelora_fast validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_arg,
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", type=_dtype_names, default=None,
                        help="comma list of float32,float16,bfloat16 (default: float32 on the "
                             "CPU, all three on a GPU)")
    parser.add_argument("--backend", choices=["torch", "triton", "hybrid"], default=None,
                        help="force a backend (default: Triton on CUDA, PyTorch on the CPU unless "
                             "TRITON_INTERPRET=1)")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    args = parser.parse_args(argv)
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {str(device)!r}: no CUDA device on this machine")
    names = args.dtypes
    if names is None:
        names = list(DTYPE_NAMES) if device.type == "cuda" else ["float32"]
    dtypes = [getattr(torch, n) for n in names]
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    print(f"validate: device={device} torch={torch.__version__} seed={seed}")
    ok = validate_all(dtypes, device, args.backend, seed)
    print("all within bounds" if ok else "SOME ERRORS EXCEED THEIR BOUND")
    return 0 if ok else 1
