"""LiteLoRA: the recruit-or-reuse gate and the continual learner over ``GatedLoRALinear`` layers.

The learner drives every ``GatedLoRALinear`` of a model (swap them in with ``llf.inject``) through a
stream of tasks, after SD-LoRA + LiteLoRA (docs/MATH.md, section 5), and writes each task's decision
into *task-level gate values* that the fused layer receives through ``layer.set_gates``:

    g_i = beta_i * alpha_i / n_i     (old, frozen adapter i;  n_i = s_i ||B_i||_F ||A_i||_F)
    g_t = beta_t * alpha_t           (the current candidate, not normalised)

``variant="paper"`` follows the authors' code (GitHub tanguy8001/LiteLoRA, commit 0fcb287; cited
below as ``file:LINE :: function``, with the statement that decides):

- *gate placement*: one logit ``l_i`` (init 0.5) and one magnitude ``alpha_i`` (init 1.0) per task,
  shared by every adapted layer (``backbone/lora_gumbel.py:369-381 :: GumbelGate.__init__``; one
  gate built at ``backbone/lora_gumbel.py:570`` and handed to every layer at
  ``backbone/lora_gumbel.py:604``; values from ``exps/litelora_*.json``
  ``init_logit``/``init_alpha``, e.g. ``exps/litelora_c100.json:31-32``); old adapters normalised
  by ``||B|| ||A||`` (``backbone/lora_gumbel.py:169 :: _LoRA_qkv_timm_train._compute_adapter_out``,
  ``normalize=True`` at ``backbone/lora_gumbel.py:216-217``), the current one not
  (``backbone/lora_gumbel.py:226-227 :: _LoRA_qkv_timm_train.forward``, ``normalize=False`` for
  the current task).
- *noise*: Gumbel noise ``-log(-log u)`` (``utils/gumbel_utils.py:17-20 :: sample_gumbel``), drawn
  anew at every gate call (each adapted layer, each forward;
  ``backbone/lora_gumbel.py:460 :: GumbelGate.forward`` calls ``sample_gumbel`` each time, q and v
  separately: ``backbone/lora_gumbel.py:238-243 :: _LoRA_qkv_timm_train.forward``), only on the
  current task's logit (``backbone/lora_gumbel.py:464``: ``noise_mask[-1] = 1.0``), and only in
  phase 2 (``backbone/lora_gumbel.py:447-448``: ``if phase == 1: training = False``); the hard
  value ``soft > 0.5`` goes forward, the soft gradient backward
  (``utils/gumbel_utils.py:101-102 :: gumbel_binary_gate``: ``y_hard = (y_soft > 0.5).float()``,
  ``beta = y_hard - y_soft.detach() + y_soft``).
- *phases* (``models/litelora.py:179-269 :: _update_representation``): phase 1 trains the
  candidate ``A_t, B_t``, every magnitude ``alpha_0..alpha_t`` and the classifier with the gate at
  1 (``alpha_epochs``, ``models/litelora.py:184``, ``models/litelora.py:215-219``); phase 2 trains
  only ``l_t`` (``beta_epochs`` = 1, ``exps/litelora_c100.json:34``;
  ``models/litelora.py:235-254``) on the task loss plus ``lam`` times the mean over gate calls of
  ``beta_t`` (``models/litelora.py:290-305 :: _train_phase``: ``sparsity_loss(..., mode=mode)``
  with ``mode = 'l1'`` when ``binary_beta``, divided by ``2 * num_reg_blocks``), with small
  batches (``batch_size_p2``, ``models/litelora.py:259``).
- *optimiser*: phase 1 is SGD with momentum 0.9, adapters, magnitudes and head at the same lr
  (``models/litelora.py:215-219 :: _update_representation``; ``lrate`` = ``alpha_lr`` = 8e-3 in
  ``exps/litelora_c100.json:24`` and ``exps/litelora_c100.json:40``), weight decay only on the
  magnitudes (``models/litelora.py:217``), and the lr halved at 60% and 80% of the epochs
  (``models/litelora.py:221-225``: ``MultiStepLR(..., milestones=[int(0.6 * E), int(0.8 * E)],
  gamma=... else 0.5)`` with ``E`` = ``magnitude_epochs``; ``lrate_decay`` 0,
  ``exps/litelora_c100.json:26``); task 0 uses SGD with momentum and no decay within its epochs
  (``models/litelora.py:74-82 :: _train``: ``init_milestones`` [60, 120, 170] > 20 epochs,
  ``exps/litelora_c100.json:21`` and ``exps/litelora_c100.json:19``), ``alpha_0`` frozen at 1
  (created with ``requires_grad=False``, ``backbone/lora_gumbel.py:375 :: GumbelGate.__init__``).
  Phase 2 uses AdamW (``beta_lr`` 0.05, weight decay 2e-4: ``exps/litelora_c100.json:41`` and
  ``exps/litelora_c100.json:28``) on the logit (``models/litelora.py:93-97 :: _train``'s
  ``optimizer``).
- *loss*: cross-entropy over the current task's classes only (``logits[:, self._known_classes:]``
  in ``models/litelora.py:288 :: _train_phase``) when every class of the task is new; a task
  that revisits classes seen before (a case their streams never have) trains on every class seen.
- *decision*: keep iff ``sigmoid(l_t) > 0.5`` without noise, else prune for good
  (``models/litelora.py:349-354 :: _conditional_growth_decision``, ``binary_beta`` threshold 0.5;
  their ``if current_beta < threshold`` tests the hard noiseless ``get_betas`` value,
  ``models/litelora.py:333``, which is 0 at exactly ``sigmoid(l_t) = 0.5``: pruned); task 0 always
  kept (the decision runs only at ``models/litelora.py:269``, for tasks after 0; ``pruning_mask``
  starts at ones, ``backbone/lora_gumbel.py:384``).
- *magnitudes carried over* across tasks (``backbone/lora_gumbel.py:575-578 ::
  LoRA_ViT_timm.__init__`` loads the previous task's ``alphas``); *nothing re-tuned after a prune*
  (the decision is the last step of ``_update_representation``, ``models/litelora.py:269``).
- *protocol*: class-incremental: one growing classifier, every kept adapter summed with the shared
  magnitudes, no task id at test (``models/litelora.py:32-62 :: incremental_train``, ``update_fc``
  at ``models/litelora.py:37``).

Not from their code: the rank (theirs r = 10 on the query and value projections of the 12 blocks of
a ViT-B/16, ``exps/litelora_c100.json``; ours r = 4 on the layers of a 2-layer MLP in the MNIST
streams, ``litelora_fast/litelora/cl/mnist.py``), the learning rates and epochs
(``VARIANTS["paper"]``: SGD lr 0.01 for our 2-layer MLP on 14x14 digits, not their 8e-3 for a
ViT-B/16, ``exps/litelora_c100.json:24``, ``models/litelora.py:65``; phase-2 batches of 32, theirs
128, ``exps/litelora_c100.json:37``) and ``lam`` (per stream,
``litelora_fast/litelora/cl/mnist.py``).

Our additions, each a named option (``variant="library"`` turns them all on):

- ``warmup`` (int epochs, 0 in the paper): before phase 1, train only the kept magnitudes and the
  head, candidate absent, so the candidate learns only what reuse misses.
- ``whole_state`` (bool): in phase 2 the gate switches between two whole states, *reuse* (the
  magnitudes and head before phase 1) and *recruit* (after it, plus the candidate); parameters are
  interpolated by ``beta_t``, so a hard 0 or 1 is exactly one state. Without it, switching the
  candidate off leaves a head tuned to work *with* it, and reuse looks worse than it is.
- ``magnitude_lr`` (float or None = ``lr``): ours is 40x ``lr`` (with Adam), so a magnitude can
  travel to ``||Delta W||_F`` within a few epochs.
- ``retune`` (int epochs, 0 in the paper): after a prune, re-train the kept magnitudes and the head
  without the candidate.
- ``carry_magnitudes`` (bool, True in the paper): False restarts every magnitude at 1 per task.
- ``optimizer`` (``"sgd"`` as the paper, or ``"adam"``); ``noise`` (``"gumbel"`` or
  ``"logistic"``) and ``noise_per_call`` (False: one draw per batch shared by every layer).
- ``lam_scale`` (``"absolute"`` as the paper, or ``"relative"``: ``lam`` is multiplied by the
  task's mean training loss before anything trains on it (the bank as it stands, no candidate), so
  one ``lam`` asks the candidate to remove about the same share of the task's loss on any loss
  scale).
- ``gate_holdout`` (float, 0 in the paper): phase 2 optimises and decides the gate on a held-out
  share of the task's training data (e.g. 0.2), which phase 1 never sees, so an adapter that only
  fits its own training examples is not kept (the paper decides on the training set). Not part of
  ``variant="library"``: turn it on by name.
- ``gate_rule`` (``"trained"``, the paper's phase 2; or ``"loss_gap"``): keep the candidate iff
  dropping it raises the task's mean loss on the gate data by more than ``lam`` (with
  ``whole_state``: dropped means the state from before phase 1), measured once, no logit trained
  and no noise. The trained gate is meant to make that comparison; on the domain stream the
  library's logits do not follow it (docs/litelora.md). Not part of either variant.
- ``protocol="task-incremental"``: per-task stored gates and heads, the task id given at test
  (no forgetting by construction); ``"class-incremental"`` (the default) is the paper's.

Baselines in the same class: ``method="sdlora"`` (phase 1 only, always kept: one adapter per task),
``"shared"`` (one adapter trained on every task in turn) and ``"head"`` (no adapter, head only).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.inject import injected_layers

METHODS = ("litelora", "sdlora", "shared", "head")
NOISES = ("logistic", "gumbel")
PROTOCOLS = ("class-incremental", "task-incremental")
OPTIMIZERS = ("sgd", "adam")
LAM_SCALES = ("absolute", "relative")

# Phase 2's optimiser steps per task in the authors' runs: one epoch of CIFAR-100's 5,000 images
# per task at batch 128 (``exps/litelora_c100.json:37``; ImageNet-R gives about 75): the paper
# variant's ``gate_steps``.
AUTHORS_GATE_STEPS = 39

# The two named variants; every key is also a constructor option that overrides the variant.
VARIANTS = {
    "paper": dict(optimizer="sgd", lr=0.01, magnitude_lr=None, gate_lr=0.05, weight_decay=2e-4,
                  noise="gumbel", noise_per_call=True, warmup=0, whole_state=False, retune=0,
                  carry_magnitudes=True, lam_scale="absolute", gate_batch_size=32,
                  gate_steps=AUTHORS_GATE_STEPS, gate_holdout=0.0, gate_rule="trained"),
    "library": dict(optimizer="adam", lr=1e-2, magnitude_lr=0.4, gate_lr=0.1, weight_decay=0.0,
                    noise="logistic", noise_per_call=False, warmup=10, whole_state=True,
                    retune=10, carry_magnitudes=False, lam_scale="absolute", gate_batch_size=8,
                    gate_steps=None, gate_holdout=0.0, gate_rule="trained"),
}
# How phase 2 decides: "trained" (the paper: train the logit on loss + lam * gate, keep iff
# sigmoid(logit) > 0.5); "loss_gap" (our addition: no training and no noise, keep iff dropping
# the candidate raises the task loss on the gate data by more than lam)
GATE_RULES = ("trained", "loss_gap")
ADDITIONS = ("warmup", "whole_state", "magnitude_lr", "retune", "lam_scale")


def sample_noise(shape, kind: str = "logistic", device=None, generator=None) -> torch.Tensor:
    """Logistic noise ``log u - log(1-u)`` (binary concrete) or Gumbel ``-log(-log u)``."""
    if kind not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-6, 1 - 1e-6)
    if kind == "logistic":
        return torch.log(u) - torch.log1p(-u)
    return -torch.log(-torch.log(u))


def binary_concrete(logit: torch.Tensor, tau: float = 1.0, noise: Optional[str] = "logistic",
                    generator=None) -> torch.Tensor:
    """Straight-through binary gate: the forward value is ``soft > 0.5`` (0.0 or 1.0), the backward
    is the gradient of ``soft = sigmoid((logit + noise) / tau)``. ``noise=None`` means evaluation
    (no noise)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    # noise drawn on the generator's device (the CPU) and moved: one seeded stream anywhere
    z = logit if noise is None else logit + sample_noise(logit.shape, noise, None,
                                                         generator).to(logit.device)
    soft = torch.sigmoid(z / tau)
    hard = (soft > 0.5).to(soft.dtype)
    # (soft - soft.detach()) is exactly 0 in the forward, so the value is exactly 0.0 or 1.0
    return hard + (soft - soft.detach())


