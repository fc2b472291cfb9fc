"""The routing in effect on this thread: what ``llf.route`` installs and ``GatedLoRALinear``
reads.

A tiny module of its own so that ``layer.py`` can look the routing up without importing
``routing.py`` (which imports the layer). The state is thread-local. Also here, for ``inject``
and ``from_peft``: the guard that refuses ``model(..., adapter_ids=...)`` on a model that does not
route by it (:func:`refuse_unaccepted_input`).

A gradient-checkpointing recompute runs the layers again during ``backward()``: possibly after
the ``with`` block has closed, inside another one, or on an autograd thread that never saw it.
So a layer does not read the thread's routing there: :func:`for_call` records, in each
checkpoint region's forward, the routing its layers ran under on the region's own object, and a
recompute of that region reads it back from there (``checkpoint_regions.py``). That holds
however checkpointing was turned on (HF's flag before or inside the block, or
``torch.utils.checkpoint`` by hand) and whichever ``use_reentrant``.
"""
from __future__ import annotations

import contextlib
import inspect
import threading

from ..op import checkpoint_regions

# The keyword argument ``model(..., adapter_ids=...)`` routes by (``routing.accept_adapter_ids``).
ROUTE_INPUT = "adapter_ids"
_GUARDED = "_llf_route_input_guarded"     # attribute on a model: refuse_unaccepted_input ran
ACCEPTED = "_llf_route_input"             # attribute on a model: the key accept_adapter_ids takes
_LOCAL = threading.local()
_ROUTING = "_llf_routing"     # attribute on a checkpoint region: the routing of its forward
_MIXED = object()             # ... when its layers ran under two different routings
_EVER_ROUTED = [False]        # whether this process installed a routing yet


def current():
    """The ``Routing`` installed on this thread, or ``None``."""
    return getattr(_LOCAL, "routing", None)


def for_call():
    """The routing a layer's forward runs under now: in a checkpoint recompute, the one its
    forward ran under (``None`` included); else :func:`current`, recorded on the checkpoint
    regions being forwarded."""
    routing = current()
    if routing is None and not (_EVER_ROUTED[0] and checkpoint_regions.in_backward()):
        return None                  # the common cases cost no stack walk
    replaying, forwards = checkpoint_regions.around()
    if replaying is not None:
        routing = getattr(replaying[0], _ROUTING, None)
        if routing is _MIXED:
            raise RuntimeError(
                "llf.route: a checkpointed function ran its layers under two different routings "
                "(a route block entered inside it); its recompute cannot tell which layer had "
                "which. Enter the route block outside the checkpointed function")
    if routing is not None:
        for obj in forwards:
            before = getattr(obj, _ROUTING, None)
            setattr(obj, _ROUTING, routing if before is None or before is routing else _MIXED)
    return routing


@contextlib.contextmanager
def installed(routing):
    """Install ``routing`` (a ``Routing`` or ``None``) for the block, then restore the previous."""
    previous = current()
    _LOCAL.routing = routing
    if routing is not None:
        _EVER_ROUTED[0] = True
    try:
        yield routing
    finally:
        _LOCAL.routing = previous


def refuse_unaccepted_input(model) -> None:
    """Make ``model(..., adapter_ids=...)`` raise ``TypeError`` unless ``accept_adapter_ids``
    installed that input: a Hugging Face model takes ``**kwargs`` and would drop it, and every
    row would silently get the layers' own gates. Once per model; nothing for a model whose
    ``forward`` names an ``adapter_ids`` parameter itself."""
    if getattr(model, _GUARDED, False):
        return
    try:
        takes_it = ROUTE_INPUT in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):      # a forward without a signature: nothing to check
        takes_it = True
    if takes_it:
        return

    def check(module, args, kwargs):
        if ROUTE_INPUT in kwargs and getattr(module, ACCEPTED, None) != ROUTE_INPUT:
            raise TypeError(
                f"{type(module).__name__}(..., {ROUTE_INPUT}=...): this model does not route by "
                f"{ROUTE_INPUT} (it would drop the argument and give every row the layers' own "
                f"gates). Call llf.accept_adapter_ids(model) first (llf.trainer_callbacks() does "
                f"it for the Trainer), or run the call inside `with llf.route(model, ids):`")

    model.register_forward_pre_hook(check, with_kwargs=True)
    setattr(model, _GUARDED, True)
