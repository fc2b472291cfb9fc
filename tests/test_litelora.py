"""The LiteLoRA gate and the continual learner's mechanics (decisions on real streams: test_cl.py).

Training runs on the PyTorch fast path (``fast_path`` fixture: the interpreter would take minutes),
except one tiny run that checks the Triton kernels (interpreter) train the same model.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from litelora_fast.models.inject import inject
from litelora_fast.litelora import ContinualLearner, binary_concrete, sample_noise

# Build the kernels now, at collection, while TRITON_INTERPRET=1 (see test_layer.py): a fast-path
# test that imports triton first would leave them non-interpreted for the interpreter test below.
from litelora_fast.kernels import fused_dyw_dsa as _dx, fused_xw_sgb as _fwd  # noqa: F401,E402

# fp32 on CPU, widths <= 24: a forward through the fused fast path and a float64 re-computation
# agree to ~1e-7 relative; 1e-5 leaves room for the packing order.
TOL = 1e-5


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_binary_concrete_forward_is_hard_backward_is_soft(seed, tau):
    logit = torch.randn(64, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    beta = binary_concrete(logit, tau, "logistic", g1)
    assert set(beta.detach().unique().tolist()) <= {0.0, 1.0}
    beta.sum().backward()
    z = (logit.detach() + sample_noise(logit.shape, "logistic", generator=g2)) / tau
    soft = torch.sigmoid(z)
    assert torch.equal(beta.detach(), (soft > 0.5).float())
    assert torch.allclose(logit.grad, soft * (1 - soft) / tau, rtol=1e-5, atol=1e-7)


def test_binary_concrete_eval_has_no_noise(seed):
    logit = torch.randn(100, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(binary_concrete(logit, noise=None), (logit > 0).float())


@pytest.mark.parametrize("kind", ["logistic", "gumbel"])
def test_gate_on_probability(seed, kind):
    """Logistic noise: P(on) = sigmoid(l); Gumbel noise: P(l + G > 0) = 1 - exp(-exp(l))."""
    g = torch.Generator().manual_seed(seed)
    l = float(torch.empty(1).uniform_(-1.5, 1.5, generator=g))
    n = 40000
    on = binary_concrete(torch.full((n,), l), 1.0, kind, g).mean().item()
    want = 1 / (1 + math.exp(-l)) if kind == "logistic" else 1 - math.exp(-math.exp(l))
    assert abs(on - want) < 0.015        # 40000 Bernoulli draws: std <= 0.0025, 6 sigma


def _model(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8))
    return inject(net, target_modules=["0", "2"], rank=2, alpha=4, num_adapters=0)


def _task(g, n=64):
    X = torch.randn(n, 12, generator=g)
    return X, torch.tanh(X @ torch.randn(12, 8, generator=g))


# regression tasks with a per-task head: the task-incremental protocol; our additions on (the
# paper's variant is tested on its own below)
FAST = dict(epochs=2, reuse_epochs=2, gate_epochs=1, gate_batch_size=16, batch_size=32,
            variant="library", protocol="task-incremental")


def test_learner_stores_gates_and_never_forgets(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(3)]
    learner = ContinualLearner(_model(seed), lam=-10.0, seed=seed, **FAST)   # lam < 0: keep
    first = None
    snapshots = []
    for t, (X, Y) in enumerate(tasks):
        rec = learner.learn_task(X, Y, F.mse_loss)
        assert rec.recruited
        if t == 0:
            first = learner.predict(0, X)
            snapshots = [p.detach().clone() for layer in learner.layers
                         for p in layer.adapter(0)]
    # one magnitude per task and adapter, shared by every layer: gate * n_i (old adapters) and
    # the gate itself (the task's own adapter) agree across the two layers
    for t, rec in enumerate(learner.records):
        assert rec.gates.shape == (2, t + 1)
        mags = [[float(rec.gates[l, i]) * (learner.norms[l][i] if i < t else 1.0)
                 for i in range(t + 1)] for l in range(2)]
        assert mags[0] == pytest.approx(mags[1], rel=1e-5)
    assert learner.active_adapters == 3
    assert all(layer.num_adapters == 3 and all(layer.is_frozen(k) for k in range(3))
               for layer in learner.layers)
    # task 0's adapters are bit-identical and its prediction unchanged after later tasks
    now = [p.detach() for layer in learner.layers for p in layer.adapter(0)]
    assert all(torch.equal(a, b) for a, b in zip(snapshots, now))
    assert torch.equal(learner.predict(0, tasks[0][0]), first)
    # layers are handed back their own gates after every forward
    assert all(layer._external_gates is None for layer in learner.layers)


def test_learner_prediction_matches_float64_recomputation(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), lam=-10.0, seed=seed, **FAST)
    for _ in range(2):
        learner.learn_task(*_task(g), F.mse_loss)
    X = torch.randn(20, 12, generator=g)
    rec = learner.records[1]
    h = X.double()
    for l, layer in enumerate(learner.layers):
        W = layer.weight.double()
        y = h @ W.T + layer.bias.double()
        for k, i in enumerate(learner.bank_ids[l]):
            A, B = (p.double() for p in layer.adapter(k))
            y = y + rec.gates[l, i].double() * layer.scaling[k] * (h @ A.T) @ B.T
        h = torch.tanh(y) if l == 0 else y
    out = learner.predict(1, X).double()
    assert ((out - h).norm() / h.norm()).item() < TOL
    # an old adapter's gate is its magnitude over n_i = s_i ||B_i|| ||A_i|| (SD-LoRA normalisation)
    layer = learner.layers[0]
    A, B = layer.adapter(0)
    n0 = layer.scaling[0] * float(A.norm() * B.norm())
    assert abs(learner.norms[0][0] - n0) <= 1e-6 * n0


def test_prune_removes_candidate_everywhere(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    opts = dict(FAST, gate_batch_size=4)                 # 16 gate steps
    learner = ContinualLearner(_model(seed), lam=100.0, seed=seed, **opts)  # recruiting too dear
    X0, Y0 = _task(g)
    learner.learn_task(X0, Y0, F.mse_loss)
    before = learner.predict(0, X0)
    rec = learner.learn_task(*_task(g), F.mse_loss)
    assert not rec.recruited and rec.gate_prob[0] < 0.5
    assert learner.active_adapters == 1
    assert all(layer.num_adapters == 1 and ids == [0]
               for layer, ids in zip(learner.layers, learner.bank_ids))
    assert learner.records[0].recruited                 # task 0 is always kept
    assert torch.equal(learner.predict(0, X0), before)
    assert learner.predict(1, X0).shape == Y0.shape     # served by reuse


def test_per_layer_gates_and_baselines(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(2)]
    per_layer = ContinualLearner(_model(seed), per_layer_gates=True, seed=seed, **FAST)
    shared = ContinualLearner(_model(seed), method="shared", seed=seed, **FAST)
    sdlora = ContinualLearner(_model(seed), method="sdlora", seed=seed, **FAST)
    head = ContinualLearner(_model(seed), method="head", seed=seed, **FAST)
    for X, Y in tasks:
        rec = per_layer.learn_task(X, Y, F.mse_loss)
        assert len(rec.gate_prob) == 2                     # one logit per layer
        shared.learn_task(X, Y, F.mse_loss, head=nn.Linear(8, 8))
        sdlora.learn_task(X, Y, F.mse_loss)
        head.learn_task(X, Y, F.mse_loss, head=nn.Linear(8, 8))
    assert head.active_adapters == 0 and head.num_params() == 0
    assert all(layer.num_adapters == 0 for layer in head.layers)
    for l, layer in enumerate(per_layer.layers):
        assert layer.num_adapters == len(per_layer.bank_ids[l]) >= 1
    assert shared.active_adapters == 1 and shared.layers[0].num_adapters == 1
    assert sdlora.active_adapters == 2 and all(r.recruited for r in sdlora.records)
    assert per_layer.num_params() > 0


def test_learner_errors():
    with pytest.raises(ValueError, match="no GatedLoRALinear"):
        ContinualLearner(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValueError, match="method"):
        ContinualLearner(_model(0), method="ewc")
    with pytest.raises(ValueError, match="noise"):
        ContinualLearner(_model(0), noise="gauss")
    with pytest.raises(ValueError, match="variant"):
        ContinualLearner(_model(0), variant="mine")
    with pytest.raises(ValueError, match="protocol"):
        ContinualLearner(_model(0), protocol="domain")
    with pytest.raises(TypeError, match="unknown option"):
        ContinualLearner(_model(0), warm_up=3)
    learner = ContinualLearner(_model(0))
    with pytest.raises(ValueError, match="class-incremental"):
        learner.learn_task(torch.randn(4, 12), torch.zeros(4, dtype=torch.long),
                           head=nn.Linear(8, 2))
    with pytest.raises(ValueError, match="same first dimension"):
        learner.learn_task(torch.randn(4, 12), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="re-iterable"):
        learner.learn_task(iter([(torch.randn(4, 12), torch.zeros(4, dtype=torch.long))]))
    m = _model(0)
    m[0].add_adapter()
    with pytest.raises(ValueError, match="no adapters"):
        ContinualLearner(m)
    with pytest.raises(ValueError, match="tau"):
        binary_concrete(torch.zeros(2), tau=0.0)


def _tiny_run(seed):
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), lam=-10.0, seed=seed, epochs=1, reuse_epochs=1,
                               gate_epochs=1, batch_size=32, gate_batch_size=32,
                               variant="library", protocol="task-incremental")
    tasks = [_task(g, 32) for _ in range(2)]
    for X, Y in tasks:
        learner.learn_task(X, Y, F.mse_loss)
    return [learner.predict(t, X) for t, (X, _) in enumerate(tasks)]


def test_learner_on_triton_kernels_matches_fast_path(seed, monkeypatch):
    """The learner's trainable task-level gates through the Triton kernels (interpreter) train to
    the same model as through the PyTorch fast path."""
    from litelora_fast.kernels import LAUNCH_COUNTS
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fast = _tiny_run(seed)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    before = LAUNCH_COUNTS.get("grad_shrink", 0)
    kern = _tiny_run(seed)
    assert LAUNCH_COUNTS.get("grad_shrink", 0) > before
    # ~12 Adam steps in fp32 from identical starts: the two paths differ by summation order only
    # (~1e-7 per op); Adam's normalised steps can amplify that a little, not to 1e-4
    for a, b in zip(fast, kern):
        assert ((a - b).norm() / b.norm()).item() < 1e-4


# ------------------------------------------------------------------ the paper's variant, protocols
def test_paper_variant_is_the_authors_configuration():
    """The settings read from tanguy8001/LiteLoRA (litelora.py's docstring cites each)."""
    learner = ContinualLearner(_model(0))
    assert learner.variant == "paper" and learner.protocol == "class-incremental"
    assert (learner.optimizer, learner.noise, learner.noise_per_call) == ("sgd", "gumbel", True)
    assert (learner.warmup, learner.whole_state, learner.retune) == (0, False, 0)
    assert learner.magnitude_lr is None and learner.carry_magnitudes
    assert learner.gate_init == 0.5 and learner.init_alpha == 1.0
    assert learner.lam_scale == "absolute"
    lib = ContinualLearner(_model(0), variant="library", warmup=0)
    assert lib.warmup == 0 and lib.whole_state and lib.retune == 10   # an option overrides


def _classes(g, classes, n=48):
    """A separable classification task over the global class ids ``classes``."""
    X = torch.randn(n, 12, generator=g)
    which = torch.randint(len(classes), (n,), generator=g)
    X[:, :len(classes)] += 3 * F.one_hot(which, len(classes)).float()
    return X, torch.tensor(classes)[which]


def test_class_incremental_head_grows_old_rows_untouched(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), seed=seed, epochs=3, batch_size=16,
                               gate_batch_size=16)
    X0, Y0 = _classes(g, [0, 1])
    learner.learn_task(X0, Y0)
    assert learner.head.out_features == 2 and learner.known_classes == 2
    rows = learner.head.weight.detach().clone()
    X1, Y1 = _classes(g, [2, 3, 4])
    learner.learn_task(X1, Y1)
    # the loss covers the new classes only (the paper's logits[:, known:]): SGD leaves the old
    # rows exactly where they were
    assert learner.head.out_features == 5
    assert torch.equal(learner.head.weight[:2], rows)
    assert learner.predict(X0).shape == (48, 5)
    assert torch.equal(learner.predict(7, X0), learner.predict(X0))   # no task id at test
    # one gate vector for every task: all kept adapters summed
    assert learner.gates.shape == (2, 2)


