"""Pruning interface and engine."""

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

__all__ = [
    "PruneContext",
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
