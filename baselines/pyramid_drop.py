"""PyramidDrop (Xing et al., 2024): drop visual tokens in stages, a fixed ratio per stage.

Mirrors upstream ``Cooperx521/PyramidDrop`` (``llava/model/modeling_llama_pdrop.py``,
``pdrop_rank_drop``) at inference:

* stages at ``layers = [8, 16, 24]`` (LLaVA-1.5-7B, 32 layers); stage s
  (1-based) keeps ``int(V * lambda**s)`` visual tokens, upstream's
  ``image_token_ratio_list = [1, lambda, lambda**2, lambda**3]`` applied to
  the ORIGINAL V each time (not to the previous count);
* the score is ``softmax(q_last K^T / sqrt(hd))`` of the last prompt token,
  with the stage layer's own input norm, q/k projections and RoPE applied to
  the hidden states entering that layer (upstream ranks after layer
  ``rank_layer - 1`` with ``self.layers[rank_layer]``), mean over heads,
  image columns, top-k, re-sorted into the original order;
* position ids are renumbered 0..N_s-1 after each drop; drops happen only
  at prefill and decoding runs on the pruned cache.

Equal-FLOPs comparison (this project, not upstream): for ``keep=r`` and no
explicit ``lambda_``, lambda is solved so that the multi-stage eq.-5 FLOPs
(:mod:`altp.flops`, real text/visual counts from :class:`ScheduleInfo`) equal
single-stage pruning to ``floor(r * V)`` at layer ``match_layer`` (FastV's
K=2). Upstream's [8, 16, 24] leaves the first 8 of 32 layers unpruned, which
alone costs more than FastV's budget at r = 0.1 with GLaMM's prompt, so that
target is unreachable with upstream's layers (an error says so).

Default stage layers (``layers=None``): ``match_layer`` followed by upstream's
layers scaled to the model's depth as fractions 1/4, 1/2, 3/4 (rounded; layers
not above ``match_layer`` dropped): [2, 8, 16, 24] for 32 layers, [2, 4, 6]
for 8. The extra first stage at K=2 is what makes the equal-FLOPs match
reachable at every keep; ``layers=[8, 16, 24], lambda_=0.5`` is upstream's own
setting. Explicit layers are used as given.

Ablation switches (this project, not upstream; defaults are upstream's):

* ``score``: ``own`` (upstream) scores stage layer L with layer L's own input
  norm, q/k and RoPE; ``previous`` scores with layer L-1's, as FastV does.
* ``renumber``: ``True`` (upstream) renumbers positions contiguously after a
  drop; ``False`` keeps the original position ids with gaps, as FastV does.

With ``score='previous', renumber=False`` and a single stage at FastV's layer
keeping FastV's count, PDrop computes exactly what FastV computes, so the 2x2
of these switches separates what the score and the positions each cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from altp.flops import LLMShape, prefill_flops
from altp.pruning.base import (
    PruneContext,
    Pruner,
    PruneStage,
    ScheduleInfo,
    Selection,
    kept_count,
    register_pruner,
)

__all__ = ["SCORE_MODES", "PyramidDropPruner", "solve_lambda"]

_UPSTREAM_FRACTIONS = (0.25, 0.5, 0.75)  # [8, 16, 24] of LLaVA-1.5-7B's 32 layers
#: which layer's q/k scores a stage at layer L: L itself (upstream) or L-1 (FastV's choice)
SCORE_MODES = ("own", "previous")


def _multi_stage_flops(
    lam: float, layers: Sequence[int], info: ScheduleInfo, shape: LLMShape
) -> float:
    # Real-valued counts: the solve is continuous; rounding to int() happens in the schedule.
    n = info.num_text + info.num_visual
    stages = [
        (lay, info.num_text + info.num_visual * lam ** (s + 1)) for s, lay in enumerate(layers)
    ]
    return prefill_flops(n, stages, shape)


def solve_lambda(
    *, keep: float, layers: Sequence[int], info: ScheduleInfo, match_layer: int = 2
) -> float:
    """Lambda whose PyramidDrop FLOPs equal single-stage pruning to ``floor(keep*V)`` at ``match_layer``.

    Raises:
        ValueError: the target lies below what ``layers`` can reach (lambda -> 0).
    """
    shape = LLMShape(
        hidden_size=info.hidden_size,
        intermediate_size=info.intermediate_size,
        num_layers=info.num_layers,
    )
    n = info.num_text + info.num_visual
    target = prefill_flops(
        n, [(match_layer, info.num_text + kept_count(keep, info.num_visual))], shape
    )
    if _multi_stage_flops(0.0, layers, info, shape) >= target:
        raise ValueError(
            f"PDrop with layers={list(layers)} cannot match the FLOPs of keep={keep} at layer {match_layer} "
            f"on {info.num_layers} layers (the unpruned first layers alone cost more); use layers starting "
            f"at {match_layer}, e.g. [{match_layer}, {info.num_layers // 4}, {info.num_layers // 2}, "
            f"{3 * info.num_layers // 4}], or pass lambda_ explicitly"
        )
    lo, hi = 0.0, 1.0  # FLOPs grow monotonically with lambda; 60 halvings reach float resolution
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _multi_stage_flops(mid, layers, info, shape) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@register_pruner("pdrop")
class PyramidDropPruner(Pruner):
    """Multi-stage pruning with a geometric keep ratio, scored at each stage layer.

    Args:
        keep: r in (0, 1]: with ``lambda_`` unset, lambda is solved to match the
            FLOPs of keeping ``floor(r * V)`` from layer ``match_layer`` on.
        layers: stage layers (ascending), or None for ``match_layer`` plus
            upstream's [8, 16, 24] scaled to the model's depth.
        lambda_: the per-stage ratio (upstream 0.5); overrides the FLOPs match.
        match_layer: the single-stage layer K the FLOPs are matched to.
        score: ``own`` (upstream: the stage layer's own q/k) or ``previous``
            (layer L-1's, like FastV); an ablation switch.
        renumber: True (upstream: contiguous positions after each drop) or
            False (original positions with gaps, like FastV); an ablation switch.
    """

    def __init__(
        self,
        *,
        keep: float,
        layers: Sequence[int] | None = None,
        lambda_: float | None = None,
        match_layer: int = 2,
        score: str = "own",
        renumber: bool = True,
    ) -> None:
        super().__init__(keep=keep, layer=match_layer)
        if lambda_ is not None and not (0.0 < float(lambda_) <= 1.0):
            raise ValueError(f"lambda_ must be in (0, 1], got {lambda_!r}")
        if score not in SCORE_MODES:
            raise ValueError(f"pdrop score must be one of {', '.join(SCORE_MODES)}, got {score!r}")
        if not isinstance(renumber, bool):
            raise ValueError(f"pdrop renumber must be true or false, got {renumber!r}")
        self.score = score
        self.renumber = renumber
        self.stage_layers_given = None if layers is None else [int(x) for x in layers]
        self.lambda_ = None if lambda_ is None else float(lambda_)
        # The lambda of the schedule being run: the engine calls schedule() then select() within
        # one prefill, and select() reports it per image in the extras (hparams() never reads it).
        self._lambda_in_use: float | None = None

    @property
    def uses_keep(self) -> bool:
        """False with an explicit ``lambda_``: the stages keep V*lambda**s whatever ``keep`` says."""
        return self.lambda_ is None

    def stage_layers(self, num_layers: int) -> list[int]:
        """The stage layers for a decoder of ``num_layers`` layers."""
        layers = self.stage_layers_given or [self.layer] + [
            lay for lay in (round(f * num_layers) for f in _UPSTREAM_FRACTIONS) if lay > self.layer
        ]
        if (
            any(b <= a for a, b in zip(layers, layers[1:], strict=False))
            or not (1 <= layers[0])
            or layers[-1] >= num_layers
        ):
            raise ValueError(f"PDrop layers must be ascending in [1, {num_layers}), got {layers}")
        return layers

    def schedule(self, info: ScheduleInfo) -> list[PruneStage]:
        layers = self.stage_layers(info.num_layers)
        lam = self.lambda_
        if lam is None:
            lam = solve_lambda(keep=self.keep, layers=layers, info=info, match_layer=self.layer)
        # upstream's int(V * ratio), with kept_count's round-off guard: a single stage at keep 0.1
        # gave V*lambda = 56.99999999, which plain int() turns into 56 of 576, one fewer than FastV's 57
        try:
            counts = [kept_count(lam ** (s + 1), info.num_visual) for s in range(len(layers))]
        except ValueError:
            raise ValueError(
                f"PDrop lambda={lam:.4f} leaves 0 visual tokens at layer {layers[-1]}; raise lambda_"
            ) from None
        if self.lambda_ is None and math.isclose(lam, 1.0, abs_tol=1e-9):
            # keep=1.0 solves to lambda 1 up to float round-off: drop nothing.
            counts = [info.num_visual] * len(layers)
        self._lambda_in_use = lam
        return [
            PruneStage(
                layer=lay,
                n_keep=c,
                score_layer=lay if self.score == "own" else lay - 1,
                renumber_positions=self.renumber,
            )
            for lay, c in zip(layers, counts, strict=True)
        ]

    def select(self, ctx: PruneContext) -> Selection:
        if ctx.scores is None:
            raise ValueError(
                "PDrop needs ctx.scores (the engine provides them when score_layer is set)"
            )
        top = ctx.scores.topk(ctx.n_keep, dim=1).indices  # (B, n_keep)
        # Lambda is solved per sequence (its text length enters the FLOPs match), so it belongs
        # with each image's record; stage layers and counts are in the record already.
        extras = ({"lambda": self._lambda_in_use},) * ctx.batch_size if ctx.stage == 0 else ()
        return Selection(indices=top.sort(dim=1).values, extras=extras)

    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (what the config set); per-image solved values are in the extras."""
        return {
            "keep": self.keep,
            "match_layer": self.layer,
            "layers": self.stage_layers_given,
            "lambda_": self.lambda_,
            "score": self.score,
            "renumber": self.renumber,
        }