def _head_state(head: nn.Module) -> dict:
    return {n: p.detach().clone() for n, p in head.named_parameters()}


@torch.no_grad()
def _load_head(head: nn.Module, state: dict) -> None:
    for n, p in head.named_parameters():
        p.copy_(state[n])


@dataclass
class TaskRecord:
    """What the learner decided and stored for one task."""
    task: int
    recruited: bool                  # candidate kept in at least one layer
    kept_layers: list                # per gate group: kept?
    gate_prob: list                  # sigmoid(l_t) per gate group (1.0 when no gate phase)
    gates: torch.Tensor              # (L, n_ids): gate of every adapter id in every layer
    head: Optional[nn.Module] = None
    seconds: float = 0.0
    gate_steps: int = 0              # phase 2's optimiser steps (0: no gate phase)
    gate_logit: list = field(default_factory=list)   # final logit l_t per group (empty: none)
    extra: dict = field(default_factory=dict)


def _check_count(name: str, value, minimum: int, optional: bool = False) -> None:
    """``value`` must be an int >= ``minimum`` (``None`` too where ``optional``): epochs, steps,
    batch sizes, class counts. A bool or a float is refused (``epochs=2.5`` is a caller's bug)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, got "
                        f"{type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class _Data:
    """A task's data: tensors ``(X, Y)`` (shuffled minibatches of any size), given as two
    arguments or as one pair, or a re-iterable of batches, each ``(x, y)`` or a dict with a
    ``"labels"`` / ``"label"`` key (the rest goes to the model as keyword arguments)."""

    def __init__(self, data, Y, generator):
        self.generator = generator
        if (Y is None and isinstance(data, (tuple, list)) and len(data) == 2
                and all(isinstance(t, torch.Tensor) for t in data)):
            # A pair of tensors is (X, Y): a batch is never a bare tensor, so a list of batches
            # cannot look like this.
            data, Y = data
        if isinstance(data, torch.Tensor):
            if not isinstance(Y, torch.Tensor) or Y.shape[0] != data.shape[0]:
                raise ValueError(f"X and Y must be tensors with the same first dimension, got "
                                 f"X {tuple(data.shape)} and Y "
                                 f"{tuple(Y.shape) if isinstance(Y, torch.Tensor) else Y!r}")
            self.X, self.Y, self.iterable = data, Y, None
        else:
            if Y is not None:
                raise TypeError("Y must be None when the data is an iterable of batches")
            if iter(data) is data:
                raise TypeError("the data must be re-iterable (a DataLoader or a list of batches), "
                                "not a one-shot iterator: every phase reads it again")
            self.X = self.Y = None
            self.iterable = data
        self._labels = None

    @staticmethod
    def split(batch):
        if isinstance(batch, dict):
            key = "labels" if "labels" in batch else "label" if "label" in batch else None
            if key is None:
                raise ValueError(f"a dict batch needs a 'labels' or 'label' key, got "
                                 f"{sorted(batch)}")
            return {k: v for k, v in batch.items() if k != key}, batch[key]
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        raise TypeError(f"a batch must be (x, y) or a dict with 'labels', got "
                        f"{type(batch).__name__}")

    def batches(self, batch_size):
        if self.iterable is not None:
            for batch in self.iterable:
                yield self.split(batch)
            return
        perm = torch.randperm(self.X.shape[0], generator=self.generator).to(self.X.device)
        for s in range(0, self.X.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            yield self.X[idx], self.Y[idx]

    def holdout(self, share: float):
        """``(train, held_out)``: a random ``share`` of the examples set apart (tensors only)."""
        if self.X is None:
            raise ValueError("gate_holdout needs the task's data as tensors (X, Y), not batches")
        n = self.X.shape[0]
        k = int(round(share * n))
        if not 0 < k < n:
            raise ValueError(f"gate_holdout={share} leaves {k} of {n} examples held out: "
                             "need at least one on each side")
        perm = torch.randperm(n, generator=self.generator).to(self.X.device)
        rest, held = perm[k:], perm[:k]
        return (_Data(self.X[rest], self.Y[rest], self.generator),
                _Data(self.X[held], self.Y[held], self.generator))

    def num_batches(self, batch_size) -> Optional[int]:
        """Batches per epoch (``None``: an iterable without a length)."""
        if self.iterable is None:
            return math.ceil(self.X.shape[0] / batch_size)
        try:
            return len(self.iterable)
        except TypeError:
            return None

    def labels(self) -> torch.Tensor:
        if self.Y is not None:
            return self.Y
        if self._labels is None:          # one pass over the batches, however often asked
            self._labels = torch.cat([self.split(b)[1].reshape(-1) for b in self.iterable])
        return self._labels


class ContinualLearner:
    """LiteLoRA (and its baselines) over the ``GatedLoRALinear`` layers of ``model``.

    Args:
        model: maps an input batch to features; its adapted layers must be ``GatedLoRALinear``
            with no adapters yet.
        method: ``"litelora"``, ``"sdlora"`` (one adapter per task), ``"shared"`` (one adapter for
            all tasks) or ``"head"`` (no adapter).
        variant: ``"paper"`` (the authors' code) or ``"library"`` (all our additions); any key of
            ``VARIANTS`` given as a keyword overrides it (module docstring).
        protocol: ``"class-incremental"`` (one growing linear classifier owned by the learner,
            labels are global class ids, no task id at test) or ``"task-incremental"`` (a head per
            task given to ``learn_task``, stored gates per task).
        lam: recruit cost ``lambda`` of phase 2 (the knob that trades adapters for accuracy).
        tau, gate_init, init_alpha: gate temperature, initial logit (0.5), initial magnitude (1.0).
        per_layer_gates: one logit and one magnitude per layer instead of per task.
        epochs, gate_epochs: phase 1 and phase 2 epochs; batch_size, gate_batch_size.
        gate_steps: phase 2's optimiser steps per task (``variant="paper"``:
            ``AUTHORS_GATE_STEPS`` = 39, the authors' budget; the batches repeat epoch after epoch
            until the count is reached); ``None`` (``"library"``: one epoch at batch 8, about 75
            steps on the MNIST streams): ``gate_epochs`` epochs, and at least
            ``ceil(gate_init / gate_lr)`` steps when those epochs are fewer (a small gate set, e.g.
            a held-out share of a small task). Recorded per task
            (``TaskRecord.gate_steps``, with
            the final logit ``gate_logit``); a ``UserWarning`` when the budget cannot move the
            logit from ``gate_init`` across 0 (sigmoid 0.5): Adam moves it at most about
            ``gate_lr`` per step, so that needs ``ceil(gate_init / gate_lr)`` steps (10 at the
            paper's 0.5 and 0.05).
        seed: seeds the shuffling and the gate noise.
    """

    def __init__(self, model: nn.Module, method: str = "litelora", variant: str = "paper",
                 protocol: str = "class-incremental", lam: float = 0.05, tau: float = 1.0,
                 gate_init: float = 0.5, init_alpha: float = 1.0, per_layer_gates: bool = False,
                 epochs: int = 20, gate_epochs: int = 1, batch_size: int = 64, seed: int = 0,
                 **options):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        unknown = set(options) - set(VARIANTS[variant]) - {"reuse_epochs"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; known: "
                            f"{sorted(VARIANTS[variant])}")
        cfg = dict(VARIANTS[variant])
        if "reuse_epochs" in options:
            # the old name: the epochs of the warm-up and the re-tune, where the variant has them
            r = options.pop("reuse_epochs")
            _check_count("reuse_epochs", r, 0)
            cfg["warmup"] = r if cfg["warmup"] else 0
            cfg["retune"] = r if cfg["retune"] else 0
        cfg.update(options)
        for key, allowed in (("noise", NOISES), ("optimizer", OPTIMIZERS),
                             ("lam_scale", LAM_SCALES), ("gate_rule", GATE_RULES)):
            if cfg[key] not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {cfg[key]!r}")
        self.model, self.method, self.variant, self.protocol = model, method, variant, protocol
        self.cfg = cfg
        named = injected_layers(model)
        self.layer_names, self.layers = list(named), list(named.values())
        if not self.layers and method != "head":
            raise ValueError("model has no GatedLoRALinear layer: call "
                             "llf.inject(model, ...) first")
        if any(m.num_adapters for m in self.layers):
            raise ValueError("the GatedLoRALinear layers must start with no adapters, found "
                             f"{[m.num_adapters for m in self.layers]}")
        for p in model.parameters():
            p.requires_grad_(False)
        # gates, magnitudes and logits live in float32 on the model's device
        first = next(iter(model.parameters()), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.lam, self.tau, self.gate_init, self.init_alpha = lam, tau, gate_init, init_alpha
        self.per_layer_gates = per_layer_gates
        self.epochs, self.gate_epochs, self.batch_size = epochs, gate_epochs, batch_size
        # Every count, before anything trains: a negative one used to run as zero epochs.
        for name, value, minimum in (("epochs", epochs, 0), ("gate_epochs", gate_epochs, 0),
                                     ("batch_size", batch_size, 1),
                                     ("gate_batch_size", cfg["gate_batch_size"], 1),
                                     ("warmup", cfg["warmup"], 0), ("retune", cfg["retune"], 0)):
            _check_count(name, value, minimum)
        _check_count("gate_steps", cfg["gate_steps"], 0, optional=True)
        if not 0.0 <= float(cfg["gate_holdout"]) < 1.0:
            raise ValueError(f"gate_holdout must be in [0, 1), got {cfg['gate_holdout']!r}")
        self.generator = torch.Generator().manual_seed(seed)
        L = max(len(self.layers), 1)
        self.bank_ids = [[] for _ in range(L)]     # per layer: adapter id of each bank slot
        self.norms = [{} for _ in range(L)]        # per layer: id -> n_i of a frozen adapter
        self.magnitudes = torch.zeros(self.num_groups, 0, device=self.device)
        self.records: list = []
        self.head: Optional[nn.Linear] = None      # class-incremental: the one classifier
        self.known_classes = 0
        self.gates = torch.zeros(L, 0, device=self.device)   # class-incremental: current gates

    def __getattr__(self, name):
        # the variant's options read as attributes (learner.warmup, learner.noise, ...)
        cfg = self.__dict__.get("cfg")
        if cfg is not None and name in cfg:
            return cfg[name]
        raise AttributeError(name)

    # ------------------------------------------------------------------------------ gates
    @property
    def num_groups(self) -> int:
        return len(self.layers) if self.per_layer_gates else 1

    @contextlib.contextmanager
    def use_gates(self, G: torch.Tensor):
        """Hand ``G`` ``(L or 1, n_ids)`` to every layer: layer l gets ``G[l, id]`` for each
        adapter id in its bank (0 for ids past ``G``'s width)."""
        G = G.expand(len(self.layers), G.shape[1]) if self.layers else G
        try:
            for l, layer in enumerate(self.layers):
                ids = self.bank_ids[l]
                if not ids:
                    layer.set_gates(None)
                    continue
                padded = torch.cat([G[l], G.new_zeros(max(ids) + 1 - G.shape[1])]) \
                    if max(ids) >= G.shape[1] else G[l]
                layer.set_gates(padded[torch.tensor(ids, dtype=torch.long, device=G.device)])
            yield
        finally:
            for layer in self.layers:
                layer.set_gates(None)

    def _norm_table(self, n_ids: int) -> torch.Tensor:
        """``(L, n_ids)``: ``n_i`` of each frozen adapter in each layer (1 where absent)."""
        N = torch.ones(len(self.bank_ids), n_ids, device=self.device)
        for l, norms in enumerate(self.norms):
            for i, n in norms.items():
                if i < n_ids:
                    N[l, i] = n
        return N

    def _gate_matrix(self, t: int, mags: torch.Tensor, beta) -> torch.Tensor:
        """Gates ``(L, t+1)`` while task ``t`` trains: old ids ``mags / n``, the candidate
        ``beta * mags[:, t]`` (``beta``: a scalar, ``(G,)`` or ``(L,)``; ``None``: absent)."""
        L = len(self.bank_ids)
        present = torch.zeros(L, t + 1, device=self.device)
        for l, ids in enumerate(self.bank_ids):
            present[l, [i for i in ids if i <= t]] = 1.0
        mags = mags.expand(L, mags.shape[1])
        cols = []
        if t > 0:
            cols.append(mags[:, :t] / self._norm_table(t))
        if beta is None:
            cols.append(torch.zeros(L, 1, device=self.device))
        else:
            b = beta if isinstance(beta, torch.Tensor) else torch.tensor(float(beta))
            cols.append((b.to(self.device).expand(L) * mags[:, t]).unsqueeze(1))
        # ids absent from a layer (pruned there, or not recruited yet) get exactly 0
        return torch.cat(cols, 1) * present

    # ------------------------------------------------------------------------------ training
    def _forward(self, head, x):
        feats = self.model(**x) if isinstance(x, dict) else self.model(x)
        return head(feats)

    def _task_loss(self, out, y, loss_fn, local: int):
        """Class-incremental with new classes: the loss over the new classes only (the paper's
        ``logits[:, known:]``); otherwise the plain loss."""
        if local is not None:
            return loss_fn(out[:, local:], y - local)
        return loss_fn(out, y)

    def _make_opt(self, groups, kind, epochs):
        if kind == "sgd":
            opt = torch.optim.SGD(groups, momentum=0.9)
            return opt, torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=[int(0.6 * epochs), int(0.8 * epochs)], gamma=0.5)
        if kind == "sgd-flat":
            return torch.optim.SGD(groups, momentum=0.9), None
        if kind == "adamw":
            return torch.optim.AdamW(groups, weight_decay=self.weight_decay), None
        return torch.optim.Adam(groups), None

    def _fit(self, data, epochs, batch_size, groups, gates_fn, head_fn, loss_of, kind,
             extra_loss=None, steps=None) -> int:
        """Train ``groups`` for ``epochs`` epochs, or exactly ``steps`` optimiser steps (the
        batches repeating epoch after epoch); returns the steps taken."""
        groups = [g for g in groups if g["params"]]
        if not groups or (epochs <= 0 if steps is None else steps <= 0):
            return 0
        opt, sched = self._make_opt(groups, kind, epochs)
        self.model.train()
        taken = 0
        while steps is None and epochs > 0 or steps is not None and taken < steps:
            epochs, before = epochs - 1, taken
            for xb, yb in data.batches(batch_size):
                if steps is not None and taken == steps:
                    break
                taken += 1
                with self.use_gates(gates_fn()):
                    out = head_fn(xb)
                loss = loss_of(out, yb)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
            if taken == before:          # no batch at all: nothing to repeat
                break
        return taken

    def _groups(self, adapter_params, head_params, mags):
        """Phase-1 parameter groups: adapters and head at ``lr``, magnitudes at ``magnitude_lr``
        (weight decay only there, as the paper)."""
        lr = self.lr
        mlr = lr if self.magnitude_lr is None else self.magnitude_lr
        groups = [{"params": adapter_params + head_params, "lr": lr}]
        if mags is not None:
            groups.append({"params": [mags], "lr": mlr, "weight_decay": self.weight_decay})
        return groups

    def _prepare_head(self, data: _Data, head, num_classes):
        """The head of this task and the ``local`` offset of its loss."""
        if self.protocol == "task-incremental":
            return (nn.Identity() if head is None else head), None
        if head is not None:
            raise ValueError("protocol='class-incremental' owns one growing classifier: pass "
                             "num_classes (or nothing), not head; use "
                             "protocol='task-incremental' for a head per task")
        total = int(data.labels().max()) + 1 if num_classes is None else \
            self.known_classes + int(num_classes)
        total = max(total, self.known_classes)
        if self.head is None:
            x0 = data.split(next(iter(data.iterable)))[0] if data.iterable is not None \
                else data.X[:1]
            with torch.no_grad(), self.use_gates(self.gates):
                feats = self.model(**x0) if isinstance(x0, dict) else self.model(x0)
            self.head = nn.Linear(feats.shape[-1], total).to(self.device)
        elif total > self.head.out_features:
            old, new = self.head, nn.Linear(self.head.in_features, total).to(self.device)
            with torch.no_grad():
                new.weight[:old.out_features] = old.weight
                new.bias[:old.out_features] = old.bias
            self.head = new
        new_only = total > self.known_classes > 0
        if new_only and int(data.labels().min()) < self.known_classes:
            # the task revisits classes seen before (e.g. category pairs): the paper's loss over
            # the new classes only would drop them and shift their labels below 0
            new_only = False
        local = self.known_classes if new_only else None
        self._new_total = total
        return self.head, local

    def learn_task(self, X, Y=None, loss_fn: Optional[Callable] = None,
                   head: Optional[nn.Module] = None, num_classes: Optional[int] = None
                   ) -> TaskRecord:
        """Learn the next task.

        ``X, Y``: tensors (also as one pair, ``learn_task((X, Y))``), or ``X`` an iterable of
        batches (``(x, y)`` tuples or dicts with a ``"labels"`` key, e.g. a DataLoader or Hugging
        Face batches) and ``Y`` None. ``loss_fn`` defaults to cross-entropy. Class-incremental:
        labels are global class ids, the classifier grows to ``known + num_classes`` (default: the
        largest label + 1). Task-incremental: ``head`` maps the model's output to this task's
        prediction (``None``: identity).
        """
        _check_count("num_classes", num_classes, 1, optional=True)
        start = time.perf_counter()
        t = len(self.records)
        loss_fn = F.cross_entropy if loss_fn is None else loss_fn
        data = _Data(X, Y, self.generator)
        gate_data = data
        if self.gate_holdout and self.method == "litelora" and t > 0:
            data, gate_data = data.holdout(self.gate_holdout)    # addition: held-out gate
        head, local = self._prepare_head(data, head, num_classes)
        head_params = list(head.parameters())
        for p in head_params:
            p.requires_grad_(True)
        G = self.num_groups
        dev = {"device": self.device}

        def run(h):
            return lambda xb: self._forward(h, xb)

        def loss_of(out, yb):
            return self._task_loss(out, yb, loss_fn, local)

        flat = "sgd-flat" if self.optimizer == "sgd" else "adam"
        if self.method == "head":
            self._fit(data, self.epochs, self.batch_size, [{"params": head_params, "lr": self.lr}],
                      lambda: torch.zeros(max(len(self.layers), 1), 0, **dev), run(head),
                      loss_of, flat)
            return self._finish(t, False, [False], [0.0], torch.zeros(1, 0, **dev), head, start)

        if self.method == "shared":
            if t == 0:
                self._recruit(0)
            ones = torch.ones(1, 1, **dev)
            self._fit(data, self.epochs, self.batch_size,
                      [{"params": self._candidate_params(0) + head_params, "lr": self.lr}],
                      lambda: ones, run(head), loss_of, flat)
            return self._finish(t, t == 0, [True], [1.0], ones.clone(), head, start)

        # magnitudes (G, t+1): carried over (paper) or restarted at 1; the candidate's appended
        old = self.magnitudes if self.carry_magnitudes else torch.full_like(self.magnitudes,
                                                                            self.init_alpha)
        mags = torch.cat([old, torch.full((G, 1), float(self.init_alpha), **dev)], 1)
        mags.requires_grad_(t > 0)          # the paper keeps alpha_0 frozen in task 0
        mag_arg = mags if t > 0 else None
        gated = self.method == "litelora" and t > 0
        lam = self.lam
        if gated and self.lam_scale == "relative":
            # scale-free recruit cost: lam times the task's loss before anything trains on it
            # (the bank as it stands, no candidate), so the gate recruits iff the candidate
            # removes more than about a share lam of the task's initial loss
            lam = self.lam * self._mean_loss(data, self._gate_matrix(t, mags.detach(), None),
                                             head, loss_of)

        if gated and self.warmup:                         # addition: reuse warm-up
            self._fit(data, self.warmup, self.batch_size,
                      self._groups([], head_params, mag_arg), lambda: self._gate_matrix(
                          t, mags, None), run(head), loss_of, flat)
        reuse_state = (mags.detach().clone(), _head_state(head))

        self._recruit(t)                                  # phase 1: candidate with gate 1
        kind = self.optimizer if t > 0 else flat          # task 0: no lr decay (paper)
        self._fit(data, self.epochs, self.batch_size,
                  self._groups(self._candidate_params(t), head_params, mag_arg),
                  lambda: self._gate_matrix(t, mags, 1.0), run(head), loss_of, kind)
        for p in self._candidate_params(t) + head_params:
            p.requires_grad_(False)
        mags.requires_grad_(False)

        keep, prob, steps, logit = [True] * G, [1.0] * G, 0, []
        if gated:
            keep, prob, steps, logit = self._gate_phase(t, gate_data, head, mags, reuse_state,
                                                        loss_of, lam)

        self._settle(t, keep)
        final_beta = torch.tensor(keep, dtype=torch.float32, **dev)
        if not all(keep) and self.retune:                 # addition: re-tune after a prune
            if not any(keep) and self.whole_state:
                with torch.no_grad():
                    mags.copy_(reuse_state[0])
                _load_head(head, reuse_state[1])
            mags.requires_grad_(True)
            for p in head_params:
                p.requires_grad_(True)
            self._fit(data, self.retune, self.batch_size, self._groups([], head_params, mags),
                      lambda: self._gate_matrix(t, mags, final_beta), run(head), loss_of, flat)
            mags.requires_grad_(False)
        self.magnitudes = mags.detach()
        gates = self._gate_matrix(t, self.magnitudes, final_beta).detach()
        rec = self._finish(t, any(keep), keep, prob, gates, head, start)
        rec.gate_steps, rec.gate_logit = steps, logit
        return rec

    @torch.no_grad()
    def _mean_loss(self, data, G, head, loss_of) -> float:
        """The task's mean training loss under gates ``G`` (evaluation mode, no noise)."""
        total = n = 0.0
        self.model.eval()
        with self.use_gates(G):
            for xb, yb in data.batches(self.batch_size):
                total += float(loss_of(self._forward(head, xb), yb)) * len(yb)
                n += len(yb)
        return total / max(n, 1)

    def _loss_gap_gate(self, t, data, head, mags, reuse_state, loss_of, lam):
        """Addition ``gate_rule="loss_gap"``: keep the candidate iff the task's mean loss on the
        gate data without it exceeds the loss with it by more than ``lam`` (no training, no
        noise). Without it: phase 1's head and magnitudes, or with ``whole_state`` the state
        from before phase 1 (the warm-up's). The trained gate aims at the same comparison but
        reaches it through noisy steps (docs/litelora.md: the library's logits do not follow
        it). The recorded "logit" is the margin ``off - on - lam``."""
        on = self._mean_loss(data, self._gate_matrix(t, mags, 1.0), head, loss_of)
        if self.whole_state:
            recruit_head = _head_state(head)
            _load_head(head, reuse_state[1])
            off = self._mean_loss(data, self._gate_matrix(t, reuse_state[0], None), head,
                                  loss_of)
            _load_head(head, recruit_head)
        else:
            off = self._mean_loss(data, self._gate_matrix(t, mags, None), head, loss_of)
        margin = off - on - float(lam)
        G = self.num_groups
        return [margin > 0] * G, [1.0 if margin > 0 else 0.0] * G, 0, [margin] * G

    def _gate_phase(self, t, data, head, mags, reuse_state, loss_of, lam):
        """Phase 2: train only the candidate's logit(s) on ``loss + lam * mean(beta_t)``."""
        if self.gate_rule == "loss_gap":
            return self._loss_gap_gate(t, data, head, mags, reuse_state, loss_of, lam)
        G, L = self.num_groups, len(self.layers)
        dev = {"device": self.device}
        recruit_state = (mags.detach().clone(), _head_state(head))
        logit = torch.full((G,), float(self.gate_init), requires_grad=True, **dev)
        draws = L if (self.noise_per_call and not self.per_layer_gates) else G
        beta = {}

        def betas():
            # one draw per gate call (each layer) in the paper, else one per batch and group
            src = logit.expand(draws) if draws != G else logit
            b = binary_concrete(src, self.tau, self.noise, self.generator)
            beta["b"] = b
            return b

        def gates():
            b = betas()
            if not self.whole_state:
                return self._gate_matrix(t, mags, b)
            bl = b.expand(L) if b.numel() == 1 else b
            m = bl.unsqueeze(1) * recruit_state[0] + (1 - bl.unsqueeze(1)) * reuse_state[0]
            return self._gate_matrix(t, m, bl)

        def head_fn(xb):
            feats = self.model(**xb) if isinstance(xb, dict) else self.model(xb)
            if not self.whole_state or self.per_layer_gates:
                return head(feats)
            b = beta["b"].mean()
            params = {n: b * recruit_state[1][n] + (1 - b) * reuse_state[1][n]
                      for n in recruit_state[1]}
            return torch.func.functional_call(head, params, (feats,))

        budget = self.gate_steps
        per_epoch = data.num_batches(self.gate_batch_size)
        if budget is None and per_epoch is not None and \
                self.gate_epochs * per_epoch < self._steps_to_cross():
            # a small gate set (e.g. a held-out share of a small task): epochs alone could not
            # move the logit across 0, so take the fewest steps that can (batches repeat)
            budget = self._steps_to_cross()
        steps = self._fit(data, self.gate_epochs, self.gate_batch_size,
                          [{"params": [logit], "lr": self.gate_lr}], gates, head_fn, loss_of,
                          "adamw" if self.optimizer == "sgd" else "adam",
                          extra_loss=lambda: lam * beta["b"].mean(), steps=budget)
        self._check_budget(steps)
        prob = torch.sigmoid(logit.detach()).tolist()
        # the hard gate's test: 0.5 exactly prunes
        return [p > 0.5 for p in prob], prob, steps, logit.detach().tolist()

    def _steps_to_cross(self) -> float:
        """Adam(W) moves a parameter at most about ``gate_lr`` per step: the fewest steps that can
        move the logit from ``gate_init`` across 0."""
        return math.ceil(abs(self.gate_init) / self.gate_lr) if self.gate_lr > 0 else math.inf

    def _check_budget(self, steps: int) -> None:
        """Warn when phase 2 cannot move the logit from ``gate_init`` across 0: the decision is
        then the initial one."""
        needed = self._steps_to_cross()
        if steps < needed:
            warnings.warn(f"phase 2 took {steps} optimiser step(s) at gate_lr={self.gate_lr}: the "
                          f"logit cannot move from gate_init={self.gate_init} across 0 (sigmoid "
                          f"0.5) in fewer than {needed}, so the gate keeps its initial decision; "
                          "raise gate_steps (or gate_epochs with gate_steps=None)", UserWarning,
                          stacklevel=3)

    def _recruit(self, t: int) -> None:
        for l, layer in enumerate(self.layers):
            layer.add_adapter()
            self.bank_ids[l].append(t)

    def _candidate_params(self, t: int) -> list:
        out = []
        for l, layer in enumerate(self.layers):
            if t in self.bank_ids[l]:
                out.extend(layer.adapter(self.bank_ids[l].index(t)))
        return out

    def _settle(self, t: int, keep: list) -> None:
        """Freeze the candidate where kept (recording its norm ``n_t``), remove it elsewhere."""
        for l, layer in enumerate(self.layers):
            k = self.bank_ids[l].index(t)
            if keep[l if self.per_layer_gates else 0]:
                A, B = layer.adapter(k)
                layer.freeze_adapter(k)
                n = layer.scaling[k] * float(A.detach().norm() * B.detach().norm())
                self.norms[l][t] = max(n, 1e-12)
            else:
                layer.remove_adapter(k)
                del self.bank_ids[l][k]

    def _finish(self, t, recruited, keep, prob, G, head, start) -> TaskRecord:
        for p in head.parameters():
            p.requires_grad_(False)
        if self.method == "shared":
            for p in self._candidate_params(0):
                p.requires_grad_(True)
        G = G.expand(max(len(self.layers), 1), -1).clone()
        if self.protocol == "class-incremental":
            self.gates = G
            self.known_classes = self._new_total
        rec = TaskRecord(task=t, recruited=bool(recruited), kept_layers=list(keep),
                         gate_prob=[float(p) for p in prob], gates=G,
                         head=head if self.protocol == "task-incremental" else None,
                         seconds=time.perf_counter() - start)
        self.records.append(rec)
        return rec

    # ------------------------------------------------------------------------------ use
    @torch.no_grad()
    def predict(self, t, X=None) -> torch.Tensor:
        """Task-incremental: ``predict(t, X)``, task ``t``'s prediction with its stored gates and
        head. Class-incremental: ``predict(X)`` (or ``predict(t, X)``, ``t`` ignored: no task id at
        test), the logits over every class seen so far with every kept adapter."""
        if X is None:
            t, X = None, t
        self.model.eval()
        if self.protocol == "class-incremental":
            if self.head is None:
                raise RuntimeError("predict before any learn_task")
            with self.use_gates(self.gates):
                return self._forward(self.head, X)
        if t is None:
            raise TypeError("protocol='task-incremental' needs the task id: predict(t, X)")
        rec = self.records[t]
        with self.use_gates(rec.gates):
            return self._forward(rec.head, X)

    @property
    def active_adapters(self) -> int:
        """Adapter ids present in at least one layer's bank."""
        return len({i for ids in self.bank_ids for i in ids})

    def num_params(self) -> int:
        """LoRA parameters in the bank plus the stored gate values (heads excluded: the same for
        every method of a protocol)."""
        lora = sum(p.numel() for layer in self.layers for p in
                   list(layer.lora_A) + list(layer.lora_B))
        if self.protocol == "class-incremental":
            return lora + int(self.gates.count_nonzero())
        return lora + sum(int(r.gates.count_nonzero()) for r in self.records)

    def checkpoint(self) -> dict:
        """Everything ``analyze`` and a later evaluation need (``torch.save`` it)."""
        return {"model": self.model.state_dict(), "bank_ids": self.bank_ids,
                "norms": self.norms, "method": self.method, "variant": self.variant,
                "protocol": self.protocol, "layer_names": self.layer_names,
                "tasks": [{"recruited": r.recruited, "gate_prob": r.gate_prob,
                           "gates": r.gates} for r in self.records]}


def inject_and_learner(model: nn.Module, target_modules, rank: int = 4, alpha: float = 8,
                       **options) -> ContinualLearner:
    """``llf.inject`` the targets, then wrap the model in a :class:`ContinualLearner`."""
    from ..models.inject import inject
    inject(model, target_modules=target_modules, rank=rank, alpha=alpha, num_adapters=0)
    return ContinualLearner(model, **options)


__all__ = ["ContinualLearner", "TaskRecord", "binary_concrete", "sample_noise",
           "inject_and_learner", "METHODS", "VARIANTS", "PROTOCOLS", "ADDITIONS",
           "AUTHORS_GATE_STEPS"]
