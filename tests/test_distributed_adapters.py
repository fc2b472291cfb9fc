"""Model-level adapter features under data parallelism on the CPU (two gloo processes):
``save_adapters``/``load_adapters`` on DDP and FSDP2 models (rank 0 writes, every rank loads its
shard; called on rank 0 alone: works under DDP, raises under FSDP2 instead of hanging) and ``llf.route`` under DDP (the routed gradients equal one process on the whole batch).
The layer's own DDP/FSDP2 gradients: ``test_distributed.py``."""
import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import litelora_fast as llf
from dist_helpers import TOL, WORLD, free_port, run_checks, wrap
from numerics import assert_rel

def _bank_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers = [llf.GatedLoRALinear(16, 32, rank=4, num_adapters=2),
              llf.GatedLoRALinear(32, 8, rank=2, num_adapters=2)]
    for layer in layers:
        with torch.no_grad():
            for B in layer.lora_B:
                B.normal_()
            layer.gates.uniform_(0.5, 1.5)
    return nn.Sequential(layers[0], nn.GELU(), layers[1]).double()


def _whole_state(model) -> dict:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _check_files(rank: int, seed: int, path: str, wrapper: str) -> None:
    model = _bank_model(seed)
    expected = _whole_state(model)
    wrapped = wrap(model, wrapper)
    out = os.path.join(path, wrapper)
    llf.save_adapters(wrapped, out)                 # collective; rank 0 writes
    assert os.path.isfile(os.path.join(out, "adapters.safetensors"))
    # Load into a model with other values, wrapped the same way: every rank gets the file's.
    other = _bank_model(seed + 1)
    target = wrap(other, wrapper)
    llf.load_adapters(target, out)
    got = _whole_state(other)
    for name, value in expected.items():
        if "lora" in name or "gates" in name:
            assert torch.equal(got[name], value), f"{wrapper} {name} after load (rank {rank})"


def _check_rank0_only_save(rank: int, seed: int, path: str, wrapper: str) -> None:
    """``if rank == 0: llf.save_adapters(...)`` (PEFT's pattern): under DDP rank 0 writes and
    returns (no collective to hang in); under FSDP2, whose gather is a collective, it raises on
    rank 0 within ``ARRIVAL_WAIT_S`` naming the reason."""
    from litelora_fast.models import dist_tensors
    model = _bank_model(seed)
    expected = _whole_state(model)
    wrapped = wrap(model, wrapper)
    out = os.path.join(path, f"rank0-{wrapper}")
    dist_tensors.ARRIVAL_WAIT_S = 1.0
    if rank == 0:
        if wrapper == "fsdp2":
            with pytest.raises(RuntimeError, match="only 1 of 2 ranks called save_adapters"):
                llf.save_adapters(wrapped, out)
        else:
            llf.save_adapters(wrapped, out)
    dist.barrier()                                  # the test's own: rank 1 reads after rank 0
    if wrapper == "ddp":
        target = _bank_model(seed + 1)
        llf.load_adapters(wrap(target, wrapper), out)
        got = _whole_state(target)
        for name, value in expected.items():
            if "lora" in name or "gates" in name:
                assert torch.equal(got[name], value), f"rank-0 save {name} (rank {rank})"
    else:
        assert not os.path.exists(out)
        dist_tensors.ARRIVAL_WAIT_S = 120.0         # (ranks may be seconds apart on a busy CPU)
        llf.save_adapters(wrapped, out)             # then on every rank: it meets and saves
        assert os.path.isfile(os.path.join(out, "adapters.safetensors"))


def _check_routed_ddp(rank: int, seed: int) -> None:
    from tenant_models import grads, llama_with_tenants
    model = llama_with_tenants(seed=seed % 1000)
    ids = torch.randint(1, 64, (4, 5), generator=torch.Generator().manual_seed(seed))
    tenants = ["a", "c", "c", "b"]
    single = copy.deepcopy(model)
    with llf.route(single, tenants):
        single(ids, labels=ids).loss.backward()
    expected = grads(single)
    ddp = nn.parallel.DistributedDataParallel(model)
    half = slice(2 * rank, 2 * rank + 2)
    with llf.route(ddp, tenants[half]):
        ddp(ids[half], labels=ids[half]).loss.backward()
    got = {n.removeprefix("module."): g for n, g in grads(model).items()}
    assert set(got) <= set(expected) and got
    for name, g in expected.items():
        # Tenants absent from this rank's half still get the other rank's gradient (all-reduce).
        assert_rel(f"routed DDP grad {name}", got.get(name, torch.zeros_like(g)), g,
                   torch.float64, tol=TOL)


def _worker(rank: int, port: int, seed: int, path: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))        # tenant_models
    run_checks(rank, port, [("ddp files", lambda: _check_files(rank, seed, path, "ddp")),
                            ("fsdp2 files", lambda: _check_files(rank, seed, path, "fsdp2")),
                            ("ddp rank-0 save",
                             lambda: _check_rank0_only_save(rank, seed, path, "ddp")),
                            ("fsdp2 rank-0 save",
                             lambda: _check_rank0_only_save(rank, seed, path, "fsdp2")),
                            ("routed ddp", lambda: _check_routed_ddp(rank, seed))],
               timeout_s=120)


def test_adapter_files_and_routing_under_ddp_and_fsdp2(seed, tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    pytest.importorskip("transformers")
    mp.spawn(_worker, args=(free_port(), seed, os.fspath(tmp_path)), nprocs=WORLD, join=True)
