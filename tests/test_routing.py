"""``llf.route``: each row of a batch to its adapter, exact against running each row alone with
that adapter on (float64), in eval and training, under HF gradient checkpointing (both reentrant
modes, backward after the block), with ``generate``, and through ``model(..., adapter_ids=)``.
The grouped op itself: ``test_routed_op.py``; under DDP: ``test_distributed_adapters.py``."""
import pytest
import torch

import litelora_fast as llf
from numerics import assert_rel
from tenant_models import grads, llama_with_tenants

pytest.importorskip("transformers")

TENANTS = ["a", "c", "c", "b", "d"]


@pytest.fixture
def model(fast_path, seed):
    return llama_with_tenants(seed=seed % 1000).eval()


def one_by_one(model, ids, tenants, loss=True):
    """Logits and summed gradients of running each sample alone with its adapter on."""
    outs, total = [], {}
    for i, t in enumerate(tenants):
        model.zero_grad(set_to_none=True)
        if t is None:
            with llf.disable_adapters(model):
                out = model(ids[i:i + 1]).logits
        else:
            llf.set_active_adapters(model, t)
            out = model(ids[i:i + 1]).logits
        if loss:
            out.pow(2).mean().backward()
            for n, g in grads(model).items():
                total[n] = total.get(n, 0) + g
        outs.append(out.detach())
    llf.set_active_adapters(model, ["a", "b", "c", "d"])
    model.zero_grad(set_to_none=True)
    return torch.cat(outs), total


def check(model, ids, out, ref, ref_grads, per_sample_loss=True):
    assert_rel("routed logits", out, ref, torch.float64)
    got = grads(model)
    assert set(got) <= set(ref_grads)
    for n, g in ref_grads.items():
        # An adapter no row uses gets no gradient (None) where the reference's is zeros.
        assert_rel(f"routed grad {n}", got.get(n, torch.zeros_like(g)), g, torch.float64)


def routed_loss(out):
    # The sum over samples of each sample's mean loss, as one_by_one sums them.
    return out.pow(2).mean(dim=(1, 2)).sum()


@pytest.mark.parametrize("form", ["names", "indices", "tensor", "weights_one_hot"])
def test_one_adapter_per_sample_equals_separate_runs(model, form):
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    ref, ref_grads = one_by_one(model, ids, TENANTS)
    index = [["a", "b", "c", "d"].index(t) for t in TENANTS]
    adapter_ids = {"names": TENANTS, "indices": index, "tensor": torch.tensor(index),
                   "weights_one_hot": torch.nn.functional.one_hot(torch.tensor(index), 4
                                                                  ).double()}[form]
    with llf.route(model, adapter_ids):
        out = model(ids).logits
    routed_loss(out).backward()
    check(model, ids, out, ref, ref_grads)


def test_rows_without_adapter_get_the_base(model):
    tenants = ["b", None, "b", "a"]
    ids = torch.randint(1, 64, (4, 5))
    ref, ref_grads = one_by_one(model, ids, tenants)
    with llf.route(model, [1, -1, 1, 0]):
        out = model(ids).logits
    routed_loss(out).backward()
    check(model, ids, out, ref, ref_grads)


def test_alternating_tenants_use_index_groups(model):
    """Many runs of consecutive samples: grouped by index lists, still exact."""
    tenants = ["a", "b"] * 4
    ids = torch.randint(1, 64, (8, 5))
    ref, ref_grads = one_by_one(model, ids, tenants)
    with llf.route(model, tenants) as routing:
        out = model(ids).logits
    assert not any(isinstance(rows, slice) for g in routing.groups.values() for rows, _, _ in g)
    routed_loss(out).backward()
    check(model, ids, out, ref, ref_grads)


def with_forced_gates(model, ids, gates):
    """The reference: ``gates`` handed to every injected layer by a hook (no routing); returns
    the logits (detached) and the gradients of ``sum(logits ** 2)``, gradients then cleared."""
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: (a, {"gates": gates}),
                                             with_kwargs=True)
             for layer in llf.injected_layers(model).values()]
    try:
        ref = model(ids).logits
        ref.pow(2).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    ref_grads = grads(model)
    model.zero_grad(set_to_none=True)
    return ref.detach(), ref_grads


def test_per_token_routing_equals_per_row_gates(model):
    ids = torch.randint(1, 64, (3, 6))
    tok = torch.randint(-1, 4, (3, 6))
    gates = torch.nn.functional.one_hot(tok.clamp(min=0), 4).double() * (tok >= 0)[..., None]
    ref, ref_grads = with_forced_gates(model, ids, gates)
    with llf.route(model, tok):
        out = model(ids).logits
    out.pow(2).sum().backward()
    check(model, ids, out, ref, ref_grads)


