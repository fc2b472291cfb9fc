"""LoRA dropout seeds that a gradient-checkpointing recompute takes from the original forward.

The recompute of a checkpointed forward must drop the elements the forward dropped: the
forward's output, and so the gradient flowing in, came from that mask. ``torch.utils.checkpoint``
restores the RNG state before the recompute when ``preserve_rng_state=True`` (its default), so a
fresh draw repeats; with ``False`` it does not, and a fresh draw in the recompute is another mask
(gradients rel 0.87 off on a two-layer block).

So :func:`call_seed` does not leave the seed to the RNG state. In a checkpoint region's forward
(``checkpoint_regions``) it draws a fresh seed (``lora_dropout.new_seed``, on the device) and
appends the seed tensor to the region's list; in the region's recompute it takes the tensors of
that list in call order (the recompute replays the forward's calls in order). The recompute then
uses the very tensor the forward drew: the same mask, bit for bit, and no host read (under CUDA
graph capture the seed stays a captured device tensor). Nested checkpoints: a call inside a
recompute replays the region being recomputed and appends to every region forwarded inside it
(an inner checkpoint run again by the outer recompute, whose own recompute comes later).

A forward inside ``backward()`` outside any recognised recompute (a hand-written recompute) draws
afresh, exact only if that machinery restores the RNG state: a ``RuntimeWarning`` says so, once.
"""
from __future__ import annotations

import warnings

import torch

from . import checkpoint_regions
from .lora_dropout import new_seed

_SEEDS = "_llf_dropout_seeds"      # attribute on a region object: the seeds of its forward
_WARNED = [False]                  # the unrecognised-recompute warning, given once a process


def call_seed(device, stacklevel: int = 3) -> torch.Tensor:
    """The LoRA dropout seed of one call on ``device`` (module docstring): the original forward's
    seed tensor in a checkpoint recompute, else a fresh one (recorded when in a region).
    ``stacklevel``: the warning's, counted from here (3: the caller's caller)."""
    replaying, forwards = checkpoint_regions.around()
    if replaying is None:
        if not _WARNED[0] and checkpoint_regions.in_backward():
            _WARNED[0] = True
            warnings.warn(
                "LoRA dropout: a layer ran its forward inside backward() outside a "
                "torch.utils.checkpoint recompute (a hand-written recompute?). Its dropout mask is "
                "drawn afresh: it equals the original forward's only if that recompute restored "
                "the RNG state first (docs/module.md, dropout under gradient checkpointing)",
                RuntimeWarning, stacklevel=stacklevel)
        seed = new_seed(device)
    else:
        seed = checkpoint_regions.replay(replaying, _SEEDS, "LoRA dropout")
    for obj in forwards:
        checkpoint_regions.recorded(obj, _SEEDS).append(seed)
    return seed
