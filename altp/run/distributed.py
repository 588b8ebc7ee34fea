"""Data parallel runs on ``torch.distributed``: who this process is, and how the ranks meet.

A run with several processes (``torchrun --nproc-per-node=N run.py ...``, or one SLURM
task per GPU through ``hydra/launcher=slurm``) shares one run directory: every rank
runs a deterministic share of the images not yet done and writes their files; rank 0
alone takes the directory's lock, checks the fingerprint, decides the to-do list,
scores and writes the summary (:mod:`altp.run.runner`). One process is a world of size 1,
with no process group at all.

The environment is torchrun's (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). Under SLURM without torchrun,
:func:`env_from_slurm` maps SLURM's variables onto those names first.

The process group is made once per process (a Hydra ``-m`` sweep runs several jobs
in one process): gloo for CPU runs; on CUDA, NCCL for CUDA tensors with gloo beside
it for the CPU objects the ranks exchange (the to-do list, errors, metrics), and each
rank uses ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import datetime
import os
import re
import zlib
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "World",
    "barrier",
    "broadcast_object",
    "env_from_slurm",
    "first_slurm_host",
    "init_world",
    "rank_share",
]

# Ranks legitimately wait on each other for a whole shard's imbalance or rank 0's scoring
# (minutes at paper scale); a dead rank is torchrun's to notice, not a collective timeout.
_TIMEOUT = datetime.timedelta(hours=6)
_PORT_BASE, _PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run.

    Attributes:
        rank: global rank, 0..size-1 (0 takes the lock, scores and writes the summary).
        size: number of processes (1: a plain run without a process group).
        local_rank: rank on this node (the CUDA device index it uses).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``SLURM_JOB_NODELIST``).

    Example:
        >>> first_slurm_host("gpu[007-010,12],cpu3"), first_slurm_host("node5")
        ('gpu007', 'node5')
    """
    first = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,\[]*)", nodelist.strip())
    assert first is not None  # every group of the pattern may be empty: it always matches
    prefix, ranges, suffix = first.groups()
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0] + suffix


def env_from_slurm(env: MutableMapping[str, str] | None = None) -> None:
    """Set torchrun's variables from SLURM's, for one task per GPU launched by SLURM itself.

    Only when SLURM started several tasks (``SLURM_NTASKS`` > 1) and nothing set
    ``RANK`` yet (torchrun inside a SLURM job keeps its own). ``MASTER_ADDR`` is the
    job's first node and ``MASTER_PORT`` a port derived from the job id, so every task
    of the job agrees without talking; variables already set are kept.
    """
    env = os.environ if env is None else env
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault(
        "MASTER_ADDR",
        first_slurm_host(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))),
    )
    job = env.get("SLURM_JOB_ID", "0")
    env.setdefault("MASTER_PORT", str(_PORT_BASE + zlib.crc32(job.encode()) % _PORT_SPAN))


def _world_from_env(env: Mapping[str, str]) -> World:
    return World(
        rank=int(env.get("RANK", 0)),
        size=int(env.get("WORLD_SIZE", 1)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
    )


def init_world(device: str = "cpu") -> World:
    """This process's :class:`World`; joins the process group on first call when there are several ranks.

    Args:
        device: the model config's device (``cpu``, ``cuda``, ``cuda:1``): a CUDA run
            adds NCCL and pins this rank to ``cuda:LOCAL_RANK``.
    """
    env_from_slurm()
    world = _world_from_env(os.environ)
    if not world.distributed:
        return world
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    return world


def main_process() -> bool:
    """Whether this process is rank 0 (or alone), from the environment; joins no process group."""
    env_from_slurm()
    return _world_from_env(os.environ).is_main


def barrier(world: World) -> None:
    """Wait until every rank gets here (no-op alone)."""
    if world.distributed:
        dist.barrier()


def broadcast_object(world: World, obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (rank 0 gets its own back); pickled, over gloo."""
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_share(items: list[Any], world: World) -> list[Any]:
    """This rank's deterministic share of ``items``: every ``size``-th one, starting at ``rank``.

    Round-robin, so consecutive (similar) images spread over the ranks and the shares
    differ by at most one item.
    """
    return items[world.rank :: world.size]
