"""Adapter tensors under data parallelism: whole values out of FSDP2 shards, shards back in,
which rank writes files, and the model inside a DDP wrapper.

Under DDP every rank holds whole Parameters; under FSDP2 (``fully_shard``) each Parameter is a
``DTensor`` whose rank-local piece is a shard. Saving takes the whole value (``full_tensor``, a
collective: every rank must call it, in the same order); loading hands each rank its piece of a
whole value every rank has read from the same file (``distribute_tensor`` with no source rank:
no communication). Files are written by rank 0 only, then every rank waits (``barrier``) so a
rank that reads right after finds the file complete.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


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


def wait_for_writer() -> None:
    if running():
        dist.barrier()
