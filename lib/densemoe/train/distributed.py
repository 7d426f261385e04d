"""One process or many under ``torchrun``: the same command, the same code path.

``torchrun --nproc_per_node=N -m densemoe.cli train --experiment NAME`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on GPUs, gloo on the CPU) and pins
each process to ``cuda:LOCAL_RANK``. Without those variables everything is a no-op and rank 0 is the
only process. As the official code (``specs/mlore.md`` §2): SyncBatchNorm, then DDP; rank 0 alone writes
files; evaluation shards the split over the ranks and sums the metrics' states (no sample is counted
twice, unlike ``DistributedSampler``'s padding).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from densemoe.errors import ConfigError
from densemoe.validate import check_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str) -> torch.device:
    """``auto`` → cuda if available, else cpu; ``cuda``/``cuda:N``/``mps`` not on this machine, or an
    unknown name, is a one-line error."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            seen = f"{count} GPU{'s' if count != 1 else ''} visible" if count else "no GPU is visible"
            raise ConfigError(f"device {device} asked for, but {seen}; set train.device: cpu (or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps asked for, but this machine has none; set train.device: cpu (or auto)")
    return torch.device(device)


def setup(device: str = "auto", timeout_min: int = 120) -> DistInfo:
    """Join the ``torchrun`` process group if there is one; returns this process's :class:`DistInfo`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world <= 1:
        return DistInfo(device=dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    dist.broadcast(t, 0)
    return bool(t.item())


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks (in place on a copy; returns it on the tensor's device)."""
    if not info.distributed:
        return tensor
    buf = tensor.to(info.device).clone()
    dist.all_reduce(buf)
    return buf.to(tensor.device)


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, e.g. before evaluating: without
    SyncBatchNorm (CPU) each rank's last training batch has moved its own statistics."""
    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, 0)


def wrap(model: nn.Module, info: DistInfo, sync_bn: bool = True, find_unused: bool = False) -> tuple[
        nn.Module, list[str]]:
    """SyncBatchNorm + DDP when distributed; returns (model, notes for the log)."""
    notes: list[str] = []
    if not info.distributed:
        return model, notes
    if sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        notes.append("SyncBatchNorm needs GPUs: on the CPU each process normalises its own batch")
    for p in model.parameters():  # e.g. a sliced pos-embed: DDP's buckets want dense strides
        if not (p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last)):
            p.data = p.data.contiguous()
    ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    return ddp, notes