def test_class_incremental_task_that_revisits_old_classes(seed, fast_path):
    """A task with one old and one new class (category pairs): the paper's new-classes-only loss
    would shift the old label below 0 (an IndexError before); it trains on every class seen, so
    the old class's row moves too."""
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), seed=seed, epochs=3, batch_size=16,
                               gate_batch_size=16)
    X0, Y0 = _classes(g, [0, 1])
    learner.learn_task(X0, Y0)
    rows = learner.head.weight.detach().clone()
    X1, Y1 = _classes(g, [1, 2])
    learner.learn_task(X1, Y1)
    assert learner.head.out_features == 3 and learner.known_classes == 3
    assert not torch.equal(learner.head.weight[1], rows[1]), "class 1 is trained on again"
    X2, Y2 = _classes(g, [0, 2])          # only old classes: nothing grows
    learner.learn_task(X2, Y2)
    assert learner.head.out_features == 3
    assert learner.predict(X2).shape == (X2.shape[0], 3)


def test_magnitudes_carried_over_or_restarted(seed, fast_path):
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(3)]
    got = {}
    for carry in (True, False):
        learner = ContinualLearner(_model(seed), variant="paper", protocol="task-incremental",
                                   carry_magnitudes=carry, lam=-10.0, seed=seed, epochs=2,
                                   batch_size=32, gate_batch_size=32)
        for X, Y in tasks[:2]:
            learner.learn_task(X, Y, F.mse_loss)
        after1 = learner.magnitudes.clone()
        learner.epochs = 0                         # task 2 trains nothing before its gate
        learner.learn_task(*tasks[2], F.mse_loss)
        got[carry] = (after1, learner.magnitudes[:, :2].clone())
    after1, now = got[True]
    assert not torch.equal(after1, torch.ones_like(after1))   # phase 1 moved them
    assert torch.equal(now, after1)                           # the paper: carried over
    assert torch.equal(got[False][1], torch.ones_like(now))   # restarted at 1


