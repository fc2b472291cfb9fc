"""The functional benchmark peers (docs/MATH.md, section 6), each as ``fn(x, weight, bias, lora_A,
lora_B, gates, rank_offsets, scaling) -> y``; the fifth peer, PEFT's own layer, is a module and
lives in ``peft_peer.py``.

- ``ours``: ``litelora_fast.gated_lora_linear`` (Triton on CUDA, the PyTorch fast path on CPU);
- ``reference`` (a): ``gated_lora_linear_ref``, the loop over adapters as PEFT does it;
- ``packed`` (b): ``packed_lora_linear`` below, the best plain-PyTorch path, written as ordinary
  autograd-visible torch code (the shape of unsloth's ``matmul_lora``);
- ``base`` (c): ``F.linear`` alone, the floor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import litelora_fast
from litelora_fast.reference import gated_lora_linear_ref
from litelora_fast.validation import validate


def packed_lora_linear(x, weight, bias, lora_A, lora_B, gates, rank_offsets=None, scaling=None):
    """``y = x W^T + b + (S * G_E) B_act^T`` with ``S = x A_act^T``: one shrink GEMM over the packed
    bank, the gate scaling as one pointwise multiply, one ``addmm_`` into the base output.

    As "best" plain PyTorch it also skips adapters whose gate is exactly 0 when the gates do not
    train (one host sync, as ours does); with trainable gates every adapter stays, since a zero
    gate still has a gradient.
    """
    p = validate(x, weight, bias, lora_A, lora_B, gates, rank_offsets, scaling)
    x2d = p.x2d
    y = torch.addmm(bias, x2d, weight.t()) if bias is not None else x2d @ weight.t()
    ranks = p.ranks
    if gates.requires_grad:
        active = [k for k, r in enumerate(ranks) if r > 0]
    else:
        live = (p.gates2d != 0).any(dim=0).tolist()
        active = [k for k, r in enumerate(ranks) if r > 0 and live[k]]
    if active:
        o = p.rank_offsets
        if active == list(range(active[0], active[-1] + 1)):
            lo, hi = o[active[0]], o[active[-1] + 1]
            A, B = lora_A[lo:hi], lora_B[:, lo:hi]
        else:
            cols = torch.cat([torch.arange(o[k], o[k + 1], device=x.device) for k in active])
            A, B = lora_A.index_select(0, cols), lora_B.index_select(1, cols)
        idx = torch.tensor(active, device=x.device)
        act_ranks = torch.tensor([ranks[k] for k in active], device=x.device)
        scale = torch.tensor(p.scaling, device=x.device, dtype=gates.dtype)[idx]
        g = p.gates2d[:, idx] if p.per_row_gates else gates[idx]
        G_E = torch.repeat_interleave(g * scale, act_ranks, dim=-1)   # (R_act,) or (N, R_act)
        S = x2d @ A.t()
        y.addmm_(S * G_E.to(S.dtype), B.t())
    return y.reshape(*p.lead_shape, weight.shape[0])


def base_linear(x, weight, bias, *_):
    """The base layer alone."""
    return F.linear(x, weight, bias)


FUNCTIONAL_PEERS = {
    "ours": litelora_fast.gated_lora_linear,
    "reference": gated_lora_linear_ref,
    "packed": packed_lora_linear,
    "base": base_linear,
}
