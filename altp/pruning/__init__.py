"""The pruner interface and the record of what pruning did (the engine is :mod:`altp.pruning.engine`)."""

from altp.pruning.base import (
    PruneContext,
    Pruner,
    PruneStage,
    ScheduleInfo,
    Selection,
    available_pruners,
    build_pruner,
    kept_count,
    register_pruner,
    validate_keep,
)
from altp.pruning.records import PruneRecord

__all__ = [
    "PruneContext",
    "PruneRecord",
    "PruneStage",
    "Pruner",
    "ScheduleInfo",
    "Selection",
    "available_pruners",
    "build_pruner",
    "kept_count",
    "register_pruner",
    "validate_keep",
]
