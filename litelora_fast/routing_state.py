"""The routing in effect on this thread: what ``llf.route`` installs and ``GatedLoRALinear``
reads.

A tiny module of its own so that ``layer.py`` can look the routing up without importing
``routing.py`` (which imports the layer). The state is thread-local: the autograd engine may run
a gradient-checkpointing recompute on another thread, and there the recompute installs the
routing it captured itself (``routing.BindRouting``), never the one a later ``with`` block set.
"""
from __future__ import annotations

import contextlib
import threading

_LOCAL = threading.local()


def current():
    """The ``Routing`` installed on this thread, or ``None``."""
    return getattr(_LOCAL, "routing", None)


@contextlib.contextmanager
def installed(routing):
    """Install ``routing`` (a ``Routing`` or ``None``) for the block, then restore the previous."""
    previous = current()
    _LOCAL.routing = routing
    try:
        yield routing
    finally:
        _LOCAL.routing = previous
