"""Region budgets of DDC-only and ALTP: hand-computed cases and exactness properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from altp.methods.budgets import (
    altp_budgets,
    ddc_budgets,
    ddf_density,
    ddf_weights,
    round_to_total,
    waterfill,
)
from altp.pruning.base import kept_count

# ---------------------------------------------------------------- hand-computed cases


def test_two_region_weights_and_budgets_by_hand() -> None:
    # Var 100 and 25, equal pixel counts: d = (100, 25) * sqrt(1/2), so
    # d / (1.5 max d) = (2/3, 1/6) and w_0 = 1 / (1 + exp(1/6 - 2/3)) = 1 / (1 + e^-0.5).
    d = ddf_density(np.array([100.0, 25.0]), np.array([50, 50]), 100)
    np.testing.assert_allclose(d, [100 / math.sqrt(2), 25 / math.sqrt(2)])
    w = ddf_weights(d, alpha=1.5)
    w0 = 1.0 / (1.0 + math.exp(-0.5))
    np.testing.assert_allclose(w, [w0, 1.0 - w0], rtol=1e-12)
    # T = 10 w = (6.2246, 3.7754): ceil (7, 4) is one too many; region 0 has the
    # larger ceil excess (0.775 vs 0.225), so it gives the token back.
    b = altp_budgets(weights=w, sizes=np.array([8, 8]), n_keep=10)
    assert b.tolist() == [6, 4]


def test_alpha_flattens_weights() -> None:
    d = np.array([4.0, 1.0])
    # alpha=1: softmax(1, 0.25); alpha=4: softmax(0.25, 0.0625).
    np.testing.assert_allclose(ddf_weights(d, alpha=1.0)[0], 1 / (1 + math.exp(-0.75)))
    np.testing.assert_allclose(ddf_weights(d, alpha=4.0)[0], 1 / (1 + math.exp(-0.1875)))


def test_overflow_is_redistributed_by_weight() -> None:
    # T = (5, 2.5, 2.5); region 0 holds only 2 tokens, its 3 extra split 1:1.
    b = altp_budgets(weights=np.array([0.5, 0.25, 0.25]), sizes=np.array([2, 10, 10]), n_keep=10)
    assert b.tolist() == [2, 4, 4]
    # Unequal weights among the regions with room: the 4 extra split 3:1.
    t = waterfill(np.array([0.6, 0.3, 0.1]), np.array([2, 50, 50]), 20)
    np.testing.assert_allclose(t, [2.0, 13.5, 4.5])


def test_cascading_overflow() -> None:
    # Saturating region 0 pushes region 1 over its size in the second round.
    t = waterfill(np.array([0.7, 0.2, 0.1]), np.array([3, 4, 100]), 20)
    np.testing.assert_allclose(t, [3.0, 4.0, 13.0])


def test_fewer_tokens_than_regions_go_to_heaviest() -> None:
    # T = (0.8, 0.6, 0.4, 0.2): every ceil is 1, the two lightest give theirs back.
    b = altp_budgets(weights=np.array([0.4, 0.3, 0.2, 0.1]), sizes=np.full(4, 5), n_keep=2)
    assert b.tolist() == [1, 1, 0, 0]


def test_ties_trim_lowest_index_first() -> None:
    # T = 4/3 each, ceil 2 each, excess 2 with equal ceil excess: regions 0 and 1 lose one.
    b = altp_budgets(weights=np.full(3, 1 / 3), sizes=np.full(3, 10), n_keep=4)
    assert b.tolist() == [1, 1, 2]


def test_ddc_by_hand() -> None:
    # r=0.5 on sizes (5, 7, 9): targets (2.5, 3.5, 4.5), ceil (3, 4, 5) = 12 > 10;
    # equal excess 0.5 everywhere, so regions 0 and 1 are trimmed.
    assert ddc_budgets(sizes=np.array([5, 7, 9]), keep=0.5, n_keep=10).tolist() == [2, 3, 5]
    # Integer targets need no trimming.
    assert ddc_budgets(sizes=np.array([10, 20]), keep=0.1, n_keep=3).tolist() == [1, 2]


def test_flat_image_gives_equal_weights() -> None:
    np.testing.assert_array_equal(ddf_weights(np.zeros(4)), np.full(4, 0.25))
    b = altp_budgets(weights=ddf_weights(np.zeros(4)), sizes=np.array([10, 10, 10, 10]), n_keep=8)
    assert b.tolist() == [2, 2, 2, 2]


def test_single_region_and_keep_all() -> None:
    assert altp_budgets(weights=np.array([1.0]), sizes=np.array([576]), n_keep=57).tolist() == [57]
    sizes = np.array([3, 100, 17])
    assert altp_budgets(weights=np.array([0.8, 0.1, 0.1]), sizes=sizes, n_keep=120).tolist() == [
        3,
        100,
        17,
    ]
    assert ddc_budgets(sizes=sizes, keep=1.0, n_keep=120).tolist() == [3, 100, 17]


def test_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="n_keep"):
        altp_budgets(weights=np.array([1.0]), sizes=np.array([5]), n_keep=6)
    with pytest.raises(ValueError, match="positive integers"):
        ddc_budgets(sizes=np.array([0, 5]), keep=0.5, n_keep=2)
    with pytest.raises(ValueError, match="at least n_keep"):
        round_to_total(np.array([1.0, 1.0]), np.array([5, 5]), 4)
    with pytest.raises(ValueError, match="alpha"):
        ddf_weights(np.array([1.0]), alpha=0.0)


# ---------------------------------------------------------------- properties

_label_maps = st.integers(min_value=0, max_value=2**31 - 1).map(np.random.default_rng)


def _random_regions(rng: np.random.Generator) -> np.ndarray:
    """Token counts of the regions of a random label map on a random grid."""
    rows, cols = rng.integers(2, 25, size=2)
    n_labels = int(rng.integers(1, 16))
    labels = rng.integers(0, n_labels, size=rows * cols)
    sizes = np.bincount(labels)
    return sizes[sizes > 0]  # labels that own no token get no region


@settings(max_examples=80, deadline=None)
@given(rng=_label_maps, keep=st.floats(0.01, 1.0), alpha=st.floats(0.1, 5.0))
def test_altp_budgets_exact_and_bounded(
    rng: np.random.Generator, keep: float, alpha: float
) -> None:
    sizes = _random_regions(rng)
    v = int(sizes.sum())
    n_keep = kept_count(keep, v) if keep * v >= 1 else 1
    # Densities with zeros and duplicates, like flat and identical regions.
    density = rng.choice([0.0, 1.0, 7.5, 300.0, 1e4], size=sizes.size) * rng.random(
        sizes.size
    ).round(1)
    w = ddf_weights(density, alpha=alpha)
    b = altp_budgets(weights=w, sizes=sizes, n_keep=n_keep)
    assert b.dtype == np.int64 and int(b.sum()) == n_keep
    assert (b >= 0).all() and (b <= sizes).all()
    np.testing.assert_array_equal(
        b, altp_budgets(weights=w.copy(), sizes=sizes.copy(), n_keep=n_keep)
    )
    # Every budget is the floor or the ceil of its water-filled target.
    t = waterfill(w, sizes, n_keep)
    assert (b >= np.floor(t - 1e-9)).all() and (b <= np.ceil(t + 1e-9)).all()


@settings(max_examples=80, deadline=None)
@given(rng=_label_maps, frac=st.floats(0.0, 1.0))
def test_waterfill_matches_capped_proportional_oracle(
    rng: np.random.Generator, frac: float
) -> None:
    # Independent characterisation: t_k = min(size_k, lam * w_k) for one lam,
    # with sum t = total; find lam by bisection.
    sizes = _random_regions(rng)
    w = rng.random(sizes.size) + 0.01
    total = frac * sizes.sum()
    t = waterfill(w, sizes, total)
    lo, hi = 0.0, float(sizes.max() / w.min()) + 1.0
    for _ in range(200):
        lam = (lo + hi) / 2
        lo, hi = (lam, hi) if np.minimum(sizes, lam * w).sum() < total else (lo, lam)
    np.testing.assert_allclose(t, np.minimum(sizes, hi * w), atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(rng=_label_maps, n_keep_frac=st.floats(0.0, 1.0))
def test_equal_sizes_budgets_follow_density(rng: np.random.Generator, n_keep_frac: float) -> None:
    r = int(rng.integers(2, 12))
    size = int(rng.integers(1, 60))
    sizes = np.full(r, size)
    n_keep = int(n_keep_frac * r * size)
    density = rng.random(r) * 100
    b = altp_budgets(weights=ddf_weights(density), sizes=sizes, n_keep=n_keep)
    # A denser region of the same size never gets fewer tokens.
    for i in range(r):
        for j in range(r):
            if density[i] > density[j]:
                assert b[i] >= b[j], (density, b)


@settings(max_examples=80, deadline=None)
@given(rng=_label_maps, keep=st.floats(0.01, 1.0))
def test_ddc_budgets_stay_within_one_of_share(rng: np.random.Generator, keep: float) -> None:
    sizes = _random_regions(rng)
    v = int(sizes.sum())
    n_keep = math.floor(keep * v + 1e-9)
    b = ddc_budgets(sizes=sizes, keep=keep, n_keep=n_keep)
    assert int(b.sum()) == n_keep and (b >= 0).all() and (b <= sizes).all()
    assert (np.abs(b - keep * sizes) < 1 + 1e-9).all()
    np.testing.assert_array_equal(b, ddc_budgets(sizes=sizes, keep=keep, n_keep=n_keep))