def test_paper_noise_is_gumbel_per_gate_call_only_in_phase_2(seed, fast_path, monkeypatch):
    import litelora_fast.litelora.learner as ll
    calls = []
    real = ll.binary_concrete

    def spy(logit, tau=1.0, noise="logistic", generator=None):
        calls.append((tuple(logit.shape), noise))
        return real(logit, tau, noise, generator)

    monkeypatch.setattr(ll, "binary_concrete", spy)
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), protocol="task-incremental", seed=seed, epochs=1,
                               batch_size=32, gate_batch_size=4, gate_steps=None)
    learner.learn_task(*_task(g), F.mse_loss)
    assert calls == []                                  # task 0 and phase 1: gate forced to 1
    learner.learn_task(*_task(g), F.mse_loss)
    assert len(calls) == 64 // 4                        # phase 2: one call per batch ...
    assert set(calls) == {((2,), "gumbel")}             # ... one draw per adapted layer
    calls.clear()
    lib = ContinualLearner(_model(seed), variant="library", protocol="task-incremental",
                           seed=seed, epochs=1, reuse_epochs=1, batch_size=32,
                           gate_batch_size=16)
    for _ in range(2):
        lib.learn_task(*_task(g), F.mse_loss)
    assert set(calls) == {((1,), "logistic")}           # ours: one draw shared by the layers


