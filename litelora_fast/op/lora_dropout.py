"""LoRA dropout of one call: its seed, its keep-mask, and a hook that records masks for tests.

As in PEFT, dropout applies to the adapter branch's input only (docs/MATH.md, section 1):

    y = x W^T + b + ((drop(x) A^T) * G_E) B^T,     drop(x) = x * keep / (1 - p)

One mask per call is shared by all adapters of the bank (PEFT draws one per adapter; the
expectation and the variance per adapter are the same). The mask is never stored: a call holds a
one-element int64 ``seed`` on x's device, and the mask is a pure function of ``(seed, row,
column)`` (``kernels/dropout.py``: Philox 4x32-10 with the column group ``d // 4`` and the row as
counters, its four outputs the group's four columns).

- The Triton kernels draw it in-kernel: in the shrink (``S = drop(x) A^T``), for ``dA =
  dS^T drop(x)`` and for the adapter term of ``dx``. Saved for backward: ``x``, ``S``, the seed.
- The PyTorch backend materialises it as a ``keep / (1 - p)`` operand for the duration of one
  primitive (``scaled_keep``): on CUDA or under ``TRITON_INTERPRET=1`` from the same Triton mask
  kernel, so both backends drop the same elements; on a plain CPU run from a ``torch.Generator``
  seeded with the seed's value (a CPU tensor: reading it is no device sync; other bits than the
  kernels', cheaper to draw than ``F.dropout``'s), with a one-entry memo so that ``dA`` and ``dx``
  share one draw.
- ``philox_keep_mask``: the kernels' mask computed in PyTorch, bit for bit (tests, references).

The seed is drawn with ``torch.randint`` on x's device: reproducible under
``torch.manual_seed``, no host read, and a CUDA graph replay draws a fresh one.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .. import settings

_RECORDERS: list = []


def check_p(dropout) -> float:
    """``dropout`` as a float in ``[0, 1)``; ``ValueError``/``TypeError`` naming it otherwise."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a real number in [0, 1), got {type(dropout).__name__} "
                        f"{dropout!r}")
    p = float(dropout)
    if not math.isfinite(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return p


def new_seed(device) -> torch.Tensor:
    """The seed of one call: a (1,) int64 on ``device`` from torch's generator for that device."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


# Philox 4x32-10 as Triton's ``tl.philox`` runs it (triton/language/random.py).
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85


def philox_keep_mask(seed: torch.Tensor, n: int, d_in: int, p: float) -> torch.Tensor:
    """The kernels' ``(n, d_in)`` bool keep-mask computed in PyTorch, bit for bit.

    Element ``(r, c)`` is kept iff output ``c % 4`` of Philox 4x32-10 with key ``seed`` and
    counters ``(c // 4, r, 0, 0)`` is at least ``keep_threshold(p)``. Exact on any device, but
    7-14x the time of ``F.dropout`` on the CPU (measured: forty int64 passes per four elements),
    so the plain-CPU path does not use it (``keep_mask``): it is what tests and a reference
    compare the kernels' mask to."""
    groups = (d_in + 3) // 4
    dev = seed.device
    c0 = torch.arange(groups, dtype=torch.int64, device=dev).expand(n, groups).contiguous()
    c1 = torch.arange(n, dtype=torch.int64, device=dev)[:, None].expand(n, groups).contiguous()
    c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0)
    key = int(seed.reshape(()))
    k0, k1 = key & _M32, (key >> 32) & _M32
    for _ in range(10):
        # 32 x 32-bit products wrap in int64; the masks keep their high and low words.
        prod_a, prod_b = c0 * _ROUND_A, c2 * _ROUND_B
        c0, c2 = ((prod_b >> 32) & _M32) ^ c1 ^ k0, ((prod_a >> 32) & _M32) ^ c3 ^ k1
        c1, c3 = prod_b & _M32, prod_a & _M32
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    from ..kernels.tiles import keep_threshold     # the kernels' own rule, run on the host

    bits = torch.stack((c0, c1, c2, c3), dim=-1).reshape(n, 4 * groups)[:, :d_in]
    return bits >= keep_threshold(p)


def keep_mask(seed: torch.Tensor, n: int, d_in: int, p: float) -> torch.Tensor:
    """The ``(n, d_in)`` bool keep-mask of the call whose seed is ``seed``."""
    # The Triton mask kernel runs on CUDA, and on CPU tensors under TRITON_INTERPRET=1 (the same
    # call-time rule as backends.interpreter_requested; backends imports this module, not back).
    if seed.is_cuda or settings.interpret():
        from ..kernels.dropout import dropout_mask

        return dropout_mask(seed, n, d_in, p)
    return _cpu_keep(seed, n, d_in, p)


def _cpu_keep(seed: torch.Tensor, n: int, d_in: int, p: float, dtype=torch.bool) -> torch.Tensor:
    """The plain-CPU keep-mask as ``dtype`` 0/1, from a ``torch.Generator`` seeded with the
    seed's value (a CPU tensor: reading it is no sync).

    Each full-range 64-bit draw gives four 16-bit fields, and a field keeps its element iff it is
    at least ``round(p * 2**16)`` (compared as int16: the same count of values): a quarter of the
    draws of ``torch.rand >= p``, and the comparison writes ``dtype`` directly. The drop rate is
    then ``p`` to within ``2**-17``; where that is over 0.1% of ``p`` (``p < 0.0077``) the mask is
    ``torch.rand >= p``.
    """
    gen = torch.Generator(device=seed.device)
    gen.manual_seed(int(seed.reshape(())))
    count = n * d_in
    threshold = round(p * 2**16)
    if abs(threshold / 2**16 - p) > 1e-3 * p:
        values, bound = torch.rand(count, generator=gen, device=seed.device), p
    else:
        draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=seed.device)
        values = draws.random_(-2**63, None, generator=gen).view(torch.int16)[:count]
        bound = threshold - 2**15
    keep = torch.empty((n, d_in), dtype=dtype, device=seed.device)
    torch.ge(values, bound, out=keep.view(-1))
    return keep


