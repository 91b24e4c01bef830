"""torchrun + DistributedDataParallel, nothing home-made: rank, device and wrapping."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from nastk.device import resolve_device
from nastk.errors import DataError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


TIMEOUT_ENV = "NASTK_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 120.0


def process_group_timeout() -> timedelta:
    """How long a collective may wait for the slowest rank: ``$NASTK_DIST_TIMEOUT_MIN`` minutes, or 120.

    Ranks wait for rank 0 while it preprocesses a dataset and for each other at the end of a fold's
    validation; NCCL's default of 10 minutes would let its watchdog kill a healthy run there.
    """
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(text)
    except ValueError:
        minutes = float("nan")
    if not (minutes > 0 and minutes != float("inf")):
        raise DataError(f"${TIMEOUT_ENV}: {text!r} is not a positive number of minutes")
    return timedelta(minutes=minutes)


def setup(device: str | None = None) -> Dist:
    """Read torchrun's environment; init the process group (NCCL on GPU, gloo on CPU) when world > 1,
    with an explicit timeout (:func:`process_group_timeout`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and device is not None and device.startswith("cuda:"):
        raise DataError(f"--device {device}: one GPU for every process; under torchrun use --device cuda")
    dev = resolve_device(device, local)
    kind = dev.type
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        timeout = process_group_timeout()
        backend = "nccl" if kind == "cuda" else "gloo"
        store = restart_store(rank, world, timeout)
        if store is None:
            tdist.init_process_group(backend=backend, timeout=timeout)
        else:
            tdist.init_process_group(
                backend=backend, timeout=timeout, store=store, rank=rank, world_size=world
            )
    return Dist(rank, world, local, dev)


def restart_store(rank: int, world: int, timeout: timedelta):
    """Under a single torchrun agent that shares its store with the workers (torch's default), that store
    with a prefix for this restart of the worker group; otherwise None (torchrun's ``env://`` as usual).

    The agent keeps one store across ``--max-restarts`` restarts, and the process group's keys (each rank's
    address) are not scoped by restart: a restarted rank could read the address of a rank of the previous
    attempt and fail to connect (seen with gloo: "connectFullMesh failed ... Connection refused"), which
    uses up the restarts. One agent counts restarts consistently for all its workers, so the prefix is
    safe there; across nodes each agent counts its own (docs/running-at-scale.md: set
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``).
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE") != "1":
        return None
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    client = tdist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    return tdist.PrefixStore(f"nastk/attempt_{attempt}", client)


def per_rank_batch(global_batch: int, world: int, field: str) -> int:
    """Each rank's share of a global batch; it must split evenly."""
    if global_batch % world:
        raise DataError(f"{field}: global batch {global_batch} is not divisible by {world} processes")
    return global_batch // world


def wrap(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    if not dist.enabled:
        return model
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def average_gradients(params: list[torch.nn.Parameter], dist: Dist) -> None:
    """Mean of each parameter's gradient over ranks, for parameters DDP does not manage."""
    if not dist.enabled:
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad /= dist.world_size


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(dist: Dist) -> None:
    if dist.enabled:
        tdist.barrier()


def any_flag(flag: bool, dist: Dist) -> bool:
    """True on every rank if it is True on any rank."""
    if not dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_flags(flags: list[bool], dist: Dist) -> list[bool]:
    """Each flag True on every rank if it is True on any rank: one all-reduce for all of them."""
    if not dist.enabled:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def from_main(value, dist: Dist):
    """Rank 0's ``value`` (picklable) on every rank, e.g. a decision made from what rank 0 sees on disk."""
    if not dist.enabled:
        return value
    box = [value if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(items: list, dist: Dist) -> list:
    """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
    if not dist.enabled:
        return list(items)
    parts: list = [None] * dist.world_size
    tdist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def leave_together(dist: Dist) -> None:
    """A last barrier after a job's work: no rank tears its process group down while another still works
    (rank 0 decodes or writes post-processing alone). A gloo rank that exits while its peer is still
    connected was once seen to abort (SIGABRT, "terminate called without an active exception")."""
    barrier(dist)


def teardown(dist: Dist) -> None:
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()
