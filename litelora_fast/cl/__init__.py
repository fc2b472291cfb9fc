"""Continual-learning task streams that run on the CPU with no download, and their runner.

- ``planted_tasks`` / ``run_planted``: regression tasks with planted low-rank updates (novel or
  redundant: the ground truth for recruit-or-reuse);
- ``digits_stream`` / ``run_digits``: scikit-learn's bundled digits split into 2-class tasks on a
  small backbone pretrained on the first split;
- ``run_stream``: any method of ``ContinualLearner`` over a stream, with its metrics.
"""
from .planted import planted_tasks, run_planted
from .runner import forgetting, run_stream

__all__ = ["planted_tasks", "run_planted", "run_stream", "forgetting", "digits_stream",
           "run_digits"]


def __getattr__(name):
    # digits needs scikit-learn (a dev extra): import it only when asked for
    if name in ("digits_stream", "run_digits"):
        from . import digits
        return getattr(digits, name)
    raise AttributeError(name)
