"""LiteLoRA, the continual-learning method, apart from the library.

The layer and the op never import this subpackage, and ``import litelora_fast`` does not load it:
``llf.ContinualLearner``, ``llf.litelora`` and ``llf.cl`` resolve to it on first use (the module
``__getattr__`` in ``litelora_fast/__init__.py``).

- ``learner``: the recruit-or-reuse gate and ``ContinualLearner`` (the authors' variant and ours);
- ``cl``: task streams that run on the CPU (planted, MNIST), their runner and the results table;
- ``demo``: the ``demo`` and ``analyze`` commands (``python -m litelora_fast demo|analyze``).
"""
from .learner import (ADDITIONS, AUTHORS_GATE_STEPS, METHODS, PROTOCOLS, VARIANTS,
                      ContinualLearner, TaskRecord,
                      binary_concrete, inject_and_learner, sample_noise)
from . import cl

__all__ = ["ContinualLearner", "TaskRecord", "binary_concrete", "sample_noise",
           "inject_and_learner", "METHODS", "VARIANTS", "PROTOCOLS", "ADDITIONS",
           "AUTHORS_GATE_STEPS", "cl"]
