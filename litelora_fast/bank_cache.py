"""The packed bank of a ``GatedLoRALinear``, kept between calls: frozen and gated-off adapters
cost no copy per call.

A layer stores adapter ``k`` as two Parameters (``A_k``, ``B_k``: per-adapter freezing, optimizer
references that survive a recruit), while the op reads one packed ``lora_A`` ``(R, D_in)`` and
``lora_B`` ``(D_out, R)``. Packing them with ``torch.cat`` at every forward copies the whole bank,
frozen and zero-gate adapters included. :class:`BankCache` keeps the packed tensors instead and
re-copies an adapter only when its Parameters changed: each is stamped with ``(_version,
data_ptr)`` (every in-place write bumps ``_version``: an optimizer step, ``copy_``,
``load_state_dict``; ``.to()`` and ``.data =`` move ``data_ptr``). In continual learning only the
newest adapter trains, so one step re-copies ``r_new x (D_in + D_out)`` elements and the frozen
rest none. The packed tensors are in the dtype the op computes in (a float32 bank beside a
bfloat16 base is rounded once per change, not once per call).

Gradients reach the Parameters through :class:`_Unpack`, an autograd function whose forward
returns the packed tensors as they are and whose backward hands each Parameter its rows
(columns) of ``dlora_A`` (``dlora_B``), cast to its dtype.

A saved packed tensor that is re-copied before its backward runs (a Parameter changed in place
between a forward and its backward) makes autograd raise its "modified by an inplace operation"
error, as a Parameter itself would.

Not cached (a plain ``torch.cat`` per call, as before): under ``torch.func`` transforms, while
``torch.compile`` traces, for tensor subclasses (DTensor, fake tensors), and while
``torch.distributed`` is initialised (FSDP2 refills its unsharded Parameters without bumping
their version). Writes through ``Parameter.data`` bypass the version counter: after
``p.data.copy_(...)`` call ``layer.bank_cache.clear()``.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def cat_bank(As, Bs, dtype: Optional[torch.dtype] = None) -> tuple:
    """``(lora_A, lora_B)`` packed by ``torch.cat`` (differentiable), cast to ``dtype``."""
    As, Bs = list(As), list(Bs)
    A = As[0] if len(As) == 1 else torch.cat(As, 0)
    B = Bs[0] if len(Bs) == 1 else torch.cat(Bs, 1)
    if dtype is not None and A.dtype != dtype:
        A, B = A.to(dtype), B.to(dtype)
    return A, B


def _cacheable(params) -> bool:
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False    # under torch.func the Parameters are wrappers without storage
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return False
    return all(type(p) in PLAIN_TYPES and not p.is_meta for p in params)


class _Unpack(torch.autograd.Function):
    """Forward: the packed ``(lora_A, lora_B)``. Backward: each adapter's slice of their
    gradients to its own Parameters."""

    @staticmethod
    def forward(ctx, packed_A, packed_B, offsets, *params):
        ctx.offsets = offsets
        ctx.dtypes = [p.dtype for p in params]
        return packed_A.view_as(packed_A), packed_B.view_as(packed_B)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dA, dB):
        offsets, K = ctx.offsets, len(ctx.offsets) - 1
        needs = ctx.needs_input_grad[3:]
        grads = []
        for i in range(2 * K):
            k, g = i % K, (dA if i < K else dB)
            if not needs[i] or g is None:
                grads.append(None)
                continue
            lo, hi = offsets[k], offsets[k + 1]
            part = g[lo:hi] if i < K else g[:, lo:hi]
            grads.append(part.to(ctx.dtypes[i]).contiguous())
        return (None, None, None, *grads)


class BankCache:
    """The packed bank of one layer, re-copied per adapter when that adapter changes."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        """Forget the packed tensors: the next :meth:`packed` copies every adapter again."""
        self._layout = None
        self._A = self._B = None
        self._stamps: list = []
        self.copies = 0          # adapters copied into the packed tensors (tests count them)

    def __deepcopy__(self, memo):
        # A copied layer has new Parameters: it starts with an empty cache of its own.
        return BankCache()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.clear()

    def packed(self, As, Bs, dtype: torch.dtype) -> tuple:
        """``(lora_A, lora_B)`` of the adapters ``As``/``Bs`` in ``dtype``, differentiable with
        respect to every Parameter that requires grad."""
        As, Bs = list(As), list(Bs)
        params = As + Bs
        if len(As) == 1 and As[0].dtype == dtype or not _cacheable(params):
            return cat_bank(As, Bs, dtype)
        ranks = tuple(a.shape[0] for a in As)
        ref = As[0]
        layout = (dtype, ref.device, ranks, ref.shape[1], Bs[0].shape[0])
        offsets = tuple(itertools.accumulate(ranks, initial=0))
        with torch.no_grad():
            if layout != self._layout:
                self._layout = layout
                self._A = torch.empty(offsets[-1], ref.shape[1], dtype=dtype, device=ref.device)
                self._B = torch.empty(Bs[0].shape[0], offsets[-1], dtype=dtype,
                                      device=ref.device)
                self._stamps = [None] * len(As)
            for k, (A, B) in enumerate(zip(As, Bs)):
                stamp = (A._version, A.data_ptr(), B._version, B.data_ptr())
                if stamp != self._stamps[k]:
                    lo, hi = offsets[k], offsets[k + 1]
                    self._A[lo:hi].copy_(A)
                    self._B[:, lo:hi].copy_(B)
                    self._stamps[k] = stamp
                    self.copies += 1
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return _Unpack.apply(self._A, self._B, offsets, *params)
        return self._A, self._B
