"""DivPrune (Alvar et al., CVPR 2025): keep a maximally diverse subset of the visual tokens, at the LLM input.

Mirrors upstream ``vbdi/divprune`` (``LLaVA/llava/model/llava_arch.py``, ``DivPrune``):
the projected visual tokens as they enter the LLM are compared by cosine distance
``D = 1 - cos``, and a subset is grown greedily by the max-min rule (farthest point
first): the first token is the one whose nearest neighbour is farthest
(``argmax_j`` of the second-smallest entry of column j, the smallest being its own
~0 distance), each next one the token farthest from the subset
(``argmax_j min_{s in S} D[s, j]``). The kept indices are sorted back into their
original order and the LLM sees a shorter sequence (positions renumbered), pruned
before decoder layer 0.

Where this follows upstream and where it deviates:

* Follows: the features (the projector's output, i.e. the LLM input embeddings of
  the visual span), the cosine distance without eps, the first-pick rule, the
  greedy max-min rule with ``argmax``'s first index on ties, sorted kept indices,
  contiguous positions (upstream leaves ``position_ids`` None after pruning).
* Count: upstream keeps ``int(round(ratio * N))`` (its default ratio 0.098 keeps
  56 of 576); here ``floor(keep * V)`` like every pruner of the harness, so the
  budgets match the other rows of a table (keep=0.1 keeps 57).
* Image span: upstream hard-codes it (35 tokens of system prompt, 576 image
  tokens); here it is the span the model adapter reports.
* Batch: upstream prunes with batch element 0's choice for all; here each element
  by its own tokens.
* Precision: upstream computes in the model dtype (fp16); here in float32, which
  can break near-ties differently in half precision.
* Repeats: upstream does not mask the chosen tokens out of later argmaxes (their
  own distance of ~0 keeps them from winning); only with exact duplicate tokens
  could it choose one twice. Here chosen tokens are masked, which differs from
  upstream only in that degenerate case.

``added_flops`` (recorded per image, counted in every FLOPs convention): the
distance matrix, ``2 V^2 D``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch

from altp.pruning.base import (
    PruneContext,
    Pruner,
    PruneStage,
    ScheduleInfo,
    Selection,
    register_pruner,
)

__all__ = ["DivPrunePruner", "divprune_select"]


def divprune_select(tokens: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` tokens DivPrune keeps, in the order chosen (not sorted).

    Args:
        tokens: (N, D) one sample's visual tokens.
        k: how many to keep, 1 <= k <= N.
    """
    x = tokens.float()
    x = x / x.norm(dim=1, keepdim=True)
    dist = 1 - x @ x.T  # (N, N) cosine distance
    first = torch.topk(dist, 2, dim=0, largest=False).values[1]  # each column's nearest-neighbour distance
    chosen = [int(first.argmax())]
    closest = dist[chosen[0]].clone()  # (N,) min distance of every token to the chosen set
    taken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    taken[chosen[0]] = True
    for _ in range(k - 1):
        j = int(closest.masked_fill(taken, float("-inf")).argmax())
        chosen.append(j)
        taken[j] = True
        closest = torch.minimum(closest, dist[j])
    return chosen


@register_pruner("divprune")
class DivPrunePruner(Pruner):
    """Keep the ``floor(keep * V)`` most diverse projected visual tokens (greedy max-min), before layer 0.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: 0 (upstream: the LLM input); a later layer applies the same rule to
            that layer's input hidden states.
        renumber: None (upstream): positions renumbered at the input, kept (gaps) at a later
            layer; True / False force it (an ablation, not upstream when changed).
    """

    needs_scores: ClassVar[bool] = False
    min_layer: ClassVar[int] = 0

    def __init__(self, *, keep: float, layer: int = 0, renumber: bool | None = None) -> None:
        super().__init__(keep=keep, layer=layer)
        self.renumber = renumber

    def schedule(self, info: ScheduleInfo) -> list[PruneStage]:
        (stage,) = super().schedule(info)
        if self.renumber is None:  # upstream: a shorter sequence at the input, positions contiguous
            return [stage]
        return [replace(stage, renumber_positions=bool(self.renumber))]

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "renumber": self.renumber}

    def select(self, ctx: PruneContext) -> Selection:
        tokens = ctx.visual_hidden  # (B, V_cur, D)
        v, d = tokens.shape[1], tokens.shape[2]
        rows = [sorted(divprune_select(tokens[b], ctx.n_keep)) for b in range(ctx.batch_size)]
        flops = 2.0 * v * v * d
        return Selection(indices=torch.tensor(rows, dtype=torch.long, device=tokens.device),
                         extras=tuple({"added_flops": flops} for _ in rows))  # fmt: skip
