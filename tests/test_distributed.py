"""``GatedLoRALinear`` under data parallelism on the CPU: two processes, gloo, fast path.

Each worker builds the same model and global batch (same seed), computes the single-process
gradients on the whole batch, then the parallel gradients on its half, and compares them; a
mismatch raises inside the worker, which ``torch.multiprocessing.spawn`` re-raises here.
Wrappers: ``DistributedDataParallel`` and FSDP2 (``torch.distributed.fsdp.fully_shard``).
"""
import copy
import datetime
import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from litelora_fast import GatedLoRALinear
from numerics import assert_rel

WORLD = 2
# The parallel run sums the two halves' gradients in a different order than one process does.
# In float64 that differs by ~1e-15 relative even where a gate gradient's terms cancel (in fp32 a
# cancelling sum could drift past any fixed bound); 1e-9 still catches a missing or doubled shard.
TOL = 1e-9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    if wrapper == "ddp":
        parallel = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard
        for layer in (model[0], model[2]):
            fully_shard(layer)
        parallel = fully_shard(model)
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
    os.environ["TRITON_INTERPRET"] = "0"      # CPU tensors on the PyTorch fast path
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    failures = []
    try:
        # Both wrappers in one pair of processes: starting a process (importing torch) costs
        # far more than the check itself on the 2-core CI machine.
        for wrapper in ("ddp", "fsdp2"):
            try:
                _check_wrapper(rank, seed, wrapper)
            except Exception as e:            # report every wrapper's failure, not the first
                failures.append(f"rank {rank} {wrapper}: {type(e).__name__}: {e}")
    finally:
        dist.destroy_process_group()
    if failures:
        raise AssertionError("\n".join(failures))
    # A clean pass leaves at once: in about one run in four, torch 2.13's interpreter shutdown
    # in a worker that ran gloo aborts ("terminate called without an active exception") after
    # every check has passed and the process group is destroyed, which spawn reports as SIGABRT.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_and_fsdp2_grads_equal_single_process(seed):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    mp.spawn(_worker, args=(_free_port(), seed), nprocs=WORLD, join=True)
