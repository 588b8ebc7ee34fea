"""Model adapters: one file per model family, all implementing :class:`GCGModel`.

Builders (used as Hydra ``_target_`` in ``conf/model/``)::

    build_glamm(checkpoint_dir=..., clip_dir=..., dtype="bfloat16", device="cuda")  # official weights
    build_glamm_tiny(seed=0)                                                          # random, CPU, tests

They are imported lazily so ``import altp.models`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from altp.models.base import GCGModel, GCGPrediction, MissingCheckpointError

__all__ = ["GCGModel", "GCGPrediction", "MissingCheckpointError", "build_glamm", "build_glamm_tiny"]

_LAZY = {
    "build_glamm": "altp.models.glamm_build",
    "build_glamm_tiny": "altp.models.glamm_build",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'altp.models' has no attribute {name!r}; available: {', '.join(__all__)}")
