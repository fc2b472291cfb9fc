"""LiteLoRA: the recruit-or-reuse gate and the continual learner over ``GatedLoRALinear`` layers.

The learner drives every ``GatedLoRALinear`` of a model (swap them in with ``llf.inject``) through a
stream of tasks. It follows SD-LoRA + LiteLoRA (SPEC section 3) and writes each task's decision into
*task-level gate values* that the fused layer receives through ``layer.set_gates``:

    g_i = beta_i * alpha_i / n_i     (old, frozen adapter i;  n_i = s_i ||B_i||_F ||A_i||_F)
    g_t = beta_t * alpha_t           (the current candidate, not normalised)

so adapter i adds ``alpha_i * B_i A_i x / (||B_i|| ||A_i||)`` once frozen, exactly SD-LoRA's
normalised direction with a trainable magnitude (init 1.0; Adam at ``magnitude_lr`` 0.4, because a
magnitude must travel to ``||Delta W||_F``, several units, within the warm-up). One logit and one
magnitude per adapter and task are shared by every adapted layer (``per_layer_gates=True`` gives
each layer its own logit and magnitudes instead).

Per task t (``method="litelora"``):

0. *reuse warm-up* (our addition, ``reuse_epochs``): train only the magnitudes of the kept adapters
   and the head, candidate absent. The paper is silent here; without this step the candidate,
   trained first, absorbs the whole task and switching it off always hurts, so the gate could never
   find redundancy. After the warm-up the candidate (B starts at 0) only learns what reuse misses.
1. recruit the candidate in every layer; train ``A_t, B_t``, all magnitudes and the head with the
   candidate's gate forced to 1 (``epochs``).
2. train only the gate logit ``l_t`` (init 0.5) for ``gate_epochs`` on ``loss + lam * beta_t``.
   ``beta_t`` is a binary-concrete gate: ``soft = sigmoid((l + noise) / tau)``, hard ``soft > 0.5``
   in the forward, the soft gradient in the backward (straight-through). Logistic noise by
   default (``noise="gumbel"`` as in the authors' code); noise only on the current logit, only in
   training. The gate switches between two whole states (our choice, the paper is silent): *reuse*
   (the magnitudes and head at the end of step 0) and *recruit* (those of step 1, plus the
   candidate); magnitudes and head parameters are interpolated by ``beta_t``, so a hard 0 or 1 is
   exactly one state. Without this, switching the candidate off would leave a head and magnitudes
   tuned to work *with* it, and reuse would always look worse than it is. With logistic noise the
   gate is off with probability ``sigmoid(-l)``; an off sample pushes ``l`` up by the loss slope
   towards the recruit state, ``lam`` pushes it down on every sample, so ``l`` settles above 0
   iff recruiting gains more than about ``2 * lam`` of training loss.
3. keep iff ``sigmoid(l_t) >= 0.5``: freeze it. Else remove it from the layers for good and re-tune
   the kept magnitudes and the head (``reuse_epochs``): the task is served by reuse.

Task 0 is always kept. The gate values (and head) of every task are stored, so any task can be
evaluated later with exactly its own mix of the bank (task-aware inference; adapters recruited
later, or pruned, get gate 0 and cost nothing in the fused kernel). Unlike SD-LoRA the magnitudes
are per task rather than one shared vector, so a frozen bank means no forgetting for old tasks.

Baselines in the same class: ``method="sdlora"`` (one adapter per task: step 1 only, always kept)
and ``method="shared"`` (one adapter trained on every task in turn, gate 1, a head per task).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn

from .layer import GatedLoRALinear

METHODS = ("litelora", "sdlora", "shared")
NOISES = ("logistic", "gumbel")


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


def _snapshot(magnitudes, head: nn.Module):
    """Detached copies of the magnitudes and the head's parameters."""
    mags = None if magnitudes is None else magnitudes.detach().clone()
    return mags, {n: p.detach().clone() for n, p in head.named_parameters()}


@torch.no_grad()
def _restore(snapshot, magnitudes, head: nn.Module) -> None:
    if magnitudes is not None:
        magnitudes.copy_(snapshot[0])
    for n, p in head.named_parameters():
        p.copy_(snapshot[1][n])