def test_relative_lam_is_scale_free(seed, fast_path):
    """With ``lam_scale="relative"`` and Adam, multiplying the loss by 1000 leaves the gate's
    trajectory unchanged (up to Adam's eps); an absolute lam does not."""
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(2)]

    def probs(scale, lam_scale):
        learner = ContinualLearner(_model(seed), variant="library", protocol="task-incremental",
                                   lam_scale=lam_scale, lam=0.1, seed=seed, epochs=2,
                                   reuse_epochs=2, batch_size=32, gate_batch_size=8)
        for X, Y in tasks:
            rec = learner.learn_task(X, Y, lambda o, y: scale * F.mse_loss(o, y))
        return rec.gate_prob[0]

    assert probs(1000.0, "relative") == pytest.approx(probs(1.0, "relative"), abs=2e-3)
    assert abs(probs(1000.0, "absolute") - probs(1.0, "absolute")) > 1e-3


def test_learn_task_accepts_batches_and_dicts(seed, fast_path):
    """Tensors, a DataLoader of (x, y) and a list of Hugging-Face-style dict batches."""
    from torch.utils.data import DataLoader, TensorDataset

    class Keyword(nn.Module):              # a model called with keyword arguments
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, input_features):
            return self.net(input_features)

    g = torch.Generator().manual_seed(seed)
    X, Y = _classes(g, [0, 1, 2], n=64)
    loader = DataLoader(TensorDataset(X, Y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    dicts = [{"input_features": X[i:i + 16], "labels": Y[i:i + 16]} for i in range(0, 64, 16)]
    X2, Y2 = _classes(g, [3, 4], n=32)
    later = [(X2[:16], Y2[:16]), (X2[16:], Y2[16:])]       # a plain list of (x, y) batches
    for data, model in ((loader, _model(seed)), (dicts, Keyword(_model(seed)))):
        learner = ContinualLearner(model, seed=seed, epochs=2)
        rec = learner.learn_task(data)
        assert rec.recruited and learner.head.out_features == 3
        if data is loader:
            learner.learn_task(later, num_classes=2)
        else:
            learner.learn_task([{"input_features": x, "labels": y} for x, y in later])
        assert learner.head.out_features == 5
        x = X if data is loader else {"input_features": X}
        assert learner.predict(x).shape == (64, 5)


def test_learn_task_takes_a_pair_of_tensors(seed, fast_path):
    """``learn_task((X, Y))``, as docs/litelora.md's loop over ``(X, Y)`` pairs writes it, is
    ``learn_task(X, Y)``: the same decisions and the same predictions, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    X, Y = _classes(g, [0, 1, 2], n=48)
    runs = []
    for call in (lambda l: l.learn_task(X, Y), lambda l: l.learn_task((X, Y)),
                 lambda l: l.learn_task([X, Y])):
        learner = ContinualLearner(_model(seed), seed=seed, epochs=2, gate_steps=2)
        rec = call(learner)
        runs.append((rec.recruited, learner.predict(X)))
    for recruited, logits in runs[1:]:
        assert recruited == runs[0][0] and torch.equal(logits, runs[0][1])


# each count of the learner: (keyword, a value of the right type but out of range)
COUNTS = {"epochs": -1, "gate_epochs": -1, "batch_size": 0, "gate_batch_size": 0, "warmup": -1,
          "retune": -2, "gate_steps": -1, "reuse_epochs": -1}


@pytest.mark.parametrize("name", list(COUNTS))
def test_learner_counts_are_checked(name):
    with pytest.raises(ValueError, match=rf"{name} must be an int >= \d, got {COUNTS[name]}"):
        ContinualLearner(_model(0), variant="library", **{name: COUNTS[name]})
    with pytest.raises(TypeError, match=rf"{name} must be an int.*float 2.5"):
        ContinualLearner(_model(0), variant="library", **{name: 2.5})
    with pytest.raises(TypeError, match=rf"{name} must be an int.*bool True"):
        ContinualLearner(_model(0), variant="library", **{name: True})


def test_learn_task_checks_num_classes():
    learner = ContinualLearner(_model(0))
    X, y = torch.randn(4, 12), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        learner.learn_task(X, y, num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be an int or None, got str '2'"):
        learner.learn_task(X, y, num_classes="2")


def _gate_calls(monkeypatch):
    import litelora_fast.litelora.learner as ll
    calls, real = [], ll.binary_concrete

    def spy(logit, tau=1.0, noise="logistic", generator=None):
        calls.append(1)
        return real(logit, tau, noise, generator)

    monkeypatch.setattr(ll, "binary_concrete", spy)
    return calls


@pytest.mark.parametrize("steps", [3, 39])
def test_gate_step_budget_is_exact_and_recorded(seed, fast_path, monkeypatch, steps):
    """``gate_steps``: exactly that many phase-2 steps (64 examples at batch 16 = 4 per epoch,
    repeated), recorded with the final logit; the default is the authors' 39."""
    from litelora_fast.litelora import AUTHORS_GATE_STEPS
    calls = _gate_calls(monkeypatch)
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), protocol="task-incremental", seed=seed, epochs=1,
                               batch_size=32, gate_batch_size=16, gate_steps=steps)
    first = learner.learn_task(*_task(g), F.mse_loss)
    assert (first.gate_steps, first.gate_logit) == (0, [])          # task 0: no gate phase
    with pytest.warns(UserWarning, match="cannot move") if steps < 10 else _no_warning():
        rec = learner.learn_task(*_task(g), F.mse_loss)
    assert len(calls) == steps == rec.gate_steps
    assert len(rec.gate_logit) == 1
    assert rec.gate_prob[0] == pytest.approx(1 / (1 + math.exp(-rec.gate_logit[0])))
    assert ContinualLearner(_model(seed)).gate_steps == AUTHORS_GATE_STEPS == 39


