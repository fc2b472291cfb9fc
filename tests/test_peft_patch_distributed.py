"""A PEFT model patched by ``llf.patch_peft_model`` under data parallelism on the CPU: two
processes, gloo, fast path. Each worker builds the same PEFT model and global batch (same seed),
takes the single-process gradients of the patched model on the whole batch, then the parallel
gradients on its half under DDP and under FSDP2 (``fully_shard`` on each LoRA layer and the
whole), and compares them; the op's call counter proves the patched forward ran."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from dist_helpers import TOL, WORLD, free_port, run_checks
from numerics import assert_rel

peft = pytest.importorskip("peft")


def _peft_model():
    import litelora_fast as llf
    base = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).double()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"],
                                                      init_lora_weights=False))
    llf.patch_peft_model(model)
    assert all(s.runs_op for s in llf.patched_layers(model).values())
    return model


def _grads(model):
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad
            out[name.removeprefix("module.")] = g.full_tensor() if hasattr(g, "full_tensor") else g
    return out


def _wrap(model, wrapper):
    if wrapper == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard
    inner = model.base_model.model
    for layer in (inner[0], inner[2]):
        fully_shard(layer)
    return fully_shard(model)


def _check(rank, seed, wrapper):
    from litelora_fast.models import peft_patch_layers
    torch.manual_seed(seed)
    model = _peft_model()
    x = torch.randn(8, 3, 16, dtype=torch.float64)
    target = torch.randn(8, 3, 8, dtype=torch.float64)
    single = copy.deepcopy(model)
    calls = sum(peft_patch_layers.OP_CALLS.values())
    nn.functional.mse_loss(single(x), target).backward()
    assert sum(peft_patch_layers.OP_CALLS.values()) - calls == 2, "the patched forward did not run"
    expected = _grads(single)
    parallel = _wrap(model, wrapper)
    xs, ts = x.chunk(WORLD)[rank], target.chunk(WORLD)[rank]
    calls = sum(peft_patch_layers.OP_CALLS.values())
    nn.functional.mse_loss(parallel(xs), ts).backward()
    assert sum(peft_patch_layers.OP_CALLS.values()) - calls == 2, (
        f"{wrapper}: not through the op: {dict(peft_patch_layers.FALLBACK_REASONS)}")
    got = _grads(model)
    assert set(got) == set(expected) and len(got) == 4, (sorted(got), sorted(expected))
    for name, grad in got.items():
        assert_rel(f"{wrapper} {name}", grad, expected[name], torch.float64, tol=TOL)


def _worker(rank, port, seed):
    run_checks(rank, port, [(w, lambda w=w: _check(rank, seed, w)) for w in ("ddp", "fsdp2")],
               timeout_s=60)


def test_patched_peft_model_under_ddp_and_fsdp2(seed):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    mp.spawn(_worker, args=(free_port(), seed), nprocs=WORLD, join=True)