# One (key, keep / (1 - p)) pair on the plain-CPU path: a call's mask is needed up to three times
# (shrink, dA, dx) and each draw is a pass as costly as F.dropout's. The key is the seed's value,
# so the memo caches a pure function (it is never stale); it holds one activation-sized tensor at
# most, and ``last_use`` (dx, the last use in a backward) empties it.
_MEMO: list = [None, None]


def scaled_keep(seed: torch.Tensor, n: int, d_in: int, p: float, dtype,
                last_use: bool = False) -> torch.Tensor:
    """``keep / (1 - p)`` of the call whose seed is ``seed`` as an ``(n, d_in)`` ``dtype`` tensor
    (the PyTorch backend's operand; the same elements as ``keep_mask``)."""
    if seed.is_cuda or settings.interpret():
        return keep_mask(seed, n, d_in, p).to(dtype) * (1.0 / (1.0 - p))
    key = (int(seed.reshape(())), n, d_in, float(p), dtype, seed.device)
    memo_key, scaled = _MEMO
    if memo_key != key:
        scaled = _cpu_keep(seed, n, d_in, p, dtype).mul_(1.0 / (1.0 - p))
    _MEMO[:] = (None, None) if last_use else (key, scaled)
    return scaled


def dropped(x2d: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``drop(x2d) = x2d * keep / (1 - p)`` as a temporary (PyTorch backend, rare kernel paths)."""
    return x2d * scaled_keep(seed, x2d.shape[0], x2d.shape[1], p, x2d.dtype)


def record(seed: torch.Tensor, n: int, d_in: int, p: float) -> None:
    """Hand the call's mask to every active ``recorded_masks`` block (no work when none is)."""
    for masks in _RECORDERS:
        masks.append(keep_mask(seed, n, d_in, p))


@contextlib.contextmanager
def recorded_masks():
    """``with recorded_masks() as masks:`` appends the ``(N, D_in)`` bool keep-mask of every
    call with dropout in the block, in call order (a debugging and testing hook: it costs one
    extra mask computation per call while active)."""
    masks: list = []
    _RECORDERS.append(masks)
    try:
        yield masks
    finally:
        _RECORDERS.remove(masks)