def _no_warning():
    import warnings
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            yield
    return ctx()


def test_gate_budget_warning_is_true(seed, fast_path):
    """The warning's claim: with a recruit cost so high that every step pushes the logit down,
    9 steps at lr 0.05 from 0.5 leave it above 0 (kept); 39 steps prune."""
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(2)]
    out = {}
    for steps in (9, 39):
        learner = ContinualLearner(_model(seed), protocol="task-incremental", seed=seed, epochs=1,
                                   batch_size=32, gate_batch_size=16, gate_steps=steps,
                                   lam=1e3)
        with pytest.warns(UserWarning) if steps == 9 else _no_warning():
            for X, Y in tasks:
                rec = learner.learn_task(X, Y, F.mse_loss)
        out[steps] = (rec.recruited, rec.gate_logit[0])
    assert out[9][0] and 0 < out[9][1] < 0.5
    assert not out[39][0] and out[39][1] < 0


def test_epoch_budget_has_a_floor_only_where_it_could_not_move_the_logit(seed, fast_path):
    """``gate_steps=None``: ``gate_epochs`` epochs when they are enough (64 examples at batch 4:
    16 steps >= 10); an iterable without a length keeps its 2 batches and warns."""
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), protocol="task-incremental", seed=seed, epochs=1,
                               batch_size=32, gate_batch_size=4, gate_steps=None)
    learner.learn_task(*_task(g), F.mse_loss)
    with _no_warning():
        assert learner.learn_task(*_task(g), F.mse_loss).gate_steps == 16

    class Batches:                    # re-iterable, no __len__
        def __init__(self, pairs):
            self.pairs = pairs

        def __iter__(self):
            return iter(self.pairs)

    X, Y = _task(g, n=16)
    with pytest.warns(UserWarning, match="cannot move"):
        rec = learner.learn_task(Batches([(X[:8], Y[:8]), (X[8:], Y[8:])]), None, F.mse_loss)
    assert rec.gate_steps == 2


