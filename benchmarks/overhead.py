"""Host (Python) overhead per call of ``gated_lora_linear``, beside the plain-PyTorch peers.

On shapes so small that the GEMMs cost next to nothing (N=4, D=8, K=8 adapters of rank 2, one
torch thread, CPU), the time of one call is the op's host overhead: validation, planning, dispatch
and autograd bookkeeping. It is printed in microseconds per call for

- ``ours``: ``litelora_fast.gated_lora_linear`` on the PyTorch fast path (what CPU users get);
- ``kernels*``: the same op through the Triton kernel path (``backend="triton"``) with every
  kernel launch stubbed out: the launchers' Python (grids, config and variant choice, output
  allocation, descriptors) runs, the kernel does not. This is the host time a GPU call pays on top
  of Triton's own launch cost (its C launcher and the driver, ~5-20 us per launch on a GPU, not
  measured here), so it is the part to compare with the kernels' run time;
- ``packed``: ``peers.PackedLoRA``, the best plain-PyTorch path, bound once to the bank (its
  index and scale tensors built then, as a user's module would) and called per step;
- ``F.linear``: the base layer alone, the floor;

in two modes (``forward``; ``fwd+bwd``: forward then ``backward()``), with frozen gates
(``torch.rand(K)``, a CPU tensor read on the host at every call) and with trainable gates.
``x``, ``lora_A`` and ``lora_B`` require grad. Each number is the median over repeats of the mean
CPU time of a batch of calls (``time.thread_time``: the calling thread's CPU time, so a busy
machine that preempts the process does not count; one torch thread does all the work); the peers
are timed round-robin so the remaining noise hits all alike.

    python benchmarks/overhead.py [--repeats 15] [--calls 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Triton builds interpreted kernels (whose launch this script stubs) only when the variable is
# set before it is imported; the fast-path rows pass backend="torch".
os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peers import PackedLoRA  # noqa: E402

import litelora_fast  # noqa: E402

N, D, K, RANK = 4, 8, 8, 2


def stub_kernel_launches() -> None:
    """Make every (interpreted) Triton kernel launch return at once, doing nothing."""
    InterpretedFunction.run = lambda self, *args, **kwargs: None


def make_args(trainable_gates: bool):
    """Tiny inputs: ``x``, ``lora_A``, ``lora_B`` require grad; the base weight is frozen."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g).requires_grad_()
    weight = torch.randn(D, D, generator=g)
    lora_A = torch.randn(K * RANK, D, generator=g).requires_grad_()
    lora_B = torch.randn(D, K * RANK, generator=g).requires_grad_()
    gates = torch.rand(K, generator=g).requires_grad_(trainable_gates)
    return x, weight, None, lora_A, lora_B, gates


def callables(args, mode: str) -> dict:
    """``{peer: fn()}`` running one call (forward, or forward then backward) of each peer."""
    x, weight, bias, lora_A, lora_B, gates = args
    op = litelora_fast.gated_lora_linear
    packed = PackedLoRA(weight, bias, lora_A, lora_B, gates)
    peers = {
        "ours": lambda: op(*args, backend="torch"),
        "kernels*": lambda: op(*args, backend="triton"),
        "packed": lambda: packed(x),
        "F.linear": lambda: F.linear(x, weight, bias),
    }
    if mode == "forward":
        return peers
    return {name: (lambda fn=fn: fn().sum().backward()) for name, fn in peers.items()}


def per_call_us(fns: dict, repeats: int, calls: int) -> dict:
    """``{peer: median over repeats of the mean microseconds per call}``, round-robin."""
    for fn in fns.values():
        for _ in range(calls // 4 + 1):        # warm-up: caches, dispatcher, allocator
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for _ in range(calls):
                fn()
            samples[name].append((time.thread_time() - t0) / calls * 1e6)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    stub_kernel_launches()
    print(f"host time per call, us (N={N}, D={D}, K={K}, r={RANK}, CPU, 1 thread, "
          f"median of {opts.repeats} x {opts.calls} calls; kernels* = launches stubbed)")
    print(f"{'gates':<10} {'mode':<8} {'ours':>8} {'kernels*':>9} {'packed':>8} "
          f"{'F.linear':>9} {'ours/packed':>12}")
    for gates_kind, trainable in (("frozen", False), ("trainable", True)):
        args = make_args(trainable)
        for mode in ("forward", "fwd+bwd"):
            us = per_call_us(callables(args, mode), opts.repeats, opts.calls)
            print(f"{gates_kind:<10} {mode:<8} {us['ours']:8.1f} {us['kernels*']:9.1f} "
                  f"{us['packed']:8.1f} {us['F.linear']:9.1f} {us['ours'] / us['packed']:12.2f}")


if __name__ == "__main__":
    main()
