"""Planted task streams: a frozen random base and regression tasks whose true weight updates lie
in known low-rank subspaces, the ground truth for recruit-or-reuse.

Task t is ``y = f_{W + Delta_t}(x) + noise`` with ``x ~ N(0, I)``; ``f`` is one linear layer
(``layers=1``) or two, ``d_in -> d_hidden -> d_out`` with a tanh between (``layers=2``: adapters
in both layers, the update planted in the first). Each task has a *kind*:

- ``"novel"`` (or ``1``/``True``): a fresh random rank-``rank`` update (a new subspace);
- ``"redundant"`` (or ``0``/``False``): ``sum_i c_i Delta_i`` over one or two earlier *novel*
  updates (``|c_i|`` in [0.5, 1.5], random sign): the frozen earlier adapters, re-weighted by
  their magnitudes, represent it exactly, so a good gate reuses;
- ``"redundant2"``: a combination of one or two earlier *redundant* updates (or novel ones when no
  redundant task came before): redundancy built from redundancy;
- ``"near:<e>"`` (e.g. ``"near:0.05"``): a redundant update plus a fresh one carrying the share
  ``e`` of the energy (``||.||_F^2``): near-redundant, graded;
- ``"core"``: the same row and column subspaces as an earlier novel update with a different,
  random ``rank x rank`` core: subspace similarity says redundant, but a magnitude per adapter
  cannot re-weight the core, so it must recruit.

Accuracy of a regression task (percent): the share of the task's shift that the model explains,
``100 * (1 - ||pred - y||^2 / ||f_W(x) - y||^2)``: 0 for the bare base, 100 for a perfect fit.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.inject import inject
from .runner import run_stream

# Defaults sized so a 6-task stream runs in seconds on a CPU core.
DEFAULTS = {"d_in": 32, "d_out": 32, "rank": 2, "n_train": 512, "n_test": 512, "noise": 0.05,
            "layers": 1, "d_hidden": 32}
# The learner that decides right on these streams (measured, tests/test_cl.py): our additions on,
# per-task gates and heads (regression tasks: no class to share a head over).
LEARNER_DEFAULTS = {"variant": "library", "protocol": "task-incremental", "lam": 0.05,
                    "epochs": 20, "reuse_epochs": 10}


def _kinds(novel) -> list:
    kinds = []
    for v in novel:
        if isinstance(v, str):
            if v not in ("novel", "redundant", "redundant2", "core") and not v.startswith("near:"):
                raise ValueError(f"unknown task kind {v!r}")
            kinds.append(v)
        else:
            kinds.append("novel" if v else "redundant")
    if not kinds or kinds[0] != "novel":
        raise ValueError(f"novel must be a non-empty list whose first entry is True (task 0 has "
                         f"nothing earlier to reuse), got {novel!r}")
    return kinds


def _check_novel(novel) -> list:
    """Backwards-compatible name: the kinds as booleans (True: must recruit)."""
    return [k in ("novel", "core") for k in _kinds(novel)]


def planted_tasks(num_tasks: int, novel, d_in: int = 32, d_out: int = 32, rank: int = 2,
                  seed: int = 0, n_train: int = 512, n_test: int = 512, noise: float = 0.05,
                  layers: int = 1, d_hidden: int = 32) -> dict:
    """A planted stream (module docstring). Returns ``{"weights", "biases", "weight", "bias",
    "tasks"}``; each task is a dict with ``X_train, Y_train, X_test, Y_test, delta, kind, novel``
    (``novel``: the ground truth, True when the task must recruit)."""
    kinds = _kinds(novel)
    if len(kinds) != num_tasks:
        raise ValueError(f"novel has {len(kinds)} entries for num_tasks = {num_tasks}")
    if layers not in (1, 2):
        raise ValueError(f"layers must be 1 or 2, got {layers}")
    g = torch.Generator().manual_seed(seed)
    d_first = d_hidden if layers == 2 else d_out
    Ws = [torch.randn(d_first, d_in, generator=g) / d_in ** 0.5]
    bs = [0.1 * torch.randn(d_first, generator=g)]
    if layers == 2:
        Ws.append(torch.randn(d_out, d_hidden, generator=g) / d_hidden ** 0.5)
        bs.append(0.1 * torch.randn(d_out, generator=g))

    def fresh():
        U = torch.randn(d_first, rank, generator=g)
        V = torch.randn(d_in, rank, generator=g)
        return U, V, U @ V.T / (rank * d_in) ** 0.5

    def combo(pool):
        picks = torch.randperm(len(pool), generator=g)[:min(len(pool), 2)].tolist()
        coef = (0.5 + torch.rand(len(picks), generator=g)) * \
            (torch.randint(0, 2, (len(picks),), generator=g) * 2 - 1)
        return sum(c * pool[i] for c, i in zip(coef.tolist(), picks))

    def forward(X, delta):
        h = X @ (Ws[0] + delta).T + bs[0]
        return h if layers == 1 else torch.tanh(h) @ Ws[1].T + bs[1]

    basis, factors, redundant, tasks = [], [], [], []
    for kind in kinds:
        if kind == "novel":
            U, V, delta = fresh()
            basis.append(delta)
            factors.append((U, V))
        elif kind == "core":
            U, V = factors[int(torch.randint(len(factors), (1,), generator=g))]
            core = torch.randn(rank, rank, generator=g)
            delta = U @ core @ V.T / (rank * d_in) ** 0.5
        elif kind == "redundant":
            delta = combo(basis)
            redundant.append(delta)
        elif kind == "redundant2":
            delta = combo(redundant if redundant else basis)
            redundant.append(delta)
        else:                                   # near:<e>
            e = float(kind.split(":")[1])
            old = combo(basis)
            new = fresh()[2]
            delta = (1 - e) ** 0.5 * old / old.norm() + e ** 0.5 * new / new.norm()
            delta = delta * old.norm()
        task = {"delta": delta, "kind": kind, "novel": kind in ("novel", "core")}
        for split, n in (("train", n_train), ("test", n_test)):
            X = torch.randn(n, d_in, generator=g)
            task[f"X_{split}"] = X
            task[f"Y_{split}"] = forward(X, delta) + noise * torch.randn(n, d_out, generator=g)
        task["base_sq_err"] = ((forward(task["X_test"], torch.zeros_like(delta)) -
                                task["Y_test"]) ** 2).sum().item()
        tasks.append(task)
    return {"weights": Ws, "biases": bs, "weight": Ws[0], "bias": bs[0], "tasks": tasks}


def make_planted_model(weights, biases, rank: int, alpha: float):
    """The frozen base (one ``nn.Linear``, or two with a tanh between), injected everywhere."""
    if isinstance(weights, torch.Tensor):
        weights, biases = [weights], [biases]
    mods = []
    for i, (W, b) in enumerate(zip(weights, biases)):
        lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        mods += [lin] if i == 0 else [nn.Tanh(), lin]
    targets = [str(i) for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    return inject(nn.Sequential(*mods), target_modules=targets, rank=rank, alpha=alpha,
                  num_adapters=0)


def run_planted(novel, seed: int = 0, method: str = "litelora", progress=None, **options) -> dict:
    """Run ``method`` (default LiteLoRA) on a planted stream with the task kinds ``novel``.

    Options: any of ``planted_tasks``' sizes (``d_in, d_out, rank, n_train, n_test, noise, layers,
    d_hidden``), ``lora_rank`` / ``lora_alpha`` (default: the planted rank, alpha = 2 * rank), and
    any ``ContinualLearner`` option (``LEARNER_DEFAULTS`` unless given). Returns ``run_stream``'s
    metrics plus ``novel`` (ground truth per task), ``kinds`` and ``avg_error`` (mean test MSE
    after the last task).
    """
    kinds = _kinds(novel)
    sizes = {k: options.pop(k, v) for k, v in DEFAULTS.items()}
    lora_rank = options.pop("lora_rank", sizes["rank"])
    lora_alpha = options.pop("lora_alpha", 2 * lora_rank)
    stream = planted_tasks(len(kinds), kinds, seed=seed, **sizes)
    tasks = stream["tasks"]
    by_target = {id(task["Y_test"]): task for task in tasks}

    def metric(pred, Y):
        return 100.0 * (1 - ((pred - Y) ** 2).sum().item() / by_target[id(Y)]["base_sq_err"])

    for key, value in LEARNER_DEFAULTS.items():
        options.setdefault(key, value)
    options.setdefault("seed", seed)
    res = run_stream(tasks, lambda: make_planted_model(stream["weights"], stream["biases"],
                                                       lora_rank, lora_alpha),
                     method, F.mse_loss, metric, progress=progress, **options)
    learner = res["learner"]
    res["avg_error"] = sum(F.mse_loss(learner.predict(j, t["X_test"]), t["Y_test"]).item()
                           for j, t in enumerate(tasks)) / len(tasks)
    res["novel"] = [t["novel"] for t in tasks]
    res["kinds"] = kinds
    return res
