"""Activation memory: the fused op saves x and S (N x R), the reference per-adapter intermediates."""
import torch

import litelora_fast as llf
from litelora_fast.op.reference import gated_lora_linear_ref


def _saved_bytes(fn, *args) -> int:
    """Bytes of distinct storages autograd keeps for backward, minus the parameters and input."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
    del out
    return sum(b for p, b in storages.items() if p not in inputs)


def test_fast_path_saves_less_than_the_reference_at_K8_with_trainable_gates(fast_path, seed):
    n, d_in, d_out, K, r = 256, 64, 96, 8, 4
    x = torch.randn(n, d_in, requires_grad=True)
    W, b = torch.randn(d_out, d_in), torch.randn(d_out)
    A = torch.randn(K * r, d_in, requires_grad=True)
    B = torch.randn(d_out, K * r, requires_grad=True)
    g = torch.rand(K, requires_grad=True)
    ours = _saved_bytes(llf.gated_lora_linear, x, W, b, A, B, g)
    ref = _saved_bytes(gated_lora_linear_ref, x, W, b, A, B, g)
    # Ours: S (N x R) plus small gate tables; the reference: per adapter (N x r) and (N x D_out).
    assert ours <= n * K * r * 4 + 4096
    assert ref >= K * n * d_out * 4
    assert ours * 3 <= ref, (ours, ref)