def test_gate_holdout_splits_the_task(seed, fast_path, monkeypatch):
    """``gate_holdout=0.25`` (our addition): phase 2 sees only the held-out quarter (16 of 64
    examples: 2 batches of 8 in its one epoch) and phase 1 only the rest (48: 2 batches of 32)."""
    import litelora_fast.litelora.learner as ll
    seen = []
    real_fit = ll.ContinualLearner._fit

    def fit(self, data, *args, **kw):
        seen.append(None if data.X is None else int(data.X.shape[0]))
        return real_fit(self, data, *args, **kw)

    monkeypatch.setattr(ll.ContinualLearner, "_fit", fit)
    calls = _gate_calls(monkeypatch)
    g = torch.Generator().manual_seed(seed)
    learner = ContinualLearner(_model(seed), protocol="task-incremental", seed=seed, epochs=1,
                               batch_size=32, gate_batch_size=8, gate_steps=None,
                               gate_holdout=0.25)
    learner.learn_task(*_task(g), F.mse_loss)
    assert seen == [64]                                 # task 0: no gate, all the data
    seen.clear()
    rec = learner.learn_task(*_task(g), F.mse_loss)
    # one epoch of the held-out 16 is 2 batches, fewer than the 10 steps that can move the logit
    # from 0.5 across 0 at lr 0.05: the batches repeat up to 10
    assert seen == [48, 16] and len(calls) == rec.gate_steps == 10
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="gate_holdout"):
            ContinualLearner(_model(seed), gate_holdout=bad)
    with pytest.raises(ValueError, match="gate_steps"):
        ContinualLearner(_model(seed), gate_steps=-1)
    batches = ContinualLearner(_model(seed), seed=seed, epochs=1, gate_holdout=0.2)
    X, Y = _classes(g, [0, 1], n=32)
    batches.learn_task([(X, Y)])
    with pytest.raises(ValueError, match="tensors"):
        batches.learn_task([(X, Y + 2)])


