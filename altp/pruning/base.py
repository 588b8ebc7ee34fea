"""The pruner interface: pruners score and choose, the engine does the rest.

A pruner declares *where* it prunes (:meth:`Pruner.schedule`) and *which* visual
tokens survive each stage (:meth:`Pruner.select`). Gathering hidden states,
position ids, attention masks and the KV cache is the engine's job
(:mod:`altp.pruning.engine`), so a new pruner is one small file::

    from altp.pruning import Pruner, PruneContext, Selection, register_pruner

    @register_pruner("first")
    class KeepFirstPruner(Pruner):
        '''Keep the first n visual tokens (a toy).'''
        def select(self, ctx: PruneContext) -> Selection:
            idx = torch.arange(ctx.n_keep).expand(ctx.batch_size, -1)
            return Selection(indices=idx)

Index conventions used throughout:

* ``V`` is the number of visual tokens the model produced (576 for GLaMM), laid
  out row-major on a ``grid = (rows, cols)`` patch grid.
* ``visual_ids`` are *original* indices in ``0..V-1``.
* :attr:`Selection.indices` are *relative* to the visual tokens still present at
  this stage (``0..V_cur-1``), sorted ascending, one row per batch element.

Where a pruner acts:

* inside the LLM, at the input of decoder layer ``K >= 1`` (FastV, PDrop, DART, the paper's
  ALTP): layers before ``K`` see every token, and the stage may ask for the last token's
  attention row (``score_layer``) and for the score layer's keys and the stage's hidden
  states (:attr:`PruneStage.signals`);
* at the LLM input, before decoder layer 0 (``PruneStage.layer == 0``: VisionZip, DivPrune,
  ALTP's literal reading): every layer sees only the kept tokens, and the pruner reads
  image-side signals: the projected visual embeddings (``ctx.hidden``'s visual span) and
  what the model adapter exposes of its vision tower (:class:`VisionSignals`).

A stage may also *merge*: :attr:`Selection.merged` carries new embeddings that take the
place of the tokens they absorbed (VisionZip's contextual tokens); they enter the sequence
right after the kept visual tokens, in the order given (see :class:`Selection`).
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from altp.pruning.context import (
    STAGE_SIGNALS,
    VISION_SIGNALS,
    PruneContext,
    PruneStage,
    ScheduleInfo,
    Selection,
    VisionSignals,
)

__all__ = [
    "VISION_SIGNALS",
    "STAGE_SIGNALS",
    "PruneContext",
    "PruneStage",
    "Pruner",
    "ScheduleInfo",
    "Selection",
    "VisionSignals",
    "available_pruners",
    "build_pruner",
    "kept_count",
    "register_pruner",
    "validate_keep",
]


def validate_keep(keep: float) -> float:
    """Return ``keep`` as a float, or raise a one-line error if it is not in (0, 1]."""
    try:
        value = float(keep)
    except (TypeError, ValueError):
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"keep must be in (0, 1] (the fraction of visual tokens kept), got {keep!r}")
    return value


def kept_count(keep: float, num_visual: int) -> int:
    """Visual tokens kept for ``keep``: ``floor(keep * num_visual)``.

    A small epsilon (1e-6 of a token) guards against binary round-off
    (``0.29 * 100 == 28.999...``, or a solved ratio a float hair below ``57/576``).
    Raises if the result would be zero: pruning every visual token is never what
    a user meant.
    """
    keep = validate_keep(keep)
    n = math.floor(keep * num_visual + 1e-6)
    if n < 1:
        raise ValueError(
            f"keep={keep} keeps 0 of {num_visual} visual tokens; use keep >= {1 / num_visual:.6f}"
        )
    return n


class Pruner(ABC):
    """Base class of every visual-token pruner.

    Subclasses set :attr:`name` (via :func:`register_pruner`) and implement
    :meth:`select`; the default :meth:`schedule` prunes once, before layer
    ``layer`` (K=2), scoring with layer ``K-1`` like FastV.

    Args:
        keep: fraction of visual tokens kept, in (0, 1]. The engine keeps
            exactly ``floor(keep * V)``.
        layer: K, the decoder layer whose input is pruned.
    """

    name: ClassVar[str] = ""
    #: whether :meth:`select` reads ``ctx.scores`` (the engine skips computing them otherwise)
    needs_scores: ClassVar[bool] = True
    #: the lowest ``layer`` the pruner supports (0: it can prune at the LLM input)
    min_layer: ClassVar[int] = 1

    def __init__(self, *, keep: float, layer: int = 2) -> None:
        self.keep = validate_keep(keep)
        if layer < self.min_layer:
            why = "layer 0 has no attention to score with" if self.min_layer == 1 else "the LLM input is layer 0"
            raise ValueError(f"{self.name or type(self).__name__} pruning layer must be >= {self.min_layer} "
                             f"({why}), got {layer}")
        self.layer = int(layer)

    @property
    def needs_vision(self) -> frozenset[str]:
        """The :class:`VisionSignals` fields :meth:`select` reads (default none).

        The runner checks them against the model's ``vision_signals`` before the first
        image, so a pruner a model cannot serve fails with one line at config time.
        """
        return frozenset()

    def vision_hint(self) -> str:
        """What to try instead when a model lacks :attr:`needs_vision` (``"; ..."``), for the one-line error."""
        return ""

    @property
    def reselects_per_step(self) -> bool:
        """Whether selection reruns at every decoding step (default False: once, at prefill).

        When True the engine decodes without a KV cache: each step recomputes
        prompt + generated tokens through every layer and calls the stages'
        scoring and :meth:`select` again with the NEWEST token as the scoring
        row (upstream FastV's uncached ``generate``). O(T) full recomputations.
        """
        return False

    def schedule(self, info: ScheduleInfo) -> list[PruneStage]:
        """Stages for one sequence; empty means no pruning.

        The default: one stage at ``layer`` keeping ``floor(keep * V)``, scored by layer
        ``layer - 1`` when :attr:`needs_scores`; at layer 0 (the LLM input) unscored,
        with positions renumbered as the LLM-input pruners' upstream code feeds them.
        """
        if self.layer >= info.num_layers:
            raise ValueError(f"pruning layer {self.layer} >= num_layers {info.num_layers}")
        n_keep = kept_count(self.keep, info.num_visual)
        at_input = self.layer == 0
        return [
            PruneStage(
                layer=self.layer,
                n_keep=n_keep,
                score_layer=self.layer - 1 if (self.needs_scores and not at_input) else None,
                renumber_positions=at_input,
            )
        ]

    def prepare(self, image: np.ndarray, grid: tuple[int, int]) -> Any:
        """Per-image work done at load time, off the model's critical path.

        Args:
            image: (H, W, 3) uint8 RGB, exactly the pixels the vision tower sees
                (336x336 for GLaMM after CLIP preprocessing, before normalisation).
            grid: (rows, cols) of the visual patch grid.

        Returns:
            Anything; it comes back as ``ctx.prep[b]``. The default does nothing.
        """
        return None

    @abstractmethod
    def select(self, ctx: PruneContext) -> Selection:
        """Choose the visual tokens to keep at one stage (see :class:`Selection`)."""

    def hparams(self) -> dict[str, Any]:
        """Hyper-parameters to record in run files."""
        return {"keep": self.keep, "layer": self.layer}


# Filled by @register_pruner as pruner modules are imported. This interface never imports a
# pruner: the built-in ones register when the catalogue altp.pruners imports them (the runner,
# the scripts and the tests import it), a user's pruner when its own module is imported.
_REGISTRY: dict[str, type[Pruner]] = {}
_CATALOGUE = "altp.pruners"


def register_pruner(name: str) -> Callable[[type[Pruner]], type[Pruner]]:
    """Class decorator adding a pruner under ``name``; rejects duplicates."""

    def deco(cls: type[Pruner]) -> type[Pruner]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"pruner name {name!r} already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_pruners() -> list[str]:
    """Names of the registered pruners, sorted (``none`` means no pruning).

    The built-in pruners are registered once :mod:`altp.pruners` has been imported.
    """
    return sorted(["none", *_REGISTRY])


def build_pruner(name: str, **kwargs: Any) -> Pruner | None:
    """Build a registered pruner by name; ``"none"`` returns None.

    The target of every ``conf/pruner/*.yaml``. Knows the pruners registered so far:
    the runner imports :mod:`altp.pruners` first, which registers the built-in ones.

    Raises:
        ValueError: unknown name, listing the valid ones.
    """
    if name == "none":
        return None
    if name not in _REGISTRY:
        hint = "" if _CATALOGUE in sys.modules else f" (import {_CATALOGUE} to register the built-in pruners)"
        raise ValueError(f"unknown pruner {name!r}; choose one of: {', '.join(available_pruners())}{hint}")
    return _REGISTRY[name](**kwargs)
