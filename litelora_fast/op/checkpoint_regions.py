"""The gradient-checkpointing regions a call runs in, and whether one of them is recomputing.

A checkpointed function runs twice: in the forward pass, and again (the recompute) during
``backward()``. What a call decides from state outside its inputs (LoRA dropout's RNG draw,
``recompute_seeds.py``; the routing ``llf.route`` installed, ``routing_state.py``) must be decided
the same way both times, and the state may have changed in between (the RNG advanced, the
``with`` block closed). So the forward records its decision on the region's own object, and the
recompute reads it back from there: the ``CheckpointFunction`` node (``use_reentrant=True``) or
the ``_CheckpointFrame`` (``use_reentrant=False``), both freed with the autograd graph.

Regions are recognised by ``torch.utils.checkpoint``'s own objects: on the Python stack,
``checkpoint`` itself and the generator it drives (a non-reentrant forward),
``CheckpointFunction.forward`` (a reentrant forward), ``CheckpointFunction.backward`` before its
recompute has returned (a reentrant recompute) and the unpack hook that runs a non-reentrant
recompute; and the saved-tensors hook a non-reentrant forward installs (the innermost region
however it was entered). HF's gradient checkpointing, ``checkpoint_sequential``,
``checkpoint_wrapper`` and the composable ``torch.distributed._composable.checkpoint`` all go
through them; other recompute machinery (a hand-written one) is not seen. Nothing is looked up
under ``torch.compile`` tracing.

A recompute is keyed by its backward pass (the graph task, or the ``GraphExecGroup``): a second
``backward(retain_graph=True)`` recomputes again and replays from the start.
"""
from __future__ import annotations

import inspect
import sys

import torch
import torch.utils.checkpoint as tuc


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
_PACK_NON_REENTRANT = _nested_code(tuc._checkpoint_hook.__init__, "pack_hook")


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


def _hooked_forward():
    """The ``_CheckpointFrame`` whose forward installed the innermost saved-tensors hooks, or
    ``None``: a non-reentrant forward however it was entered (the composable
    ``torch.distributed._composable.checkpoint`` drives the generator from module hooks, with no
    ``checkpoint`` frame on the stack)."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    pack = hooks[0] if hooks else None
    code = getattr(pack, "__code__", None)
    if code is not _PACK_NON_REENTRANT:
        return None
    return pack.__closure__[code.co_freevars.index("frame")].cell_contents


def around():
    """``(replaying, forwards)`` for the calling code: ``replaying`` the innermost region being
    recomputed, as ``(object, gid)``, or ``None``; ``forwards`` the objects of the regions being
    forwarded inside it (all of them when nothing is recomputing), innermost first. Both empty
    under ``torch.compile`` tracing."""
    if torch.compiler.is_compiling():
        return None, []
    hooked = _hooked_forward()
    # (the innermost region: inside any region the stack shows)
    forwards = [] if hooked is None else [hooked]
    frame = sys._getframe(1)
    while frame is not None:
        region = _region(frame)
        if region is not None:
            if region[1] is not None:
                return region, forwards
            if region[0] is not hooked:
                forwards.append(region[0])
        frame = frame.f_back
    return None, forwards


def in_backward() -> bool:
    """Whether this thread runs inside a backward pass (where a recompute runs): a cheap test
    before looking for a replaying region (never under ``torch.compile`` tracing)."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def recorded(obj, attr: str) -> list:
    """The list ``attr`` that forwards append to on region ``obj`` (created empty)."""
    values = getattr(obj, attr, None)
    if values is None:
        values = []
        setattr(obj, attr, values)
    return values


def replay(region, attr: str, what: str):
    """For ``region`` ``(obj, gid)``: the next value of ``obj``'s list ``attr`` in the recompute
    of graph task ``gid``, in the order the forward appended them."""
    obj, gid = region
    values = recorded(obj, attr)
    cursors = recorded(obj, attr + "_cursors")
    cursor = next((c for c in cursors if c[0] == gid), None)
    if cursor is None:
        cursor = [gid, 0]
        cursors.append(cursor)
    i = cursor[1]
    if i >= len(values):
        raise RuntimeError(
            f"{what}: a gradient-checkpointing recompute made {i + 1} calls where its forward "
            f"made {len(values)}; the recompute must run the forward's calls (same modules, same "
            "training mode, same inputs)")
    cursor[1] = i + 1
    return values[i]
