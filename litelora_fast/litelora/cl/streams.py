"""The task streams of the LiteLoRA table and demo, by name: how to build one for a seed, how to
run a method on it, and its ``lam`` defaults. The builders import their data lazily, so naming a
stream whose extra is missing fails only when it is built.
"""
from __future__ import annotations

from . import bbc, mnist

# name -> (build(seed) -> data, run(seed, method, data=..., **options) -> metrics)
STREAMS = {
    "split_mnist": (mnist.split_mnist, lambda seed, method, **kw: mnist.run_mnist(
        "split_mnist", seed, method, **kw)),
    "domain": (mnist.domain_stream, lambda seed, method, **kw: mnist.run_mnist(
        "domain", seed, method, **kw)),
    "bbc": (bbc.bbc_stream, bbc.run_bbc),
}

# lam per stream, protocol and lam family (cl/table.py's ROWS), picked on development seeds.
LAM_DEFAULTS = dict(mnist.LAM_DEFAULTS, bbc=bbc.LAM_DEFAULTS)


def _entry(stream: str):
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {tuple(STREAMS)}, got {stream!r}")
    return STREAMS[stream]


def build(stream: str, seed: int):
    """The data of ``stream`` for ``seed`` (built once, shared by every run on it)."""
    return _entry(stream)[0](seed)


def run(stream: str, seed: int, method: str, data=None, **options) -> dict:
    """``method`` on ``stream`` drawn with ``seed`` (``data``: what ``build`` returned)."""
    return _entry(stream)[1](seed, method, data=data, **options)
