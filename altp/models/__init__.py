"""Model adapters: one family per adapter module, all implementing :class:`GCGModel`.

========  ===================  =========================  ==============================
family    adapter              named builders             official-file reading
========  ===================  =========================  ==============================
GLaMM     ``glamm.py``         ``glamm_build.py``         ``glamm_convert.py``
OMG-LLaVA ``omg_llava.py``     ``omg_llava_build.py``     ``omg_llava_convert.py``
========  ===================  =========================  ==============================

Each builder module lists its builders by registry name (``GLAMM_BUILDERS``,
``OMG_LLAVA_BUILDERS``); a name with a ``conf/model/<name>.yaml`` is a Hydra
``_target_`` there. From Python::

    from altp.models import build_model
    model = build_model("glamm_tiny", seed=0)       # random, CPU, tests
    model = build_model("glamm", checkpoint_dir=..., clip_dir=...)  # official weights

The builder modules are imported on first use, so ``import altp.models`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from altp.models.base import GCGModel, GCGPrediction, MissingCheckpointError

__all__ = ["GCGModel", "GCGPrediction", "MissingCheckpointError", "build_model", "model_builders"]

# Builder module -> its registry dict, one entry per model family.
_FAMILIES = (("altp.models.glamm_build", "GLAMM_BUILDERS"), ("altp.models.omg_llava_build", "OMG_LLAVA_BUILDERS"))


def model_builders() -> dict[str, Callable[..., GCGModel]]:
    """Every named builder of every family, by registry name (imports the builder modules)."""
    out: dict[str, Callable[..., GCGModel]] = {}
    for module, registry in _FAMILIES:
        out.update(getattr(importlib.import_module(module), registry))
    return out


def build_model(name: str, **kwargs: Any) -> GCGModel:
    """The model registered as ``name``, built with the builder's keyword arguments.

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    builders = model_builders()
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(builders))}")
    return builders[name](**kwargs)
