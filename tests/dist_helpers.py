"""What the two-process gloo tests (test_distributed.py, test_distributed_adapters.py) share: a
free port, the two wrappers, and the worker's frame: run named checks, report every failure, then
leave at once."""
import datetime
import os
import socket
import sys

import torch.distributed as dist
import torch.nn as nn

WORLD = 2
# The parallel run sums the two halves' gradients in a different order than one process does.
# In float64 that differs by ~1e-15 relative even where a gate gradient's terms cancel (in fp32 a
# cancelling sum could drift past any fixed bound); 1e-9 still catches a missing or doubled shard.
TOL = 1e-9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrap(model: nn.Sequential, wrapper: str) -> nn.Module:
    """``model`` (layers 0 and 2 adapted) under ``"ddp"`` or ``"fsdp2"`` (each layer a shard)."""
    if wrapper == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard
    for layer in (model[0], model[2]):
        fully_shard(layer)
    return fully_shard(model)


def run_checks(rank: int, port: int, checks, timeout_s: int) -> None:
    """In a spawned worker: join the gloo group, run every ``(name, check)``, raise one
    ``AssertionError`` listing every failure (``mp.spawn`` re-raises it in the test)."""
    os.environ["TRITON_INTERPRET"] = "0"      # CPU tensors on the PyTorch fast path
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=timeout_s))
    failures = []
    try:
        for name, check in checks:
            try:
                check()
            except Exception as e:            # report every check's failure, not the first
                failures.append(f"rank {rank} {name}: {type(e).__name__}: {e}")
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
