"""Random baseline: a uniformly random subset of the visual tokens, reproducible by seed."""

from __future__ import annotations

import torch

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["RandomPruner"]


@register_pruner("random")
class RandomPruner(Pruner):
    """Keep ``floor(keep * V)`` visual tokens drawn uniformly without replacement.

    The draw depends only on ``(ctx.seed, ctx.stage)`` and the batch position,
    never on global RNG state, so a run is reproducible image by image.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K, the decoder layer whose input is pruned.
    """

    needs_scores = False

    def select(self, ctx: PruneContext) -> Selection:
        # A private CPU generator: identical draws on every device and untouched global RNG.
        gen = torch.Generator(device="cpu").manual_seed(
            (int(ctx.seed) * 1_000_003 + ctx.stage) % (2**63)
        )
        noise = torch.rand(ctx.batch_size, ctx.num_current, generator=gen)  # (B, V_cur)
        idx = noise.topk(ctx.n_keep, dim=1).indices.sort(dim=1).values
        return Selection(indices=idx.to(ctx.visual_ids.device))
