"""CPU threads of a run: the model's process gets the cores its input workers leave free.

torch's default (one intra-op thread per core) plus the input-pipeline workers oversubscribes
the cores, and OpenMP's threads spin while they wait: on a 2-core machine shared with other
work a bare ``run.py`` ran ~10x slower per image than with ``OMP_NUM_THREADS=1``. The
``threads`` config key (default ``auto``) gives the model's process
``max(1, cores available to it - num_workers)`` intra-op threads (each worker has one,
:mod:`altp.run.pipeline`); ``threads=N``, or else an explicit ``OMP_NUM_THREADS``, wins.
:func:`passive_openmp` (called by the command before torch loads) makes idle OpenMP threads
sleep instead of spinning, unless ``OMP_WAIT_POLICY`` is set. The value used goes into run.json.
"""

from __future__ import annotations

import os

__all__ = ["available_cores", "passive_openmp", "set_model_threads"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def passive_openmp() -> None:
    """Idle OpenMP threads sleep rather than spin (before torch loads OpenMP; a user's setting wins)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_model_threads(setting: str | int, num_workers: int) -> int:
    """Set torch's intra-op threads for the model's process; returns the number used.

    Args:
        setting: ``auto`` or a positive integer (the ``threads`` config key).
        num_workers: the run's input-pipeline workers (one thread each).
    """
    import torch

    if setting != "auto":
        n = int(setting)
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        n = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        n = max(1, available_cores() - num_workers)
    torch.set_num_threads(n)
    return n
