"""LoRA dropout under gradient checkpointing: the recompute drops what the forward dropped.

Every checkpointed step is compared bit for bit (fp32) with the same step run without
checkpointing, from the same RNG state, with other RNG draws between the forward and the backward
(what a training loop does: the next batch's dropout, data shuffling). Covered: both
``use_reentrant`` modes with ``preserve_rng_state`` True and False, nested checkpoints, the
composable ``checkpoint``, a second ``backward(retain_graph=True)``, HF gradient checkpointing
(``activation_checkpointing_enable``, formerly ``gradient_checkpointing_enable``) on a tiny Llama
(its own dropouts at 0), ``torch.compile`` of a checkpointed block, routed (``llf.route``)
layers, and a hand-written recompute (warned about once). And the masks themselves: each
recompute call's mask equals its forward call's.
"""
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import litelora_fast as llf
from litelora_fast.op import lora_dropout, recompute_seeds

MODES = [pytest.param(r, p, id=f"reentrant={r}-preserve_rng={p}")
         for r in (True, False) for p in (True, False)]


def _block(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    block = nn.Sequential(llf.GatedLoRALinear(8, 12, rank=2, num_adapters=2, dropout=0.5),
                          nn.GELU(),
                          llf.GatedLoRALinear(12, 8, rank=3, num_adapters=1, dropout=0.3))
    for layer in (block[0], block[2]):
        for B in layer.lora_B:
            nn.init.normal_(B)
    return block.train()


def _step(seed: int, forward, backward_twice: bool = False):
    """The gradients of ``x`` and every adapter after one step whose forward is ``forward``."""
    block = _block(seed)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed + 1), requires_grad=True)
    torch.manual_seed(seed + 2)
    y = forward(block, x)
    torch.rand(100)                  # other draws before the backward
    loss = y.square().sum()
    loss.backward(retain_graph=backward_twice)
    if backward_twice:
        loss.backward()              # a second pass replays the recompute again
    return [x.grad] + [p.grad for p in block.parameters() if p.requires_grad]


