"""``pytest benchmarks/``: time against gate sparsity, for the spelling that skips a zero gate and
the one that multiplies it (docs/DESIGN.md, "Plan").

A zero gate is skipped only where the host knows it without a device read: frozen ``(K,)`` gates
on the CPU, or the op's ``nonzero_gates=`` hint. Elsewhere (a gates tensor on the GPU, per-row
gates) the zero multiplies: exact, at full cost. Each case times forward+backward with 0 and with
half of the K = 8 gates at zero, both spellings side by side in one round-robin, and records
``extra_info["ms"]`` per spelling and sparsity and the ratio ``half / none`` (about 0.5 of the
LoRA part where skipping works, about 1 where the zeros multiply).

- CPU: skip = ``(K,)`` CPU gates (read at every call, free); multiply = the same gates as per-row
  ``(N, K)`` gates (never read).
- GPU: skip = device gates plus ``nonzero_gates=``; multiply = device ``(K,)`` gates alone.
"""
import pytest
import torch

import litelora_fast as llf
import timing

K, R_EACH = 8, 16
SHAPES = {"cpu": (256, 256, 512), "cuda": (8192, 4096, 4096)}


def _inputs(device, dtype, zero_half, seed=0):
    n, d_in, d_out = SHAPES[device]
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(n, d_in, generator=g, device=device)).to(dtype).requires_grad_()
    W = (torch.randn(d_out, d_in, generator=g, device=device) * d_in ** -0.5).to(dtype)
    A = (torch.randn(K * R_EACH, d_in, generator=g, device=device) * d_in ** -0.5).to(dtype)
    B = (torch.randn(d_out, K * R_EACH, generator=g, device=device) * 0.25).to(dtype)
    gates = torch.rand(K, generator=g, device=device) + 0.5
    if zero_half:
        gates[1::2] = 0.0
    return x, W, A.requires_grad_(), B.requires_grad_(), gates.to(dtype)


def _step(spelling, device, x, W, A, B, gates):
    if spelling == "skip" and device == "cuda":
        hint = [bool(v) for v in gates.tolist()]          # the caller's host-side knowledge
        call = lambda: llf.gated_lora_linear(x, W, None, A, B, gates, nonzero_gates=hint)  # noqa
    elif spelling == "skip":
        call = lambda: llf.gated_lora_linear(x, W, None, A, B, gates)  # noqa: E731
    elif device == "cuda":
        call = lambda: llf.gated_lora_linear(x, W, None, A, B, gates)  # noqa: E731
    else:
        per_row = gates.expand(x.shape[0], K)
        call = lambda: llf.gated_lora_linear(x, W, None, A, B, per_row)  # noqa: E731
    dy = torch.ones(x.shape[0], W.shape[0], dtype=x.dtype, device=device)

    def fwd_bwd():
        y = call()
        torch.autograd.grad(y, (x, A, B), dy)
    return fwd_bwd


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_time_against_gate_sparsity(benchmark, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU spelling (device gates, nonzero_gates) runs on a GPU")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    benchmark.group = f"gate-sparsity-{device}"
    fns = {}
    for zero_half in (False, True):
        inputs = _inputs(device, dtype, zero_half)
        for spelling in ("skip", "multiply"):
            fns[f"{spelling}-{'half' if zero_half else 'none'}"] = _step(spelling, device,
                                                                          *inputs)
    if device == "cuda":
        ms = {name: timing.gpu_median_ms(fn) for name, fn in fns.items()}
    else:
        ms = timing.cpu_median_ms(fns)
    info = benchmark.extra_info
    info.update(shape=dict(zip(("n", "d_in", "d_out"), SHAPES[device])), k=K, rank_each=R_EACH,
                dtype=str(dtype), timer=timing.describe(device), ms=ms,
                half_over_none={s: ms[f"{s}-half"] / ms[f"{s}-none"]
                                for s in ("skip", "multiply")})
    print(f"\n{device}: {', '.join(f'{k} {v:.3f} ms' for k, v in ms.items())}; half/none "
          + ", ".join(f"{k} {v:.2f}" for k, v in info["half_over_none"].items()))
    benchmark.pedantic(fns["skip-half"], rounds=1, iterations=1)