@pytest.mark.parametrize("variant", ["paper", "library"])
def test_loss_gap_gate_keeps_iff_dropping_costs_more_than_lam(seed, fast_path, variant):
    """``gate_rule="loss_gap"``: no logit trained and no noise drawn; the recorded margin is the
    task loss without the candidate minus the loss with it minus lam, and the candidate is kept
    iff it is positive: lam 0 keeps (a candidate trained on the task lowers its loss), lam 1e6
    prunes, and the two margins differ by exactly 1e6 (the runs are the same up to the gate)."""
    opts = dict(FAST, variant=variant, gate_rule="loss_gap")
    g = torch.Generator().manual_seed(seed)
    tasks = [_task(g) for _ in range(2)]
    margins = {}
    for lam in (0.0, 1e6):
        learner = ContinualLearner(_model(seed), lam=lam, seed=seed, **opts)
        for X, Y in tasks:
            rec = learner.learn_task(X, Y, F.mse_loss)
        margins[lam] = rec.gate_logit[0]
        assert rec.gate_steps == 0 and rec.recruited == (rec.gate_logit[0] > 0)
        assert rec.gate_prob == [1.0 if rec.recruited else 0.0]
    # the same runs up to the gate: the margins differ by lam exactly
    assert margins[0.0] - margins[1e6] == pytest.approx(1e6)
    assert margins[0.0] > 0 and margins[1e6] < 0
    with pytest.raises(ValueError, match="gate_rule must be one of"):
        ContinualLearner(_model(seed), gate_rule="argmax")
