"""FastV (Chen et al., 2024): drop the visual tokens the last token attends to least.

Mirrors upstream ``pkunlp-icler/FastV`` (``src/FastV/.../modeling_llama.py``):
at layer K the visual tokens are ranked by the attention weights of layer K-1
(softmax per head, mean over heads, the row of the LAST token, image columns),
the top ``n_keep`` survive, re-sorted into their original order, and keep their
original position ids (gaps). The engine computes that one attention row from
layer K-1's own queries and cached keys instead of running it in eager mode.
"""

from __future__ import annotations

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["FastVPruner"]


@register_pruner("fastv")
class FastVPruner(Pruner):
    """Keep the ``floor(keep * V)`` visual tokens with the highest last-token attention at layer K-1.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K (upstream default 2): the input of layer K is pruned.
    """

    def __init__(self, *, keep: float, layer: int = 2) -> None:
        super().__init__(keep=keep, layer=layer)

    def select(self, ctx: PruneContext) -> Selection:
        if ctx.scores is None:
            raise ValueError(
                "FastV needs ctx.scores (the engine provides them when score_layer is set)"
            )
        # topk's order among ties is unspecified; sorting the chosen indices restores the original order.
        top = ctx.scores.topk(ctx.n_keep, dim=1).indices  # (B, n_keep)
        return Selection(indices=top.sort(dim=1).values)
