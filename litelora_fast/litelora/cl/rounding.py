"""A rounding-level perturbation of a task stream: every input moved by one ulp.

Another machine's float kernels (another summation order in MKL or oneDNN) change results at the
last bit; this module makes such a change on purpose, on any machine, so that one can measure how
far a result and a verdict move under it (``python -m litelora_fast demo --nudge-ulp``,
``tests/test_litelora_rounding.py``).
"""
from __future__ import annotations

import torch


def nudge_ulp(X: torch.Tensor) -> torch.Tensor:
    """``X`` with every nonzero entry moved one ulp away from zero (zeros stay zero, so an
    image keeps its support and a sparse input its pattern)."""
    if not isinstance(X, torch.Tensor) or not X.is_floating_point():
        raise TypeError(f"X must be a floating-point tensor, got "
                        f"{getattr(X, 'dtype', type(X).__name__)}")
    away = torch.where(X > 0, torch.full_like(X, float("inf")), torch.full_like(X, float("-inf")))
    return torch.where(X == 0, X, torch.nextafter(X, away))


def nudge_stream(data: dict) -> dict:
    """A copy of a stream's data (``streams.build``: ``{"tasks": [...], ...}``) whose tasks'
    inputs (``X_train``, ``X_test``) are moved one ulp (``nudge_ulp``); the rest is shared."""
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise TypeError("data must be a stream's data: a dict with a list under 'tasks'")
    tasks = [dict(task, **{k: nudge_ulp(task[k]) for k in ("X_train", "X_test") if k in task})
             for task in data["tasks"]]
    return dict(data, tasks=tasks)
