"""Steady-state training steps on the GPU: no host sync per call, and one step in a CUDA graph.

For each gate kind of ``gpu_plan.STEADY_GATES`` (frozen per-adapter gates with one at 0, so the
zero-gate skipping path runs; trainable per-adapter gates; per-row gates), a bf16
``gated_lora_linear`` training step (forward, backward, an SGD update of A and B in place):

1. ``STEADY_WARMUP_STEPS`` eager steps (compiles, the op's implementation choice, host caches);
2. ``STEADY_CHECKED_STEPS`` steps under ``torch.cuda.set_sync_debug_mode("error")``: any
   device-to-host read (``.item()``, ``.tolist()``, a data-dependent shape) raises;
3. one step captured in a ``torch.cuda.CUDAGraph`` on fresh inputs, replayed, and its gradients
   compared with an eager step on the same values (bf16 bound of ``tests/numerics.py``);
4. the same steps of peer (b) (``peers.PackedLoRA``, bound once) under the sync debug mode: the
   fair peer makes no host sync either (the CPU test counts host reads; this is the GPU's word).

Prints one line per gate kind and check; exits 1 on any failure. Needs CUDA (exits 2 without).
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_plan  # noqa: E402  (puts tests/ on sys.path)
from numerics import TOL, rel_err  # noqa: E402

DTYPE = torch.bfloat16
LR = 1e-3


class Step:
    """One training step of one layer on static tensors (what a CUDA graph needs)."""

    def __init__(self, gates_kind: str, seed: int):
        import litelora_fast as llf

        self.op = llf.gated_lora_linear
        c = gpu_plan.STEADY_CASE
        g = torch.Generator(device="cuda").manual_seed(seed)

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g, device="cuda") * scale).to(DTYPE)

        K, R, N = len(c.ranks), sum(c.ranks), c.lead[0]
        self.offsets, self.scaling = c.rank_offsets, [2.0] * K
        self.x = randn(N, c.d_in)
        self.weight, self.bias = randn(c.d_out, c.d_in, scale=c.d_in ** -0.5), randn(c.d_out)
        self.A = randn(R, c.d_in, scale=c.d_in ** -0.5).requires_grad_()
        self.B = randn(c.d_out, R, scale=R ** -0.5).requires_grad_()
        if gates_kind == "per-row":
            gates = torch.rand(N, K, generator=g, device="cuda") + 0.5
        else:
            gates = torch.rand(K, generator=g, device="cuda") + 0.5
            if gates_kind == "frozen-with-a-zero":
                gates[1] = 0.0
        self.gates = gates.to(DTYPE).requires_grad_(gates_kind != "frozen-with-a-zero")
        self.dy = randn(N, c.d_out)
        self.params = [p for p in (self.A, self.B, self.gates) if p.requires_grad]

    def use_packed_peer(self):
        """Run peer (b) instead of ours (bound once to this step's bank)."""
        from peers import PackedLoRA
        layer = PackedLoRA(self.weight, self.bias, self.A, self.B, self.gates, self.offsets,
                           self.scaling)
        self.op = lambda x, *_: layer(x)
        return self

    def __call__(self):
        y = self.op(self.x, self.weight, self.bias, self.A, self.B, self.gates, self.offsets,
                    self.scaling)
        grads = torch.autograd.grad(y, self.params, self.dy)
        with torch.no_grad():
            for p, d in zip(self.params, grads):
                p.add_(d, alpha=-LR)
        return grads


def check_no_sync(kind: str, packed: bool = False) -> tuple:
    step = Step(kind, seed=1)
    if packed:
        step.use_packed_peer()
    for _ in range(gpu_plan.STEADY_WARMUP_STEPS):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(gpu_plan.STEADY_CHECKED_STEPS):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return True, f"{gpu_plan.STEADY_CHECKED_STEPS} steps, no synchronizing call"


def check_graph(kind: str) -> tuple:
    step = Step(kind, seed=2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):   # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(gpu_plan.STEADY_WARMUP_STEPS):
            step()
    torch.cuda.current_stream().wait_stream(side)
    start = [p.detach().clone() for p in step.params]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = step()
    # Capture does not run the work: set the state, replay, and compare with eager.
    with torch.no_grad():
        for p, s in zip(step.params, start):
            p.copy_(s)
    graph.replay()
    torch.cuda.synchronize()
    replayed = [d.detach().clone() for d in static_grads]
    with torch.no_grad():
        for p, s in zip(step.params, start):
            p.copy_(s)
    eager = step()
    errs = [rel_err(r, e) for r, e in zip(replayed, eager)]
    worst = max(errs)
    return worst <= TOL[DTYPE], f"replay vs eager gradients: worst rel err {worst:.2e}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        print(f"gpu_steady imports: {len(gpu_plan.STEADY_GATES)} gate kinds x (sync-debug, "
              f"cuda-graph, (b) sync)")
        return 0
    if not torch.cuda.is_available():
        print("gpu_steady: no CUDA device, nothing checked")
        return 2
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    t0, failures = time.time(), 0
    for kind in gpu_plan.STEADY_GATES:
        for name, check in (("sync-debug", check_no_sync), ("cuda-graph", check_graph),
                            ("(b) sync", lambda k: check_no_sync(k, packed=True))):
            try:
                ok, msg = check(kind)
            except Exception as e:   # a sync in debug mode, or a capture error, is a failure
                ok, msg = False, f"raised {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {kind:20s} {name:11s} {msg}", flush=True)
    print(f"{failures} failed checks; {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
