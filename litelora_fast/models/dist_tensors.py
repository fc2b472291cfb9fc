"""Adapter tensors under data parallelism: whole values out of FSDP2 shards, shards back in,
which rank writes files, and the model inside a DDP wrapper.

Under DDP every rank holds whole Parameters; under FSDP2 (``fully_shard``) each Parameter is a
``DTensor`` whose rank-local piece is a shard. Saving takes the whole value (``full_tensor``, a
collective: every rank must call it, in the same order); loading hands each rank its piece of a
whole value every rank has read from the same file (``distribute_tensor`` with no source rank:
no communication). Files are written by rank 0 only.

Saving works whether every rank calls it or rank 0 alone does (``if rank == 0:``, which PEFT
allows), so it never waits in a collective the other ranks may not enter: rank 0 writes, then
marks the save done in the process group's key-value store (``dist``'s default store: no
collective); a rank other than 0 that calls it waits for that mark, so it finds the file
complete when it reads right after. The mark is keyed by the directory and by how many times this
process saved there. Where gathering needs every rank (an FSDP2 shard: ``full_tensor`` is a
collective), every rank first announces itself in the store and waits at most
``ARRIVAL_WAIT_S`` for the others (:func:`all_ranks_arrived`); a save called on fewer ranks
raises ``RuntimeError`` naming the reason, instead of hanging in the gather until the process
group times out.
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

# How long a sharded save waits for every rank to call it before raising (seconds): ranks reach
# a save within a step of each other (the gradient all-reduce lines them up).
ARRIVAL_WAIT_S = 30.0
_SAVES: dict = {}       # directory -> how many saves this process made there
_SHARDED_SAVES = [0]    # how many sharded saves this process made (every rank's count agrees)


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:          # a build without torch.distributed
        return None
    return DTensor


def is_sharded(t) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def whole(t: torch.Tensor) -> torch.Tensor:
    """``t``'s whole value, detached (a collective for an FSDP2 shard)."""
    t = t.detach()
    return t.full_tensor() if is_sharded(t) else t


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (the whole tensor, same on every rank) shaped as ``param`` holds it: this rank's
    shard for an FSDP2 ``DTensor``, else ``value`` on ``param``'s device and dtype."""
    if is_sharded(param):
        from torch.distributed.tensor import distribute_tensor
        local = value.to(device=param.device_mesh.device_type, dtype=param.dtype)
        return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)
    return value.to(device=param.device, dtype=param.dtype)


def unwrap(model):
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (``.module``);
    FSDP2 shards a model in place and needs no unwrapping."""
    while type(model).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(
            getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def running() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_writer() -> bool:
    """Whether this process writes shared files: rank 0, or the only process."""
    return not running() or dist.get_rank() == 0


def save_token(path) -> str:
    """The store key of this process's next save into ``path`` (the same on every rank that
    makes the same sequence of saves)."""
    path = os.path.abspath(os.fspath(path))
    _SAVES[path] = _SAVES.get(path, 0) + 1
    return f"litelora_fast/save/{path}/{_SAVES[path]}"


def _store():
    return dist.distributed_c10d._get_default_store()


def all_ranks_arrived(what: str) -> None:
    """Return once every rank has called this sharded save (an FSDP2 save: the gather is a
    collective); ``RuntimeError`` after ``ARRIVAL_WAIT_S`` seconds otherwise. The saves are
    counted per process, whatever their directories; a save that raises withdraws its arrival
    (atomically: a rank arriving meanwhile makes it go ahead instead) and is not counted, so the
    next save every rank calls meets under one key."""
    if not running():
        return
    store, world = _store(), dist.get_world_size()
    key = f"litelora_fast/sharded_save/{_SHARDED_SAVES[0] + 1}"
    deadline = time.monotonic() + ARRIVAL_WAIT_S
    arrived = store.add(key, 1)
    while arrived < world:
        if time.monotonic() > deadline:
            now = int(store.compare_set(key, str(arrived), str(arrived - 1)))
            # (two ranks withdrawing from one count at once: the second reads the first's
            # result as its own and leaves its arrival counted; an over-count only lets the
            # next save's ranks enter the gather early, where they wait for the rest)
            if now == arrived - 1:
                raise RuntimeError(
                    f"{what}: the model holds FSDP2 shards, and gathering them is a collective "
                    f"that every rank must enter; only {arrived} of {world} ranks called {what} "
                    f"within {ARRIVAL_WAIT_S:g} s (this is rank {dist.get_rank()}). Call it on "
                    "every rank (rank 0 alone writes the files), not inside `if rank == 0:`")
            arrived = now
            continue
        time.sleep(0.01)
        arrived = store.add(key, 0)
    _SHARDED_SAVES[0] += 1


def writer_done(token: str) -> None:
    """Rank 0 has written the files of save ``token``."""
    if running():
        _store().set(token + "/written", "1")


def wait_for_writer(token: str) -> None:
    """On a rank other than 0: wait until rank 0 has written the files of save ``token`` (the
    store's own timeout, the process group's, bounds the wait)."""
    if running():
        _store().wait([token + "/written"])
