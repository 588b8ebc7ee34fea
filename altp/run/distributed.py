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
# Joining, though, is bounded (conf/config.yaml's rendezvous_timeout_min): a rank whose peers never
# start (SLURM tasks without srun, a rank that died first) says so instead of waiting 6 h.
DEFAULT_RENDEZVOUS_MIN = 10.0
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


def _rendezvous(world: World, minutes: float) -> Any:
    """The ranks' ``TCPStore``, once every rank has joined within ``minutes``; None under torchrun (its agent
    started every rank and hosts the store).

    Raises:
        RunFailure: the other ranks did not join in time (one line naming the likely cause).
    """
    from altp.errors import RunFailure

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    try:
        # torch.distributed re-exports TCPStore from its C extension at run time.
        return dist.TCPStore(addr, port, world.size, world.is_main,  # pyright: ignore[reportPrivateImportUsage]
                             timeout=datetime.timedelta(minutes=minutes), wait_for_workers=True)  # fmt: skip
    except RuntimeError as err:  # DistStoreError (rank 0 waited), DistNetworkError (no rank 0 to reach)
        slurm = os.environ.get("SLURM_NTASKS")
        cause = (f"a SLURM job with {slurm} tasks started without srun (run `srun python run.py ...` inside "
                 f"sbatch), or a rank that died" if slurm else "a rank that died or never started")
        raise RunFailure(f"rank {world.rank} of {world.size}: the other ranks did not join at {addr}:{port} within "
                         f"{minutes:g} min ({str(err).splitlines()[0]}); likely {cause}; "
                         f"rendezvous_timeout_min=N waits longer") from None


def init_world(device: str = "cpu", *, rendezvous_timeout_min: float = DEFAULT_RENDEZVOUS_MIN) -> World:
    """This process's :class:`World`; joins the process group on first call when there are several ranks.

    Args:
        device: the model config's device (``cpu``, ``cuda``, ``cuda:1``): a CUDA run
            adds NCCL and pins this rank to ``cuda:LOCAL_RANK``.
        rendezvous_timeout_min: how long the ranks wait for each other to join (collectives
            afterwards may wait 6 h: a shard's imbalance, rank 0's scoring).

    Raises:
        RunFailure: the other ranks did not join within ``rendezvous_timeout_min``.
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
        store = _rendezvous(world, rendezvous_timeout_min)
        if store is None:
            dist.init_process_group(backend=backend, timeout=_TIMEOUT)
        else:
            dist.init_process_group(backend=backend, store=store, rank=world.rank, world_size=world.size,
                                    timeout=_TIMEOUT)  # fmt: skip
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