def gated_layers(model: nn.Module) -> list:
    """``[(name, GatedLoRALinear)]`` in module order (each shared module once)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GatedLoRALinear)]


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
    extra: dict = field(default_factory=dict)


class ContinualLearner:
    """LiteLoRA (and its two baselines) over the ``GatedLoRALinear`` layers of ``model``.

    Args:
        model: maps an input batch to features (or outputs); its adapted layers must be
            ``GatedLoRALinear`` with no adapters yet.
        method: ``"litelora"``, ``"sdlora"`` (one adapter per task) or ``"shared"``.
        lam: recruit cost ``lambda`` of phase 2 (the knob that trades adapters for accuracy).
        tau, noise, gate_init: the binary-concrete gate (temperature, ``"logistic"``/``"gumbel"``,
            initial logit 0.5).
        per_layer_gates: one logit and one magnitude vector per layer instead of per task.
        epochs, reuse_epochs, gate_epochs: phase 1, warm-up / re-tune, and phase 2 epochs.
        batch_size, gate_batch_size: minibatch sizes (phase 2 uses small batches: more steps on
            its single logit).
        lr, magnitude_lr, gate_lr: Adam learning rates for adapters and heads, magnitudes, logits.
        seed: seeds the shuffling and the gate noise.
    """

    def __init__(self, model: nn.Module, method: str = "litelora", lam: float = 0.05,
                 tau: float = 1.0, noise: str = "logistic", gate_init: float = 0.5,
                 per_layer_gates: bool = False, epochs: int = 20, reuse_epochs: int = 10,
                 gate_epochs: int = 1, batch_size: int = 64, gate_batch_size: int = 8,
                 lr: float = 1e-2, magnitude_lr: float = 0.4, gate_lr: float = 0.1,
                 seed: int = 0):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        self.model, self.method = model, method
        self.layers = [m for _, m in gated_layers(model)]
        if not self.layers:
            raise ValueError("model has no GatedLoRALinear layer: call "
                             "llf.inject(model, ...) first")
        if any(m.num_adapters for m in self.layers):
            raise ValueError("the GatedLoRALinear layers must start with no adapters, found "
                             f"{[m.num_adapters for m in self.layers]}")
        for p in model.parameters():
            p.requires_grad_(False)
        # gates, magnitudes and logits live in float32 on the layers' device
        self.device = self.layers[0].weight.device
        self.lam, self.tau, self.noise, self.gate_init = lam, tau, noise, gate_init
        self.per_layer_gates = per_layer_gates
        self.epochs, self.reuse_epochs, self.gate_epochs = epochs, reuse_epochs, gate_epochs
        self.batch_size, self.gate_batch_size = batch_size, gate_batch_size
        self.lr, self.magnitude_lr, self.gate_lr = lr, magnitude_lr, gate_lr
        self.generator = torch.Generator().manual_seed(seed)
        L = len(self.layers)
        self.bank_ids = [[] for _ in range(L)]     # per layer: adapter id of each bank slot
        self.norms = [{} for _ in range(L)]        # per layer: id -> n_i of a frozen adapter
        self.records: list = []

    # ------------------------------------------------------------------------------ gates
    @property
    def num_groups(self) -> int:
        return len(self.layers) if self.per_layer_gates else 1

    @contextlib.contextmanager
    def use_gates(self, G: torch.Tensor):
        """Hand ``G`` ``(L or 1, n_ids)`` to every layer: layer l gets ``G[l, id]`` for each
        adapter id in its bank (0 for ids past ``G``'s width)."""
        G = G.expand(len(self.layers), G.shape[1])
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
        N = torch.ones(len(self.layers), n_ids, device=self.device)
        for l, norms in enumerate(self.norms):
            for i, n in norms.items():
                if i < n_ids:
                    N[l, i] = n
        return N

    def _gate_matrix(self, t: int, magnitudes, cand_alpha, cand_beta) -> torch.Tensor:
        """Training-time gates ``(L, t+1)``: normalised magnitudes of old ids, then the
        candidate's ``beta * alpha`` (or 0 when absent)."""
        L = len(self.layers)
        present = torch.zeros(L, t + 1, device=self.device)
        for l, ids in enumerate(self.bank_ids):
            present[l, [i for i in ids if i <= t]] = 1.0
        cols = []
        if t > 0:
            cols.append((magnitudes.expand(L, t) / self._norm_table(t)))
        if cand_alpha is None:
            cols.append(torch.zeros(L, 1, device=self.device))
        else:
            cols.append((cand_beta * cand_alpha).expand(L).unsqueeze(1))
        # ids absent from a layer (pruned there, or not recruited yet) get exactly 0
        return torch.cat(cols, 1) * present

    # ------------------------------------------------------------------------------ training
    def _batches(self, X, Y, batch_size):
        perm = torch.randperm(X.shape[0], generator=self.generator).to(X.device)
        for s in range(0, X.shape[0], batch_size):
            idx = perm[s:s + batch_size]
            yield X[idx], Y[idx]

    def _fit(self, X, Y, loss_fn, head, epochs, batch_size, param_groups, gates_fn,
             extra_loss=None):
        params = [p for g in param_groups for p in g["params"]]
        if not params or epochs <= 0:
            return
        opt = torch.optim.Adam(param_groups)
        self.model.train()
        for _ in range(epochs):
            for xb, yb in self._batches(X, Y, batch_size):
                G = gates_fn()
                with self.use_gates(G):
                    out = head(self.model(xb))
                loss = loss_fn(out, yb)
                if extra_loss is not None:
                    loss = loss + extra_loss()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

    def learn_task(self, X: torch.Tensor, Y: torch.Tensor, loss_fn: Callable,
                   head: Optional[nn.Module] = None) -> TaskRecord:
        """Learn the next task from ``(X, Y)``; ``head`` maps the model's output to the task's
        prediction (a new one per task, on the model's device, or ``None`` for the identity)."""
        start = time.perf_counter()
        t = len(self.records)
        head = nn.Identity() if head is None else head
        head_params = list(head.parameters())
        for p in head_params:
            p.requires_grad_(True)
        G_groups = self.num_groups
        lr = self.lr

        if self.method == "shared":
            if t == 0:
                self._recruit(0)
            A_B = self._candidate_params(0)
            ones = torch.ones(1, 1, device=self.device)
            self._fit(X, Y, loss_fn, head, self.epochs, self.batch_size,
                      [{"params": A_B + head_params, "lr": lr}], lambda: ones)
            return self._finish(t, True, [True], [1.0], ones.clone(), head, start)

        dev = {"device": self.device}
        magnitudes = torch.ones(G_groups, t, requires_grad=True, **dev) if t > 0 else None
        mag_group = [{"params": [magnitudes], "lr": self.magnitude_lr}] if t > 0 else []
        gated = self.method == "litelora" and t > 0
        if gated:                                         # 0. reuse warm-up
            self._fit(X, Y, loss_fn, head, self.reuse_epochs, self.batch_size,
                      mag_group + [{"params": head_params, "lr": lr}],
                      lambda: self._gate_matrix(t, magnitudes, None, None))
        reuse = _snapshot(magnitudes, head)

        self._recruit(t)                                  # 1. candidate with gate 1
        cand_alpha = torch.ones(G_groups, requires_grad=True, **dev)
        one = torch.ones(G_groups, **dev)
        self._fit(X, Y, loss_fn, head, self.epochs, self.batch_size,
                  mag_group + [{"params": self._candidate_params(t) + head_params, "lr": lr},
                               {"params": [cand_alpha], "lr": self.magnitude_lr}],
                  lambda: self._gate_matrix(t, magnitudes, cand_alpha, one))
        for p in self._candidate_params(t) + head_params:
            p.requires_grad_(False)
        cand_alpha.requires_grad_(False)
        if magnitudes is not None:
            magnitudes.requires_grad_(False)

        keep = [True] * G_groups
        prob = [1.0] * G_groups
        if gated:                                         # 2. gate logit only
            recruit = _snapshot(magnitudes, head)
            logit = torch.full((G_groups,), float(self.gate_init), requires_grad=True, **dev)
            beta = {}

            # The gate chooses between two whole states: reuse (phase-0 magnitudes and head) and
            # recruit (phase-1 magnitudes, head and the candidate). Parameters are interpolated,
            # so a hard beta of 0 or 1 gives exactly one state and the straight-through gradient
            # is the loss slope along the line between them. Per-layer gates keep the recruit head.
            def gates():
                b = beta["b"] = binary_concrete(logit, self.tau, self.noise, self.generator)
                mags = b.unsqueeze(1) * recruit[0] + (1 - b.unsqueeze(1)) * reuse[0]
                return self._gate_matrix(t, mags, cand_alpha, b)

            def mixed_head(features):
                if self.per_layer_gates or not recruit[1]:
                    return head(features)
                b = beta["b"][0]
                params = {n: b * recruit[1][n] + (1 - b) * reuse[1][n] for n in recruit[1]}
                return torch.func.functional_call(head, params, (features,))

            self._fit(X, Y, loss_fn, mixed_head, self.gate_epochs, self.gate_batch_size,
                      [{"params": [logit], "lr": self.gate_lr}], gates,
                      extra_loss=lambda: self.lam * beta["b"].mean())
            prob = torch.sigmoid(logit.detach()).tolist()
            keep = [p >= 0.5 for p in prob]             # 3. decide

        final_alpha = cand_alpha.detach() * torch.tensor(keep, dtype=torch.float32, **dev)
        self._settle(t, keep)
        if not all(keep):                               # re-tune the reuse mix and the head
            if not any(keep):
                _restore(reuse, magnitudes, head)
            magnitudes.requires_grad_(True)
            for p in head_params:
                p.requires_grad_(True)
            self._fit(X, Y, loss_fn, head, self.reuse_epochs, self.batch_size,
                      mag_group + [{"params": head_params, "lr": lr}],
                      lambda: self._gate_matrix(t, magnitudes, final_alpha, one))
            magnitudes.requires_grad_(False)
        G = self._gate_matrix(t, magnitudes, final_alpha, one).detach()
        return self._finish(t, any(keep), keep, prob, G, head, start)

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
        rec = TaskRecord(task=t, recruited=bool(recruited), kept_layers=list(keep),
                         gate_prob=[float(p) for p in prob], gates=G.expand(len(self.layers), -1)
                         .clone(), head=head, seconds=time.perf_counter() - start)
        self.records.append(rec)
        return rec

    # ------------------------------------------------------------------------------ use
    @torch.no_grad()
    def predict(self, t: int, X: torch.Tensor) -> torch.Tensor:
        """Task ``t``'s prediction for ``X`` with its stored gates and head."""
        rec = self.records[t]
        self.model.eval()
        with self.use_gates(rec.gates):
            return rec.head(self.model(X))

    @property
    def active_adapters(self) -> int:
        """Adapter ids present in at least one layer's bank."""
        return len({i for ids in self.bank_ids for i in ids})

    def num_params(self) -> int:
        """LoRA parameters in the bank plus the stored gate values (heads excluded: the same for
        every method)."""
        lora = sum(p.numel() for layer in self.layers for p in
                   list(layer.lora_A) + list(layer.lora_B))
        return lora + sum(int(r.gates.count_nonzero()) for r in self.records)

    def checkpoint(self) -> dict:
        """Everything ``analyze`` and a later evaluation need (``torch.save`` it)."""
        return {"model": self.model.state_dict(), "bank_ids": self.bank_ids,
                "norms": self.norms, "method": self.method,
                "layer_names": [n for n, _ in gated_layers(self.model)],
                "tasks": [{"recruited": r.recruited, "gate_prob": r.gate_prob,
                           "gates": r.gates} for r in self.records]}


def inject_and_learner(model: nn.Module, target_modules, rank: int = 4, alpha: float = 8,
                       **options) -> ContinualLearner:
    """``llf.inject`` the targets, then wrap the model in a :class:`ContinualLearner`."""
    from .inject import inject
    inject(model, target_modules=target_modules, rank=rank, alpha=alpha)
    return ContinualLearner(model, **options)


__all__ = ["ContinualLearner", "TaskRecord", "binary_concrete", "sample_noise", "gated_layers",
           "inject_and_learner", "METHODS"]
