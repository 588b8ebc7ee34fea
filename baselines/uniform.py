"""Uniform baseline: an evenly spread sub-grid of the visual patch grid.

For ``n`` kept tokens on an ``R x C`` grid, ``r' ~ sqrt(n R / C)`` evenly
spaced rows are chosen (cell centres: ``floor((i + 0.5) R / r')``) and the
``n`` tokens are dealt to them as evenly as possible (the first ``n mod r'``
rows get one more); within a row the ``c_i`` tokens sit at
``floor((j + 0.5) C / c_i)``. Exactly ``n`` distinct tokens, deterministic,
covering rows and columns alike (a raster stride would leave column stripes
when C is a multiple of it).
"""

from __future__ import annotations

import math

import torch

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["UniformPruner", "uniform_grid_indices"]


def uniform_grid_indices(n: int, grid: tuple[int, int]) -> list[int]:
    """Row-major indices of ``n`` evenly spread cells of a ``grid = (rows, cols)`` grid, ascending."""
    rows, cols = grid
    if not (1 <= n <= rows * cols):
        raise ValueError(f"cannot pick {n} cells of a {rows}x{cols} grid")
    r = min(rows, max(1, round(math.sqrt(n * rows / cols)), math.ceil(n / cols)))
    base, extra = divmod(n, r)
    out: list[int] = []
    for i in range(r):
        row = (
            (2 * i + 1) * rows // (2 * r)
        )  # floor((i + 0.5) * rows / r) in exact integer arithmetic
        c = base + (1 if i < extra else 0)
        out.extend(row * cols + (2 * j + 1) * cols // (2 * c) for j in range(c))
    return out


@register_pruner("uniform")
class UniformPruner(Pruner):
    """Keep ``floor(keep * V)`` visual tokens on an evenly spread sub-grid (see module docstring).

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K, the decoder layer whose input is pruned.
    """

    needs_scores = False

    def select(self, ctx: PruneContext) -> Selection:
        if ctx.num_current != ctx.num_visual:
            raise ValueError(
                "uniform subsampling is defined on the full grid; use it as a single first stage"
            )
        idx = torch.tensor(uniform_grid_indices(ctx.n_keep, ctx.grid), device=ctx.visual_ids.device)
        return Selection(indices=idx[None].expand(ctx.batch_size, -1).contiguous())
