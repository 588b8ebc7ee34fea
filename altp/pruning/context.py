"""What passes between the engine and a pruner: the sequence's shape, the stages, each stage's context
and the pruner's answer, and the vision-tower signals a model adapter may expose.

Re-exported by :mod:`altp.pruning.base` (and :mod:`altp.pruning`), where the index
conventions and the :class:`~altp.pruning.base.Pruner` interface are described.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["STAGE_SIGNALS", "VISION_SIGNALS", "PruneContext", "PruneStage", "ScheduleInfo", "Selection",
           "VisionSignals"]


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
