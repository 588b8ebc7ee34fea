"""What pruning did to one prefill: the record the engine returns and the runner stores.

It sits beside the pruner interface (:mod:`altp.pruning.base`), below the engine that
fills it (:mod:`altp.pruning.engine` and its stage book-keeping ``_plan``) and the model
adapters that pass it on, so none of them has to import another for the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["PruneRecord"]


@dataclass
class PruneRecord:
    """What pruning did to one prefill (stored with the predictions).

    Attributes:
        kept_tokens: per batch element, original visual indices (0..V-1) kept
            after the FIRST stage, ascending (all V when unpruned).
        kept_tokens_per_stage: per batch element, per stage, the original visual
            indices (0..V-1) kept after that stage, ascending ([] per element when
            unpruned).
        merged_tokens_per_stage: per batch element, per stage, per token made by
            merging, the original visual indices (0..V-1) it absorbed (the one whose
            position it takes first); [] when no stage merged. Those tokens count in
            ``kept_per_stage`` but not in ``kept_tokens``/``kept_tokens_per_stage``.
        kept_per_stage: visual tokens left after each stage (merged ones included).
        stage_layers: the decoder layer of each stage.
        extras: per batch element, :attr:`Selection.extras` of every stage merged;
            with a pruner that re-selects per step also ``reselect_steps``
            (selections made, prefill included), ``reselect_distinct_sets``
            (distinct first-stage kept sets among them) and ``reselect_union``
            (visual tokens kept at least once), see ``altp.pruning._plan.KeptSetLog``.
        select_ms: wall time of the prefill's scoring + selection (per-step
            re-selections are inside ``decode_ms``).
        hparams: ``pruner.hparams()`` (its constructor arguments); {} unpruned.
            Values solved per image (PDrop's lambda) are in ``extras``.
    """

    kept_tokens: list[list[int]]
    kept_per_stage: list[int]
    stage_layers: list[int]
    extras: list[dict[str, Any]]
    select_ms: float
    hparams: dict[str, Any] = field(default_factory=dict)
    kept_tokens_per_stage: list[list[list[int]]] = field(default_factory=list)
    merged_tokens_per_stage: list[list[list[list[int]]]] = field(default_factory=list)

    def row(self, b: int, *, select_ms: float | None = None) -> PruneRecord:
        """Batch element ``b``'s record, shaped as the record of a batch of one.

        Args:
            b: the batch element.
            select_ms: its share of the selection time (default: the whole batch's).
        """
        return replace(
            self,
            kept_tokens=self.kept_tokens[b : b + 1],
            kept_tokens_per_stage=self.kept_tokens_per_stage[b : b + 1],
            merged_tokens_per_stage=self.merged_tokens_per_stage[b : b + 1],
            extras=self.extras[b : b + 1],
            select_ms=self.select_ms if select_ms is None else select_ms,
            kept_per_stage=list(self.kept_per_stage),
            stage_layers=list(self.stage_layers),
            hparams=dict(self.hparams),
        )
