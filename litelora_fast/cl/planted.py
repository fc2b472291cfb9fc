"""Planted task streams: a frozen random linear base and regression tasks whose true weight
updates lie in known low-rank subspaces, the ground truth for recruit-or-reuse.

Task t is ``y = (W + Delta_t) x + b + noise`` with ``x ~ N(0, I)``. A *novel* task's ``Delta_t`` is
a fresh random rank-``rank`` matrix (a new subspace, almost surely outside the earlier ones). A
*redundant* task's ``Delta_t`` is a random combination ``sum_i c_i Delta_i`` of one or two earlier
novel updates (``|c_i|`` in [0.5, 1.5], random sign): the frozen earlier adapters, re-weighted by
their magnitudes, represent it exactly, so a good gate reuses.

Accuracy of a regression task (percent): the share of the task's shift that the model explains,
``100 * (1 - ||pred - y||^2 / ||W x + b - y||^2)``: 0 for the bare base, 100 for a perfect fit.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inject import inject
from .runner import run_stream

# Defaults sized so a 6-task stream runs in seconds on a CPU core.
DEFAULTS = {"d_in": 32, "d_out": 32, "rank": 2, "n_train": 512, "n_test": 512, "noise": 0.05}


def _check_novel(novel) -> list:
    novel = [bool(v) for v in novel]
    if not novel or not novel[0]:
        raise ValueError(f"novel must be a non-empty list whose first entry is True (task 0 has "
                         f"nothing earlier to reuse), got {novel!r}")
    return novel


def planted_tasks(num_tasks: int, novel, d_in: int = 32, d_out: int = 32, rank: int = 2,
                  seed: int = 0, n_train: int = 512, n_test: int = 512,
                  noise: float = 0.05) -> dict:
    """A planted stream (module docstring). Returns ``{"weight", "bias", "tasks"}``; each task is a
    dict with ``X_train, Y_train, X_test, Y_test, delta, novel``."""
    novel = _check_novel(novel)
    if len(novel) != num_tasks:
        raise ValueError(f"novel has {len(novel)} entries for num_tasks = {num_tasks}")
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
    b = 0.1 * torch.randn(d_out, generator=g)
    basis, tasks = [], []
    for t in range(num_tasks):
        if novel[t]:
            # entries of Delta x have variance ~1: the shift dominates the noise and the base
            U = torch.randn(d_out, rank, generator=g)
            V = torch.randn(d_in, rank, generator=g)
            delta = U @ V.T / (rank * d_in) ** 0.5
            basis.append(delta)
        else:
            picks = torch.randperm(len(basis), generator=g)[:min(len(basis), 2)].tolist()
            coef = (0.5 + torch.rand(len(picks), generator=g)) * \
                (torch.randint(0, 2, (len(picks),), generator=g) * 2 - 1)
            delta = sum(c * basis[i] for c, i in zip(coef.tolist(), picks))
        task = {"delta": delta, "novel": novel[t]}
        for split, n in (("train", n_train), ("test", n_test)):
            X = torch.randn(n, d_in, generator=g)
            task[f"X_{split}"] = X
            task[f"Y_{split}"] = X @ (W + delta).T + b + noise * torch.randn(n, d_out, generator=g)
        tasks.append(task)
    return {"weight": W, "bias": b, "tasks": tasks}


def make_planted_model(weight: torch.Tensor, bias: torch.Tensor, rank: int, alpha: float):
    """A one-layer model (``nn.Sequential(nn.Linear)``) holding the frozen base, injected."""
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return inject(nn.Sequential(lin), target_modules=["0"], rank=rank, alpha=alpha)


def run_planted(novel, seed: int = 0, method: str = "litelora", progress=None, **options) -> dict:
    """Run ``method`` (default LiteLoRA) on a planted stream with the pattern ``novel``.

    Options: any of ``planted_tasks``' sizes (``d_in, d_out, rank, n_train, n_test, noise``),
    ``lora_rank`` / ``lora_alpha`` (default: the planted rank, alpha = 2 * rank), and any
    ``ContinualLearner`` option (``lam``, ``epochs``, ...). Returns ``run_stream``'s metrics plus
    ``novel`` and ``avg_error`` (mean test MSE after the last task).
    """
    novel = _check_novel(novel)
    sizes = {k: options.pop(k, v) for k, v in DEFAULTS.items()}
    lora_rank = options.pop("lora_rank", sizes["rank"])
    lora_alpha = options.pop("lora_alpha", 2 * lora_rank)
    stream = planted_tasks(len(novel), novel, seed=seed, **sizes)
    W, b, tasks = stream["weight"], stream["bias"], stream["tasks"]
    for task in tasks:      # the metric needs the base's error on the test inputs
        task["base_sq_err"] = ((task["X_test"] @ W.T + b - task["Y_test"]) ** 2).sum().item()
    by_target = {id(task["Y_test"]): task for task in tasks}

    def metric(pred, Y):
        return 100.0 * (1 - ((pred - Y) ** 2).sum().item() / by_target[id(Y)]["base_sq_err"])

    options.setdefault("seed", seed)
    res = run_stream(tasks, lambda: make_planted_model(W, b, lora_rank, lora_alpha), method,
                     F.mse_loss, metric, progress=progress, **options)
    learner = res["learner"]
    res["avg_error"] = sum(F.mse_loss(learner.predict(j, t["X_test"]), t["Y_test"]).item()
                           for j, t in enumerate(tasks)) / len(tasks)
    res["novel"] = novel
    return res
