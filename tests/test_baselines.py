"""Random and uniform baselines: exact counts, hand-computed grids, reproducible draws."""

from __future__ import annotations

import pytest
import torch

from altp.pruning import PruneContext
from baselines.random_pruner import RandomPruner
from baselines.uniform import UniformPruner, uniform_grid_indices


def _ctx(n_keep: int, grid=(24, 24), batch=1, seed=0, stage=0) -> PruneContext:
    v = grid[0] * grid[1]
    return PruneContext(
        stage=stage,
        layer=2,
        n_keep=n_keep,
        num_visual=v,
        grid=grid,
        visual_ids=torch.arange(v).expand(batch, -1),
        scores=None,
        prep=(None,) * batch,
        seed=seed,
    )


# -- uniform ---------------------------------------------------------------------------------------------
def test_uniform_hand_computed_small_grids():
    # 4 of 4x4: rows 1 and 3, columns 1 and 3 (cell centres of a 2x2 sub-grid).
    assert uniform_grid_indices(4, (4, 4)) == [5, 7, 13, 15]
    # 2 of 4x4: one row (the middle, row 2), columns 1 and 3.
    assert uniform_grid_indices(2, (4, 4)) == [9, 11]
    # 3 of 3x3: round(sqrt(3)) = 2 rows, floor(0.75) = 0 and floor(2.25) = 2; row 0 gets 2 cells, row 2 one.
    assert uniform_grid_indices(3, (3, 3)) == [0, 2, 7]


def test_uniform_quarter_of_glamm_grid_is_every_other_row_and_column():
    want = [(2 * i + 1) * 24 + (2 * j + 1) for i in range(12) for j in range(12)]
    assert uniform_grid_indices(144, (24, 24)) == want


@pytest.mark.parametrize("grid", [(24, 24), (16, 16), (4, 9), (1, 7)])
def test_uniform_exact_count_sorted_unique_and_spread(grid):
    v = grid[0] * grid[1]
    for n in range(1, v + 1):
        idx = uniform_grid_indices(n, grid)
        assert len(idx) == n and idx == sorted(set(idx)) and 0 <= idx[0] and idx[-1] < v
        rows, cols = {i // grid[1] for i in idx}, {i % grid[1] for i in idx}
        # Spread over both axes: at least the square-root share of the rows and columns in use.
        assert len(rows) >= min(grid[0], int((n * grid[0] / grid[1]) ** 0.5))
        assert len(cols) >= min(grid[1], n // max(len(rows), 1))


def test_uniform_pruner_returns_the_grid_for_every_sample_and_refuses_later_stages():
    sel = UniformPruner(keep=0.1).select(_ctx(57, batch=2))
    assert sel.indices.shape == (2, 57) and sel.indices[0].tolist() == uniform_grid_indices(
        57, (24, 24)
    )
    assert torch.equal(sel.indices[0], sel.indices[1])
    ctx = PruneContext(
        stage=1,
        layer=4,
        n_keep=4,
        num_visual=576,
        grid=(24, 24),
        visual_ids=torch.arange(8)[None],
        scores=None,
        prep=(None,),
    )
    with pytest.raises(ValueError, match="full grid"):
        UniformPruner(keep=0.1).select(ctx)


# -- random ----------------------------------------------------------------------------------------------
def test_random_is_reproducible_by_seed_and_ignores_global_rng():
    p = RandomPruner(keep=0.25)
    torch.manual_seed(1)
    a = p.select(_ctx(144, seed=7)).indices
    torch.manual_seed(2)
    b = p.select(_ctx(144, seed=7)).indices
    c = p.select(_ctx(144, seed=8)).indices
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (
        a.shape == (1, 144) and torch.equal(a, a.sort(dim=1).values) and a.unique().numel() == 144
    )


def test_random_rows_of_a_batch_differ_and_stages_differ():
    p = RandomPruner(keep=0.25)
    sel = p.select(_ctx(144, batch=2, seed=3)).indices
    assert not torch.equal(sel[0], sel[1])
    assert not torch.equal(p.select(_ctx(144, seed=3, stage=1)).indices, sel[:1])


def test_random_inclusion_is_uniform_over_tokens():
    # Over 400 seeds each of 64 tokens should be kept ~ 400 * 16/64 = 100 times (binomial sd ~ 8.7).
    p = RandomPruner(keep=0.25)
    counts = torch.zeros(64)
    for s in range(400):
        counts[p.select(_ctx(16, grid=(8, 8), seed=s)).indices[0]] += 1
    assert counts.sum() == 400 * 16
    assert counts.min() > 100 - 5 * 8.7 and counts.max() < 100 + 5 * 8.7
