"""Random baseline: a uniformly random subset of the visual tokens, reproducible by seed."""

from __future__ import annotations

import torch

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["RandomPruner"]


@register_pruner("random")
class RandomPruner(Pruner):
    """Keep ``floor(keep * V)`` visual tokens drawn uniformly without replacement.

    Sample b's draw depends only on ``(ctx.seeds[b], ctx.stage)``, never on the
    batch it is in or the global RNG state, so a run is reproducible image by image.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K, the decoder layer whose input is pruned.
    """

    needs_scores = False

    def select(self, ctx: PruneContext) -> Selection:
        # A private CPU generator per sample: identical draws on every device and in any batch,
        # untouched global RNG.
        gens = [torch.Generator(device="cpu").manual_seed((s * 1_000_003 + ctx.stage) % (2**63)) for s in ctx.seeds]
        noise = torch.cat([torch.rand(1, ctx.num_current, generator=g) for g in gens])  # (B, V_cur)
        idx = noise.topk(ctx.n_keep, dim=1).indices.sort(dim=1).values
        return Selection(indices=idx.to(ctx.visual_ids.device))