def assert_same_grads(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g is not None and torch.equal(g, w), (
            f"grad {i}: max abs diff {(g - w).abs().max().item() if g is not None else 'None'}")


@pytest.fixture(params=["fast_path", "interpreter"])
def path(request):
    request.getfixturevalue(request.param)


@pytest.mark.parametrize("reentrant,preserve", MODES)
def test_checkpoint_gradients_equal_no_checkpoint(path, seed, reentrant, preserve):
    want = _step(seed, lambda m, x: m(x))
    got = _step(seed, lambda m, x: checkpoint(m, x, use_reentrant=reentrant,
                                              preserve_rng_state=preserve))
    assert_same_grads(got, want)


@pytest.mark.parametrize("reentrant,preserve", MODES)
def test_nested_checkpoints(fast_path, seed, reentrant, preserve):
    def nested(m, x):
        def outer(x):
            h = m[1](m[0](x))
            return checkpoint(m[2], h, use_reentrant=reentrant, preserve_rng_state=preserve)
        return checkpoint(outer, x, use_reentrant=reentrant, preserve_rng_state=preserve)

    assert_same_grads(_step(seed, nested), _step(seed, lambda m, x: m(x)))


@pytest.mark.parametrize("reentrant", [True, False])
def test_second_backward_replays_from_the_start(fast_path, seed, reentrant):
    """``backward(retain_graph=True)`` twice: each pass recomputes with the forward's seeds."""
    want = _step(seed, lambda m, x: m(x), backward_twice=True)
    got = _step(seed, lambda m, x: checkpoint(m, x, use_reentrant=reentrant,
                                              preserve_rng_state=False), backward_twice=True)
    assert_same_grads(got, want)


@pytest.mark.parametrize("reentrant,preserve", MODES)
def test_recompute_masks_equal_the_forward_masks(fast_path, seed, reentrant, preserve):
    block = _block(seed)
    x = torch.randn(5, 8, requires_grad=True)
    with lora_dropout.recorded_masks() as masks:
        y = checkpoint(block, x, use_reentrant=reentrant, preserve_rng_state=preserve)
        forward_masks = len(masks)
        torch.rand(100)
        y.sum().backward()
    assert forward_masks == 2 and len(masks) == 4
    for fwd, rec in zip(masks[:2], masks[2:]):
        assert torch.equal(fwd, rec) and not fwd.all()


def test_compiled_checkpointed_block(fast_path, seed):
    """``torch.compile`` of a block that calls ``checkpoint`` (Dynamo's checkpoint higher-order
    op; the compiled graph saves the seed): bit-equal to the eager step without checkpointing."""
    want = _step(seed, lambda m, x: m(x))
    for preserve in (True, False):
        torch._dynamo.reset()
        got = _step(seed, lambda m, x: torch.compile(
            lambda x: checkpoint(m, x, use_reentrant=False, preserve_rng_state=preserve),
            backend="aot_eager", fullgraph=True)(x))
        assert_same_grads(got, want)


def _llama_grads(seed, checkpointing):
    from tiny_llms import tiny

    model = tiny("llama", seed=seed % 1000)
    model.config.attention_dropout = 0.0
    llf.inject(model, "all-linear", rank=2, alpha=4, num_adapters=1, dropout=0.4)
    for layer in llf.injected_layers(model).values():
        nn.init.normal_(layer.lora_B[0], std=0.1)
    model.train()
    if checkpointing is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 2)
    out = model(ids, labels=ids)
    torch.rand(100)
    out.loss.backward()
    return [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("reentrant,preserve", MODES)
def test_hf_gradient_checkpointing(fast_path, seed, reentrant, preserve):
    pytest.importorskip("transformers")
    want = _llama_grads(seed, None)
    got = _llama_grads(seed, {"use_reentrant": reentrant, "preserve_rng_state": preserve})
    assert_same_grads(got, want)


@pytest.mark.parametrize("reentrant", [True, False])
def test_routed_layers(fast_path, seed, reentrant):
    """``llf.route``'s grouped path draws its mask from the same seeds."""
    pytest.importorskip("transformers")
    from tenant_models import llama_with_tenants

    def run(checkpointing):
        model = llama_with_tenants(dtype=torch.float32, seed=seed % 1000)
        model.config.attention_dropout = 0.0
        for layer in llf.injected_layers(model).values():
            layer.dropout = 0.5
        model.train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={
                "use_reentrant": reentrant, "preserve_rng_state": False})
        ids = torch.randint(1, 64, (3, 5), generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed + 2)
        with llf.route(model, ["a", "c", "b"]):
            out = model(ids).logits
        torch.rand(100)
        out.square().mean().backward()
        return [p.grad for p in model.parameters() if p.requires_grad]

    assert_same_grads(run(True), run(False))


def test_composable_checkpoint(fast_path, seed):
    """``torch.distributed._composable.checkpoint`` enters its region from module hooks (no
    ``checkpoint`` frame): found through the saved-tensors hook it installs."""
    composable = pytest.importorskip("torch.distributed._composable")

    def forward(m, x):
        composable.checkpoint(m)
        return m(x)

    assert_same_grads(_step(seed, forward), _step(seed, lambda m, x: m(x)))


def test_a_hand_written_recompute_warns_once(fast_path, monkeypatch):
    """A forward run inside ``backward()`` by machinery other than ``torch.utils.checkpoint``
    cannot take the forward's seed: it draws afresh and says so, once."""
    monkeypatch.setattr(recompute_seeds, "_WARNED", [False])
    layer = _block(0)[0]

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            with torch.no_grad():
                return layer(x)

        @staticmethod
        def backward(ctx, dy):
            x = ctx.saved_tensors[0].detach().requires_grad_()
            with torch.enable_grad():
                torch.autograd.backward(layer(x), dy)
            return x.grad

    x = torch.randn(3, 8, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="outside a torch.utils.checkpoint recompute"):
        Recompute.apply(x).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Recompute.apply(x).sum().backward()
