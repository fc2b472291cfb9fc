"""Argument types shared by the command-line tools: argparse turns their ``ArgumentTypeError``
into a one-line usage error (exit status 2) that names the option.

The output-path types check what can be checked before a command starts its work, so a long run
(``demo``) does not fail at its end on a path that could never be written."""
from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    """An integer >= 1 (thread counts, token counts, ranks)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _blocking_ancestor(path: str):
    """The nearest existing ancestor of ``path`` when it is not a directory (then nothing can be
    created below it), else ``None``."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return None if os.path.isdir(parent) else parent


def output_file(text: str) -> str:
    """A file the command will write (its folders are created); ``''`` means none."""
    if not text:
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file path")
    blocked = _blocking_ancestor(text)
    if blocked is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {blocked!r} is a file, not a "
                                         "directory")
    return text


def output_dir(text: str) -> str:
    """A directory the command will create if needed and write files into."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    blocked = _blocking_ancestor(text)
    if blocked is not None:
        raise argparse.ArgumentTypeError(f"cannot create {text!r}: {blocked!r} is a file, not a "
                                         "directory")
    return text


def device(text: str):
    """A ``torch.device`` spelled as torch spells it (``cpu``, ``cuda``, ``cuda:1``)."""
    import torch

    try:
        return torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device torch knows (cpu, cuda, "
                                         "cuda:1, ...)") from None
