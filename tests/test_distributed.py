"""``GatedLoRALinear`` under data parallelism on the CPU: two processes, gloo, fast path.

Each worker builds the same model and global batch (same seed), computes the single-process
gradients on the whole batch, then the parallel gradients on its half, and compares them; a
mismatch raises inside the worker, which ``torch.multiprocessing.spawn`` re-raises here.
Wrappers: ``DistributedDataParallel`` and FSDP2 (``torch.distributed.fsdp.fully_shard``).
"""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from dist_helpers import TOL, WORLD, free_port, run_checks, wrap
from litelora_fast import GatedLoRALinear
from numerics import assert_rel

def _model() -> nn.Module:
    """Continual-learning shape: adapter 0 frozen (an old task), adapter 1 and the gates train."""
    layers = [GatedLoRALinear(16, 32, rank=4, num_adapters=2),
              GatedLoRALinear(32, 8, rank=2, num_adapters=2)]
    for layer in layers:
        with torch.no_grad():
            for B in layer.lora_B:
                B.normal_()
            layer.gates.uniform_(0.5, 1.5)
        layer.freeze_adapter(0)
        layer.gates.requires_grad_(True)
    return nn.Sequential(layers[0], nn.GELU(), layers[1]).double()


def _grads(model: nn.Module) -> dict:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad
        out[name] = g.full_tensor() if hasattr(g, "full_tensor") else g  # FSDP2: DTensor shards
    return out


def _check_wrapper(rank: int, seed: int, wrapper: str) -> None:
    torch.manual_seed(seed)
    model = _model()
    x = torch.randn(8, 3, 16, dtype=torch.float64)
    target = torch.randn(8, 3, 8, dtype=torch.float64)
    single = copy.deepcopy(model)
    nn.functional.mse_loss(single(x), target).backward()
    expected = _grads(single)

    parallel = wrap(model, wrapper)
    # Equal halves: the mean of the two half-batch mean losses is the full-batch mean loss.
    xs, ts = x.chunk(WORLD)[rank], target.chunk(WORLD)[rank]
    nn.functional.mse_loss(parallel(xs), ts).backward()
    got = {n.removeprefix("module."): g for n, g in _grads(model).items()}
    assert set(got) == set(expected) == {"0.lora_A.1", "0.lora_B.1", "0.gates", "2.lora_A.1",
                                         "2.lora_B.1", "2.gates"}, (sorted(got), sorted(expected))
    for name, grad in got.items():
        assert_rel(f"{name} (vs the single-process gradient)", grad, expected[name],
                   torch.float64, tol=TOL)


def _worker(rank: int, port: int, seed: int) -> None:
    # Both wrappers in one pair of processes: starting a process (importing torch) costs far
    # more than the check itself on the 2-core CI machine.
    run_checks(rank, port, [(w, lambda w=w: _check_wrapper(rank, seed, w))
                            for w in ("ddp", "fsdp2")], timeout_s=60)


def test_ddp_and_fsdp2_grads_equal_single_process(seed):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    mp.spawn(_worker, args=(free_port(), seed), nprocs=WORLD, join=True)
