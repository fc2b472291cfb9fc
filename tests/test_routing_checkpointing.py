"""``llf.route`` and gradient checkpointing in any order: the recompute during ``backward()``
runs under the routing its forward ran under, whether checkpointing was enabled before the
``with`` block, inside it, or through ``torch.utils.checkpoint`` directly; the backward may run
after the block has closed or inside another one. Gradients equal running each sample alone with
its adapter on (float64). Enabling checkpointing before the block: ``test_routing.py``."""
import functools

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import litelora_fast as llf
from test_routing import TENANTS, check, one_by_one, routed_loss
from tenant_models import llama_with_tenants

pytest.importorskip("transformers")


@pytest.fixture
def model(fast_path, seed):
    return llama_with_tenants(seed=seed % 1000).eval()


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_enabled_inside_the_block(model, reentrant):
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    ref, ref_grads = one_by_one(model, ids, TENANTS)
    model.train()
    with llf.route(model, TENANTS):
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": reentrant})
        out = model(ids).logits
    with llf.route(model, ["b"] * len(TENANTS)):      # a different routing when recomputing
        routed_loss(out).backward()
    check(model, ids, out, ref, ref_grads)


@pytest.mark.parametrize("reentrant", [True, False])
def test_torch_checkpoint_of_a_decoder_layer(model, reentrant):
    """A hand-written ``torch.utils.checkpoint`` around each decoder layer (no HF flag)."""
    ids = torch.randint(1, 64, (len(TENANTS), 7))
    ref, ref_grads = one_by_one(model, ids, TENANTS)
    model.train()
    model.enable_input_require_grads()                # reentrant: the input must need grad
    for block in model.model.layers:
        # (keyword arguments bound first, as HF does: reentrant checkpoint takes none)
        block.forward = (lambda f: lambda *a, **k: checkpoint(
            functools.partial(f, **k), *a, use_reentrant=reentrant))(block.forward)
    with llf.route(model, TENANTS):
        # (no KV cache: a reentrant recompute would append to it twice, as HF warns)
        out = model(ids, use_cache=False).logits
    routed_loss(out).backward()                       # after the block: no routing installed
    check(model, ids, out, ref, ref_grads)


def test_two_routings_inside_one_checkpoint_raise_at_the_recompute(model):
    """A checkpointed function that enters two different route blocks: the recompute cannot
    tell which layer ran under which, and says so instead of guessing."""
    ids = torch.randint(1, 64, (2, 5))
    model.train()

    def two_tenants(ids_):
        with llf.route(model, ["a", "b"]):
            first = model(ids_, use_cache=False).logits
        with llf.route(model, ["c", "d"]):
            return first + model(ids_, use_cache=False).logits

    out = checkpoint(two_tenants, ids, use_reentrant=False)
    with pytest.raises(RuntimeError, match="two different routings"):
        out.sum().backward()
