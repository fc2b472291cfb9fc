"""The functional benchmark peers (docs/MATH.md, section 6); the fifth peer, PEFT's own layer, is a
module and lives in ``peft_peer.py``.

- ``ours``: ``litelora_fast.gated_lora_linear`` (on CUDA the op's measured choice; on the CPU the
  PyTorch fast path);
- ``reference`` (a): ``gated_lora_linear_ref``, the loop over adapters as PEFT does it;
- ``packed`` (b): ``PackedLoRA`` below, the packed bank as a competent PyTorch user writes it
  (the shape of Unsloth's ``matmul_lora``: ``out = x W^T; out.addmm_(x A^T, B^T, alpha=s)``):
  every index and scale tensor is built once, when the peer is bound to its weights, so a
  forward and backward make no host sync (``tests/test_bench_peers.py`` counts them);
- ``base`` (c): ``F.linear`` alone, the floor.

With LoRA dropout ``p > 0`` (b) does what a PyTorch user does, ``F.dropout`` on ``x`` before the
shrink GEMM: the dropped copy of ``x`` is materialised and autograd keeps it for ``dA``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import litelora_fast
from litelora_fast.op.reference import gated_lora_linear_ref


def _offsets(rank_offsets, R: int, K: int) -> list:
    if rank_offsets is None:
        if K == 0 or R % K:
            raise ValueError(f"rank_offsets: None needs R divisible by K, got R={R}, K={K}")
        return [k * (R // K) for k in range(K + 1)]
    offsets = [int(o) for o in (rank_offsets.tolist() if torch.is_tensor(rank_offsets)
                                else rank_offsets)]
    if len(offsets) != K + 1 or offsets[0] != 0 or offsets[-1] != R:
        raise ValueError(f"rank_offsets: expected K+1 = {K + 1} ints from 0 to R = {R}, got "
                         f"{offsets}")
    return offsets


class PackedLoRA:
    """Peer (b) bound to one bank: ``peer(x) = x W^T + b + (drop(x) A_act^T * G_E) B_act^T``.

    Built once (host work: which adapters are active, their columns, the per-column scale);
    each call then runs only device work: one base GEMM, one shrink GEMM over the packed active
    bank, the gate scaling (a gather of the gates, ``repeat_interleave`` with ``output_size``)
    and one ``addmm_`` into the base output.

    As "best" plain PyTorch it skips adapters whose gate is exactly 0 when the gates do not
    train, read once here (a user deactivates such adapters, as in PEFT); with trainable gates
    every adapter stays, since a zero gate still has a gradient.
    """

    def __init__(self, weight, bias, lora_A, lora_B, gates, rank_offsets=None, scaling=None,
                 dropout: float = 0.0):
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected 0 <= p < 1, got {dropout!r}")
        R, K = lora_A.shape[0], gates.shape[-1]
        if lora_B.shape[1] != R:
            raise ValueError(f"lora_B: expected {R} columns (lora_A has {R} rows), got "
                             f"{tuple(lora_B.shape)}")
        offsets = _offsets(rank_offsets, R, K)
        if scaling is None:
            scaling = [1.0] * K
        elif isinstance(scaling, (int, float)):
            scaling = [float(scaling)] * K
        scaling = [float(s) for s in (scaling.tolist() if torch.is_tensor(scaling) else scaling)]
        if len(scaling) != K:
            raise ValueError(f"scaling: expected {K} values, got {len(scaling)}")
        ranks = [offsets[k + 1] - offsets[k] for k in range(K)]
        if gates.requires_grad:
            active = [k for k in range(K) if ranks[k] > 0]
        else:   # host read of frozen gates, once per bound bank
            live = (gates.detach().reshape(-1, K) != 0).any(dim=0).tolist()
            active = [k for k in range(K) if ranks[k] > 0 and live[k]]
        dev = lora_A.device
        self.weight, self.bias, self.gates, self.p = weight, bias, gates, float(dropout)
        self.lora_A, self.lora_B = lora_A, lora_B
        self.r_act = sum(ranks[k] for k in active)
        self.slice = self.cols = None
        if active and active == list(range(active[0], active[-1] + 1)):
            self.slice = (offsets[active[0]], offsets[active[-1] + 1])   # views of the bank
        elif active:
            self.cols = torch.cat([torch.arange(offsets[k], offsets[k + 1], device=dev)
                                   for k in active])
        self.idx = torch.tensor(active, device=dev, dtype=torch.long)
        self.act_ranks = torch.tensor([ranks[k] for k in active], device=dev, dtype=torch.long)
        self.scale = torch.tensor([scaling[k] for k in active], device=dev, dtype=gates.dtype)

    def _bank(self):
        if self.slice is not None:
            lo, hi = self.slice
            return self.lora_A[lo:hi], self.lora_B[:, lo:hi]
        return self.lora_A.index_select(0, self.cols), self.lora_B.index_select(1, self.cols)

    def __call__(self, x):
        weight, bias = self.weight, self.bias
        x2d = x.reshape(-1, x.shape[-1])
        y = x2d @ weight.t() if bias is None else torch.addmm(bias, x2d, weight.t())
        if self.r_act:
            A, B = self._bank()
            K = self.gates.shape[-1]
            g = self.gates.reshape(-1, K).index_select(1, self.idx)   # (1 or N, K_act)
            if self.gates.dim() == 1:
                g = g[0]
            G_E = torch.repeat_interleave(g * self.scale, self.act_ranks, dim=-1,
                                          output_size=self.r_act)
            x_l = F.dropout(x2d, self.p, training=True) if self.p else x2d
            S = x_l @ A.t()
            y.addmm_(S * G_E.to(S.dtype), B.t())
        return y.reshape(*x.shape[:-1], weight.shape[0])


def packed_lora_linear(x, weight, bias, lora_A, lora_B, gates, rank_offsets=None, scaling=None,
                       dropout: float = 0.0):
    """One call of peer (b) with the bank bound afresh (host work each call: bind a
    ``PackedLoRA`` once and call it instead where the bank is reused)."""
    return PackedLoRA(weight, bias, lora_A, lora_B, gates, rank_offsets, scaling, dropout)(x)


def base_linear(x, weight, bias, *_, **__):
    """The base layer alone."""
    return F.linear(x, weight, bias)


def hybrid_available() -> bool:
    """Whether the op has the ``"hybrid"`` backend (cuBLAS base GEMMs, Triton LoRA work)."""
    from litelora_fast.op import backends
    return "hybrid" in getattr(backends, "BACKENDS", {})


def bind(peer: str, args: tuple, dropout: float = 0.0):
    """``fn()`` running one forward of the functional ``peer`` on ``args`` (the positional
    arguments of ``gated_lora_linear``): ``ours``, ``hybrid`` (ours with ``backend="hybrid"``),
    ``reference``, ``packed`` or ``base``. Binding does the host work once."""
    x, weight, bias, lora_A, lora_B, gates, offsets, scaling = args
    if peer == "packed":
        layer = PackedLoRA(weight, bias, lora_A, lora_B, gates, offsets, scaling, dropout)
        return lambda: layer(x)
    if peer == "ours":
        return lambda: litelora_fast.gated_lora_linear(*args, dropout=dropout)
    if peer == "hybrid":
        return lambda: litelora_fast.gated_lora_linear(*args, dropout=dropout, backend="hybrid")
    if peer == "reference":
        return lambda: gated_lora_linear_ref(*args, dropout=dropout)
    if peer == "base":
        return lambda: F.linear(x, weight, bias)
    raise ValueError(f"peer must be one of ours, hybrid, reference, packed, base; got {peer!r}")
