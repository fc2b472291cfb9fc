"""Run one method of the continual learner over a task stream and score it.

A stream is a list of tasks, each a dict with ``X_train, Y_train, X_test, Y_test`` (and optionally
``num_classes``: the classes it adds). After every task the learner is evaluated on the test sets
of all tasks seen so far, giving the accuracy matrix ``acc[i][j]`` (task j after learning task i):
with no task id in the class-incremental protocol (one classifier over all classes seen, every
kept adapter), with task j's stored gates and head in the task-incremental one. Metrics
(docs/MATH.md, section 5):

- ``avg_accuracy``: accuracy over all tasks (all seen classes) after the last task;
- ``anytime``: after each task i, the mean accuracy over tasks ``0..i``; ``avg_incremental``: its
  mean (average incremental accuracy);
- ``forgetting``: mean over earlier tasks of (best earlier accuracy - final accuracy);
- ``active_adapters``: adapters left in the bank (per task in ``active_per_task``);
- ``params``: LoRA parameters in the bank + stored gate values; ``seconds``: wall time.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from ..learner import ContinualLearner


def forgetting(acc: list) -> float:
    """Mean over tasks j < T-1 of ``max_{j <= i < T-1} acc[i][j] - acc[T-1][j]`` (0 for T = 1)."""
    T = len(acc)
    if T < 2:
        return 0.0
    drops = [max(acc[i][j] for i in range(j, T - 1)) - acc[T - 1][j] for j in range(T - 1)]
    return sum(drops) / len(drops)


def run_stream(tasks: list, make_model: Callable, method: str, loss_fn: Callable,
               metric_fn: Callable, make_head: Optional[Callable] = None,
               progress: Optional[Callable] = None, learner_class=ContinualLearner,
               **options) -> dict:
    """Train ``method`` on ``tasks`` in order and return its metrics (module docstring).

    ``make_model()`` builds a fresh model whose adapted layers are ``GatedLoRALinear``;
    ``make_head(t)`` a fresh head for task t (task-incremental only; ``None``: identity);
    ``metric_fn(pred, Y)`` an accuracy in percent; ``progress()`` is called once per finished
    task; ``options`` go to ``ContinualLearner`` (``protocol``, ``variant``, ``lam``, ...);
    ``learner_class``: a subclass to run instead (``gate_trace.TracingLearner``).
    """
    start = time.perf_counter()
    torch.manual_seed(options.get("seed", 0))
    learner = learner_class(make_model(), method=method, **options)
    class_inc = learner.protocol == "class-incremental"
    acc, active = [], []
    for t, task in enumerate(tasks):
        if class_inc:
            learner.learn_task(task["X_train"], task["Y_train"], loss_fn,
                               num_classes=task.get("num_classes"))
        else:
            head = make_head(t) if make_head is not None else None
            learner.learn_task(task["X_train"], task["Y_train"], loss_fn, head)
        acc.append([float(metric_fn(learner.predict(j, tasks[j]["X_test"]), tasks[j]["Y_test"]))
                    for j in range(t + 1)])
        active.append(learner.active_adapters)
        if progress is not None:
            progress()
    anytime = [sum(row) / len(row) for row in acc]
    return {
        "avg_accuracy": anytime[-1],
        "anytime": anytime,
        "avg_incremental": sum(anytime) / len(anytime),
        "forgetting": forgetting(acc),
        "active_adapters": learner.active_adapters,
        "active_per_task": active,
        "recruited": [r.recruited for r in learner.records],
        "gate_prob": [r.gate_prob for r in learner.records],
        "gate_steps": [r.gate_steps for r in learner.records],
        "gate_logit": [r.gate_logit for r in learner.records],
        "params": learner.num_params(),
        "seconds": time.perf_counter() - start,
        "acc_matrix": acc,
        "learner": learner,
    }
