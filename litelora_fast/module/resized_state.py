"""Optimizer state that follows a Parameter resized in place (the gates of ``add_adapter`` /
``remove_adapter``).

``GatedLoRALinear`` resizes its gate Parameters in place, so an optimizer built earlier steps the
live gates. Its per-parameter state (SGD's momentum, Adam's moments) still has the old rows;
torch would fail on the next step, or, after a remove and an add, silently pair adapter ``i``'s
momentum with another adapter. ``resized(p, keep)`` records each resize of ``p`` (``keep[i]``:
the old row of new row ``i``, ``None`` for a new one); a step pre-hook of every torch optimizer
then replays the resizes that optimizer has not seen on ``p``'s state tensors (kept rows moved,
new rows zero, as fresh state is), and a post-hook records the layout the state now has.

The hooks touch only Parameters that were resized (usually none): no cost for other models.
"""
from __future__ import annotations

import warnings
import weakref

import torch
from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                   register_optimizer_step_pre_hook)
from torch.utils.weak import WeakIdKeyDictionary

_HISTORY = WeakIdKeyDictionary()   # Parameter -> [(rows before, keep) of each resize]
_SEEN = weakref.WeakKeyDictionary()      # optimizer -> WeakIdKeyDictionary(Parameter -> seen)
_hooks = []


def resized(p: torch.Tensor, rows_before: int, keep: list) -> None:
    """Record that ``p``'s ``rows_before`` rows were rearranged by ``keep`` (in place)."""
    _HISTORY.setdefault(p, []).append((rows_before, list(keep)))
    if not _hooks:
        _hooks.append(register_optimizer_step_pre_hook(_before_step))
        _hooks.append(register_optimizer_step_post_hook(_after_step))


def _before_step(optimizer, args, kwargs) -> None:
    seen = _SEEN.get(optimizer)
    for p, history in list(_HISTORY.items()):
        state = optimizer.state.get(p)
        if not state:
            continue
        done = 0 if seen is None else seen.get(p, 0)   # stepped before any resize: 0
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and value.dim() >= 1:
                state[key] = _replay(value, history[done:])
        if any(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape != p.shape
               for v in state.values()):
            warnings.warn("litelora_fast: the optimizer state of a resized gate Parameter "
                          "could not be aligned with its rows; it is reset", RuntimeWarning)
            optimizer.state.pop(p)


def _after_step(optimizer, args, kwargs) -> None:
    seen = _SEEN.setdefault(optimizer, WeakIdKeyDictionary())
    for p, history in list(_HISTORY.items()):
        if optimizer.state.get(p):
            seen[p] = len(history)


def _replay(t: torch.Tensor, resizes: list) -> torch.Tensor:
    """``t`` (rows of the layout before ``resizes``) carried through them; unchanged when its
    rows do not match (the caller then resets the state)."""
    for rows_before, keep in resizes:
        if t.shape[0] != rows_before:
            return t
        new = t.new_zeros((len(keep),) + tuple(t.shape[1:]))
        for i, j in enumerate(keep):
            if j is not None:
                new[i] = t[j]
        t = new
    return t
