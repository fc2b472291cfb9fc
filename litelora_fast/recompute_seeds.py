"""LoRA dropout seeds that a gradient-checkpointing recompute takes from the original forward.

A checkpointed forward is run twice: once in the forward pass, and again (the recompute) during
``backward()``, which saves the tensors the backward uses. The recompute must drop the elements
the forward dropped: the forward's output, and so the gradient flowing in, came from that mask.
``torch.utils.checkpoint`` restores the RNG state before the recompute when
``preserve_rng_state=True`` (its default), so a fresh draw repeats; with ``False`` it does not,
and a fresh draw in the recompute is another mask (gradients off by rel 0.87 on the test block).

So a call's seed is not left to the RNG state: :func:`call_seed` finds the checkpoint region the
call runs in and

- in the region's forward, draws a fresh seed (``lora_dropout.new_seed``, on the device) and
  appends the seed tensor to the region's list;
- in the region's recompute, takes the seed tensors of that list in call order (the recompute
  replays the forward's calls in order; each backward pass, a graph task, has its own cursor, so a
  second ``backward(retain_graph=True)`` replays from the start). The recompute then uses the very
  tensor the forward drew: the same mask, bit for bit, with no host read (nothing is copied to the
  host; under CUDA graph capture the seed stays a captured device tensor).

The list lives on the region's own object (the ``CheckpointFunction`` node with
``use_reentrant=True``, the ``_CheckpointFrame`` without), so it is freed with the autograd graph.
Nested checkpoints: a call inside a recompute replays the region being recomputed, and records
into every region forwarded inside it (an inner checkpoint run again by the outer recompute, whose
own recompute comes later).

Regions are recognised by ``torch.utils.checkpoint``'s frames on the Python stack
(``checkpoint``, ``CheckpointFunction.forward``/``backward`` and the unpack hook that runs a
non-reentrant recompute): HF's ``gradient_checkpointing_enable``, ``checkpoint_sequential`` and
``checkpoint_wrapper`` all go through them. Other recompute machinery (the composable
``torch.distributed._composable.checkpoint``, a hand-written one) is not seen: there the call
draws fresh, which is exact only when the RNG state is restored before the recompute. Under
``torch.compile`` nothing is looked up (Dynamo traces the draw; the compiled graph saves the seed
for the backward, see docs/module.md).
"""
from __future__ import annotations

import inspect
import sys

import torch
import torch.utils.checkpoint as tuc

from .lora_dropout import new_seed

_SEEDS = "_llf_dropout_seeds"      # attribute on a region object: the seeds of its forward
_CURSORS = "_llf_dropout_cursors"  # attribute on a region object: {graph task: next index}


def _nested_code(func, name: str):
    """The code object of the function ``name`` defined inside ``func``."""
    for const in func.__code__.co_consts:
        if inspect.iscode(const) and const.co_name == name:
            return const
    raise RuntimeError(f"torch.utils.checkpoint changed: no {name} inside {func.__qualname__}")


_FWD_REENTRANT = tuc.CheckpointFunction.forward.__code__
_RECOMPUTE_REENTRANT = tuc.CheckpointFunction.backward.__code__
_CHECKPOINT = inspect.unwrap(tuc.checkpoint).__code__
_RECOMPUTE_NON_REENTRANT = _nested_code(tuc._checkpoint_hook.__init__, "unpack_hook")


def _region(frame):
    """``(region object, gid)`` for a recompute frame, ``(region object, None)`` for a forward
    frame, ``None`` for any other frame."""
    code = frame.f_code
    if code is _FWD_REENTRANT:
        return frame.f_locals["ctx"], None
    if code is _RECOMPUTE_REENTRANT:
        f_locals = frame.f_locals
        # The node's backward recomputes until ``outputs`` is bound, then runs a backward of its
        # own, where inner checkpoints recompute: the node is no longer replaying then.
        if "outputs" in f_locals:
            return None
        return f_locals["ctx"], torch._C._current_graph_task_id()
    if code is _RECOMPUTE_NON_REENTRANT:
        f_locals = frame.f_locals
        return f_locals["frame"], f_locals["gid"]
    if code is _CHECKPOINT:
        gen = frame.f_locals.get("gen")     # only with use_reentrant=False
        gen_frame = getattr(gen, "gi_frame", None)
        if gen_frame is not None and "new_frame" in gen_frame.f_locals:
            return gen_frame.f_locals["new_frame"], None
    return None


def _regions():
    """The checkpoint regions around this call, innermost first: ``[(object, gid | None)]``."""
    found = []
    frame = sys._getframe(2)
    while frame is not None:
        region = _region(frame)
        if region is not None:
            found.append(region)
        frame = frame.f_back
    return found


def call_seed(device) -> torch.Tensor:
    """The LoRA dropout seed of one call on ``device`` (module docstring): the original forward's
    seed tensor in a checkpoint recompute, else a fresh one (recorded when in a region)."""
    if torch.compiler.is_compiling():
        return new_seed(device)
    regions = _regions()
    replaying = next((i for i, (_, gid) in enumerate(regions) if gid is not None), None)
    if replaying is None:
        seed, forwards = new_seed(device), regions
    else:
        seed, forwards = _replay(*regions[replaying]), regions[:replaying]
    for obj, gid in forwards:
        if gid is None:
            _seeds_of(obj).append(seed)
    return seed


def _seeds_of(obj) -> list:
    seeds = getattr(obj, _SEEDS, None)
    if seeds is None:
        seeds = []
        setattr(obj, _SEEDS, seeds)
    return seeds


def _replay(obj, gid) -> torch.Tensor:
    """The next seed of region ``obj``'s forward for the recompute of graph task ``gid``."""
    seeds = _seeds_of(obj)
    cursors = getattr(obj, _CURSORS, None)
    if cursors is None:
        cursors = {}
        setattr(obj, _CURSORS, cursors)
    i = cursors.get(gid, 0)
    if i >= len(seeds):
        raise RuntimeError(
            f"LoRA dropout: a gradient-checkpointing recompute made {i + 1} dropout calls where "
            f"its forward made {len(seeds)}; the recompute must run the forward's calls (same "
            "modules, same training mode, same inputs)")
    cursors[gid] = i + 1
    return seeds[i]