@pytest.mark.parametrize("trainable", [False, True])
def test_weighted_mix_equals_per_row_gates(model, trainable):
    """(batch, K) weights with several non-zero per row (and weights that train) go through the
    packed op with per-row gates; columns named by ``names=``."""
    ids = torch.randint(1, 64, (3, 5))
    w = torch.rand(3, 2, dtype=torch.float64, requires_grad=trainable)
    cols = ["d", "b"]
    gates = torch.zeros(3, 4, dtype=torch.float64)
    gates[:, 3], gates[:, 1] = w[:, 0].detach(), w[:, 1].detach()
    gates.requires_grad_(trainable)
    ref, ref_grads = with_forced_gates(model, ids, gates[:, None, :].expand(3, 5, 4))
    with llf.route(model, w, names=cols) as routing:
        out = model(ids).logits
    assert routing.dense and not routing.groups
    out.pow(2).sum().backward()
    check(model, ids, out, ref, ref_grads)
    if trainable:
        assert_rel("weight grad", w.grad, gates.grad[:, [3, 1]], torch.float64)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_backward_after_the_block(model, reentrant):
    """The recomputed forward sees the routing of the first forward, even though backward()
    runs after the with-block has closed (and inside another route block)."""
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    ref, ref_grads = one_by_one(model, ids, TENANTS)
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    with llf.route(model, TENANTS):
        out = model(ids).logits
    with llf.route(model, ["b"] * len(TENANTS)):      # a different routing when recomputing
        routed_loss(out).backward()
    check(model, ids, out, ref, ref_grads)


def test_generate_with_kv_cache(model):
    ids = torch.randint(1, 64, (4, 5))
    tenants = ["d", "a", "d", "b"]
    expected = []
    for i, t in enumerate(tenants):
        llf.set_active_adapters(model, t)
        expected.append(model.generate(ids[i:i + 1], max_new_tokens=6, min_new_tokens=6,
                                       do_sample=False,
                                       use_cache=True, output_logits=True,
                                       return_dict_in_generate=True))
    llf.set_active_adapters(model, ["a", "b", "c", "d"])
    with llf.route(model, tenants):
        got = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             use_cache=True,
                             output_logits=True, return_dict_in_generate=True)
    assert torch.equal(got.sequences, torch.cat([e.sequences for e in expected]))
    for step, logits in enumerate(got.logits):
        assert_rel(f"generate step {step}", logits,
                   torch.cat([e.logits[step] for e in expected]), torch.float64)


def test_adapter_ids_as_a_model_input(model):
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    with llf.route(model, TENANTS):
        ref = model(ids).logits
    llf.accept_adapter_ids(model)
    llf.accept_adapter_ids(model)        # twice: one pair of hooks
    assert torch.equal(model(ids, adapter_ids=TENANTS).logits, ref)
    with pytest.raises(KeyError, match="zz"):
        model(ids, adapter_ids=["zz"] * len(TENANTS))
    plain = model(ids).logits            # no adapter_ids: the layers' own gates (all 4 on)
    with llf.route(model, torch.ones(len(TENANTS), 4, dtype=torch.float64)):
        assert_rel("all on", plain, model(ids).logits, torch.float64)


def test_adapter_ids_without_accept_adapter_ids_raise(model):
    """An HF model takes ``**kwargs``: without ``accept_adapter_ids`` it would drop the routing
    and run every row under the layers' own gates."""
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    with pytest.raises(TypeError, match="accept_adapter_ids"):
        model(ids, adapter_ids=TENANTS)
    llf.accept_adapter_ids(model, key="tenant")      # another key: adapter_ids still refused
    with pytest.raises(TypeError, match="does not route by adapter_ids"):
        model(ids, adapter_ids=TENANTS)
    with llf.route(model, TENANTS):
        ref = model(ids).logits
    assert torch.equal(model(ids, tenant=TENANTS).logits, ref)


def test_route_leaves_other_models_alone(model, seed):
    other = llama_with_tenants(seed=seed % 1000 + 1).eval()
    ids = torch.randint(1, 64, (2, 4))
    before = other(ids).logits
    with llf.route(model, ["a", "b"]):
        assert torch.equal(other(ids).logits, before)


def test_dropout_in_training_routes_the_dropped_input(model):
    for layer in llf.injected_layers(model).values():
        layer.dropout = 0.5
    ids = torch.randint(1, 64, (2, 4))
    with llf.route(model, ["a", "b"]):
        eval_out = model(ids).logits
        model.train()
        torch.manual_seed(0)
        a = model(ids).logits
        torch.manual_seed(0)
        b = model(ids).logits
        torch.manual_seed(1)
        c = model(ids).logits
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, eval_out)


def test_bad_routing_raises(model):
    ids = torch.randint(1, 64, (2, 4))
    with pytest.raises(KeyError, match="'zz'.*adapters are"):
        llf.route(model, ["a", "zz"]).__enter__()
    with pytest.raises(IndexError, match="index 4 is out of range"):
        llf.route(model, [0, 4]).__enter__()
    with pytest.raises(TypeError, match="names.*indices"):
        llf.route(model, [0.5, 1]).__enter__()
    with pytest.raises(ValueError, match="names= labels the columns"):
        llf.route(model, ["a", "b"], names=["a"]).__enter__()
    with pytest.raises(ValueError, match="2 adapter names"):
        llf.route(model, torch.rand(2, 2, dtype=torch.float64), names=["a"]).__enter__()
    with pytest.raises(ValueError, match="batch dimension is not the routing's 3 samples"):
        with llf.route(model, ["a", "b", "c"]):
            model(ids)
    with pytest.raises(ValueError, match=r"\(batch, seq\) routing \(2, 3\)"):
        with llf.route(model, torch.zeros(2, 3, dtype=torch.long)):
            model(ids)
    with pytest.raises(ValueError, match="one length"):
        llf.route(model, [["a", "b"], ["a"]]).__enter__()
    layer = next(iter(llf.injected_layers(model).values()))
    layer.merge(["a"])
    with pytest.raises(ValueError, match="merged adapters"):
        llf.route(model, ["a", "b"]).__enter__()
