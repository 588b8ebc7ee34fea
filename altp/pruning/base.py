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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

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


@dataclass(frozen=True)
class ScheduleInfo:
    """What a pruner may know about the sequence and model before prefill.

    Attributes:
        num_visual: V, visual tokens in the sequence before pruning.
        num_text: text (non-visual) tokens in the prompt.
        num_layers: decoder layers of the LLM.
        hidden_size: LLM hidden size d (for FLOPs-matched schedules).
        intermediate_size: LLM MLP size m (for FLOPs-matched schedules).
        grid: (rows, cols) of the visual patch grid, rows * cols == num_visual.
    """

    num_visual: int
    num_text: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    grid: tuple[int, int]


#: what a model adapter may expose of its vision tower (:class:`VisionSignals` fields)
VISION_SIGNALS = ("cls_attention", "features", "keys")
#: what a stage may ask the engine for besides the attention row (:attr:`PruneStage.signals`)
STAGE_SIGNALS = ("keys", "hidden_normed")


@dataclass(frozen=True)
class VisionSignals:
    """Image-side signals of the vision tower, for pruners at the LLM input (layer 0).

    A model adapter fills what its tower has (GLaMM's CLIP ViT: all of them; OMG-LLaVA's
    ConvNeXt: none) and lists it in ``GCGModel.vision_signals``; a pruner that needs one
    the model lacks fails at config time (:attr:`Pruner.needs_vision`). All tensors
    follow the visual tokens' order (row-major over the grid), batch first.

    Attributes:
        cls_attention: (B, V) float32: the CLS token's attention to each patch at the
            feature layer (the layer whose output the LLM receives), softmax per head
            over the whole row (CLS column included), summed over heads; the CLS column
            itself is left out.
        features: (B, V, C) the feature layer's patch outputs, before the projector.
        keys: (B, V, C_h) the feature layer's attention keys of each patch
            (``k_proj(layer_norm1(x))``), averaged over heads.
        project: the adapter's projector, (B, n, C) features -> (B, n, D) LLM embeddings.
    """

    cls_attention: torch.Tensor | None = None
    features: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None

    @staticmethod
    def concat(parts: list[VisionSignals]) -> VisionSignals:
        """The signals of several samples stacked along the batch (the first part's projector)."""

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return VisionSignals(cls_attention=cat("cls_attention"), features=cat("features"), keys=cat("keys"),
                             project=parts[0].project if parts else None)  # fmt: skip

    def rows(self, index: list[int]) -> VisionSignals:
        """The signals of the batch elements ``index``, in that order."""

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[torch.tensor(index, device=t.device)]

        return VisionSignals(cls_attention=pick(self.cls_attention), features=pick(self.features),
                             keys=pick(self.keys), project=self.project)  # fmt: skip


@dataclass(frozen=True)
class PruneStage:
    """One pruning step inside the decoder.

    Attributes:
        layer: visual tokens are dropped from the *input* of this decoder layer
            (0-based), so layers ``< layer`` see the previous token set; 0 prunes at
            the LLM input (no layer sees the dropped tokens).
        n_keep: visual tokens left after this stage (absolute count), merged ones
            included.
        score_layer: the layer whose input norm, q/k projections and RoPE give
            the last-token attention scores passed to :meth:`Pruner.select`
            (FastV: ``layer - 1``; PDrop: ``layer``); ``None`` if the pruner
            needs no scores (always at layer 0: no layer has run).
        renumber_positions: if True, position ids after this stage are
            renumbered contiguously (PDrop, and the LLM-input pruners: upstream
            VisionZip and DivPrune feed a shorter sequence); if False the
            original ids are kept with gaps (FastV, DART).
        signals: what else :meth:`Pruner.select` reads (:data:`STAGE_SIGNALS`):
            ``keys``, the post-RoPE attention keys of ``score_layer`` for the whole
            sequence (``ctx.keys``); ``hidden_normed``, the stage's input hidden
            states through the model's final norm (``ctx.hidden_normed``).
    """

    layer: int
    n_keep: int
    score_layer: int | None
    renumber_positions: bool = False
    signals: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruneContext:
    """Everything a pruner may look at when choosing tokens at one stage.

    Attributes:
        stage: index of this stage in the schedule (0-based).
        layer: decoder layer whose input is being pruned.
        n_keep: how many of the current visual tokens to keep.
        num_visual: V, visual tokens before any pruning.
        grid: (rows, cols) of the original patch grid.
        visual_ids: (B, V_cur) long, original indices of the visual tokens still
            present, ascending.
        scores: (B, V_cur) float32 attention weight of the last token to each of
            those tokens (softmax over the whole row per head, then the mean over
            heads), or None when the stage asked for no scores. The last token is
            the last prompt token at prefill, and the newest generated token at
            the decoding steps of a pruner that :attr:`Pruner.reselects_per_step`.
        prep: one entry per batch element: what :meth:`Pruner.prepare` returned
            for that sample's image (None entries when there was no image).
        seed: the seeds of pruners that draw random numbers: one per batch
            element (what the engine passes), or one int ``s`` meaning ``s + b``
            for element b. Read them through :attr:`seeds`; a pruner that draws
            sample b's numbers from ``seeds[b]`` alone gives each image the same
            choice in any batch.
        hidden: (B, L, D) the stage layer's input, the whole current sequence (at
            layer 0: the prompt embeddings, whose visual span holds the projected
            visual tokens); the visual tokens are ``hidden[:, visual_start :
            visual_start + num_current]``. None where the engine did not pass it.
        visual_start: index of the first visual token in the sequence.
        keys: (B, L, H_kv * d_head) the score layer's post-RoPE keys over the whole
            sequence, when the stage asked for ``keys``; else None.
        hidden_normed: (B, L, D) ``hidden`` through the model's final norm, when the
            stage asked for ``hidden_normed``; else None.
        vision: the model's :class:`VisionSignals` of the batch, when the pruner
            declares :attr:`Pruner.needs_vision`; else None.
    """

    stage: int
    layer: int
    n_keep: int
    num_visual: int
    grid: tuple[int, int]
    visual_ids: torch.Tensor
    scores: torch.Tensor | None
    prep: tuple[Any, ...]
    seed: int | tuple[int, ...] = 0
    hidden: torch.Tensor | None = None
    visual_start: int = 0
    keys: torch.Tensor | None = None
    hidden_normed: torch.Tensor | None = None
    vision: VisionSignals | None = None

    @property
    def visual_hidden(self) -> torch.Tensor:
        """(B, V_cur, D) the current visual tokens' hidden states (at layer 0: their embeddings)."""
        if self.hidden is None:
            raise ValueError("this context carries no hidden states")
        return self.hidden[:, self.visual_start : self.visual_start + self.num_current]

    @property
    def batch_size(self) -> int:
        return int(self.visual_ids.shape[0])

    @property
    def seeds(self) -> tuple[int, ...]:
        """(B,) one seed per batch element (see :attr:`seed`)."""
        if isinstance(self.seed, int):
            return tuple(self.seed + b for b in range(self.batch_size))
        if len(self.seed) != self.batch_size:
            raise ValueError(f"{len(self.seed)} seeds for a batch of {self.batch_size}; pass one per sample")
        return tuple(int(s) for s in self.seed)

    @property
    def num_current(self) -> int:
        """V_cur, visual tokens present before this stage."""
        return int(self.visual_ids.shape[1])


@dataclass(frozen=True)
class Selection:
    """A pruner's answer for one stage.

    Attributes:
        indices: (B, n_keep) long, sorted ascending, relative to the visual
            tokens present at this stage (``0..V_cur-1``).
        extras: per-sample JSON-serialisable details to record (e.g. ALTP's
            region budgets), one dict per batch element; may be empty. A numeric
            ``added_flops`` entry is work the method adds beyond the decoder (e.g.
            a similarity matrix); every FLOPs convention counts it (:mod:`altp.flops`).
        merged: (B, M, D) new tokens made by merging, in the hidden states' space at
            this stage (at layer 0: LLM input embeddings), or None. They enter the
            sequence right after the ``n_keep - M`` kept tokens, in this order, as
            upstream VisionZip appends its contextual tokens after the dominant ones;
            their position ids are contiguous after the kept ones when the stage
            renumbers, else each takes the position of the first token it absorbed.
        merged_from: per batch element, per merged token, the relative indices
            (``0..V_cur-1``) of the tokens it absorbed, the one whose position it
            takes first; required with ``merged``. Records store them as original
            indices; object coverage counts a merged token as covering them.
    """

    indices: torch.Tensor
    extras: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    merged: torch.Tensor | None = None
    merged_from: tuple[tuple[tuple[int, ...], ...], ...] = field(default_factory=tuple)


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
