"""Per-region token budgets for DDC-only and ALTP (pure numpy, no torch).

Regions are indexed ``0..R-1`` (see :mod:`altp.methods.superpixels`); ``sizes[k]`` is
the number of visual tokens region k holds. Every function returns integer
budgets ``b`` with ``0 <= b[k] <= sizes[k]`` and ``b.sum() == n_keep`` exactly.

Rounding rule (shared by both methods, :func:`round_to_total`): each region
first gets ``ceil(target_k)`` capped at its size, then the excess over
``n_keep`` is removed one token at a time from the regions with the largest
rounding excess ``b_k - target_k`` first, ties to the lowest region index.
Every budget therefore ends at ``floor`` or ``ceil`` of its target (the
largest-remainder method), and the result is a pure function of the inputs.

Example::

    w = ddf_weights(ddf_density(variance, pixel_count, total_pixels), alpha=1.5)
    b = altp_budgets(weights=w, sizes=patch_count, n_keep=57)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "altp_budgets",
    "ddc_budgets",
    "ddf_density",
    "ddf_weights",
    "round_to_total",
    "waterfill",
]

# Targets within this distance of an integer count as that integer, so that
# float noise (56.999999...) neither adds a token to ceil() nor reorders ties.
_SNAP = 1e-9


def _check_sizes(sizes: np.ndarray, n_keep: int) -> np.ndarray:
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(
            f"sizes must be a non-empty 1-D array of region token counts, got shape {sizes.shape}"
        )
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise ValueError(
            f"sizes must be positive integers (drop regions that hold no token), got {sizes}"
        )
    if not (0 <= n_keep <= int(sizes.sum())):
        raise ValueError(
            f"n_keep={n_keep} must be in [0, {int(sizes.sum())}] (the tokens the regions hold)"
        )
    return sizes.astype(np.int64)


def ddf_density(variance: np.ndarray, pixel_count: np.ndarray, total_pixels: int) -> np.ndarray:
    """DDF density ``d_k = Var_k * sqrt(|P_k| / |P_total|)`` (paper, DDF).

    Args:
        variance: (R,) pixel variance of each region.
        pixel_count: (R,) |P_k|.
        total_pixels: |P_total|. Any constant here scales every d_k alike and
            cancels in :func:`ddf_weights` (which divides by max d).

    Returns:
        (R,) float64 densities, >= 0.
    """
    variance = np.asarray(variance, dtype=np.float64)
    pixel_count = np.asarray(pixel_count, dtype=np.float64)
    if variance.shape != pixel_count.shape or (variance < 0).any() or (pixel_count < 0).any():
        raise ValueError("variance and pixel_count must be non-negative arrays of the same shape")
    if total_pixels <= 0:
        raise ValueError(f"total_pixels must be positive, got {total_pixels}")
    return variance * np.sqrt(pixel_count / float(total_pixels))


def ddf_weights(density: np.ndarray, alpha: float = 1.5) -> np.ndarray:
    """Region weights ``w = softmax(d / (alpha * max d))`` (paper, DDF).

    All-zero densities (a flat image) have no max to normalise by; every
    region then gets the same weight, which is also softmax(0).

    Args:
        density: (R,) non-negative densities.
        alpha: temperature (paper 1.5); larger alpha flattens the weights.

    Returns:
        (R,) float64 weights summing to 1, all > 0.
    """
    density = np.asarray(density, dtype=np.float64)
    if (
        density.ndim != 1
        or density.size == 0
        or (density < 0).any()
        or not np.isfinite(density).all()
    ):
        raise ValueError(
            f"density must be a non-empty 1-D array of finite values >= 0, got {density}"
        )
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    d_max = density.max()
    if d_max == 0.0:
        return np.full(density.shape, 1.0 / density.size)
    z = density / (alpha * d_max)  # in [0, 1/alpha], so exp() cannot overflow
    e = np.exp(z - z.max())
    return e / e.sum()


def waterfill(weights: np.ndarray, sizes: np.ndarray, total: float) -> np.ndarray:
    """Real-valued targets proportional to ``weights``, capped at ``sizes``.

    Starts from ``total * w_k / sum(w)``; any region over its size is set to its
    size and the overflow is shared among the regions with room, again in
    proportion to their weights, until no region is over (at most R rounds).

    Args:
        weights: (R,) positive weights.
        sizes: (R,) positive int region sizes.
        total: amount to distribute, ``0 <= total <= sizes.sum()``.

    Returns:
        (R,) float64 targets, ``0 <= t_k <= sizes[k]``, summing to ``total``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    sizes = np.asarray(sizes)
    if weights.shape != sizes.shape or (weights <= 0).any():
        raise ValueError("weights must be positive and have one entry per region")
    if not (0 <= total <= sizes.sum() + _SNAP):
        raise ValueError(f"total={total} must be in [0, {int(sizes.sum())}]")
    cap = sizes.astype(np.float64)
    targets = np.zeros_like(cap)
    free = np.ones(cap.shape, dtype=bool)
    remaining = float(total)
    for _ in range(cap.size):
        share = remaining * weights[free] / weights[free].sum()
        over = share >= cap[free] - _SNAP
        if not over.any():
            targets[free] = share
            break
        # Saturate every over-full region at once, then share the rest again.
        idx = np.flatnonzero(free)[over]
        targets[idx] = cap[idx]
        free[idx] = False
        remaining = float(total) - targets[~free].sum()
        if not free.any():
            break
    return targets


def round_to_total(targets: np.ndarray, sizes: np.ndarray, n_keep: int) -> np.ndarray:
    """Integer budgets from real targets: ceil, cap, then trim to exactly ``n_keep``.

    Trimming removes one token at a time from the region with the largest
    rounding excess ``b_k - t_k`` (ties: lowest region index), cycling again if
    needed; regions at 0 are skipped.

    Args:
        targets: (R,) real targets, >= 0.
        sizes: (R,) positive int region sizes.
        n_keep: exact total wanted.

    Returns:
        (R,) int64 budgets, ``0 <= b_k <= sizes[k]``, summing to ``n_keep``.

    Raises:
        ValueError: if the capped ceilings sum to less than ``n_keep`` (the
            targets were too small: scale them to at least ``n_keep``).
    """
    sizes = _check_sizes(sizes, n_keep)
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != sizes.shape or (targets < 0).any() or not np.isfinite(targets).all():
        raise ValueError("targets must be finite, >= 0 and have one entry per region")
    snapped = np.where(np.abs(targets - np.round(targets)) < _SNAP, np.round(targets), targets)
    budgets = np.minimum(np.ceil(snapped).astype(np.int64), sizes)
    excess = int(budgets.sum()) - n_keep
    if excess < 0:
        raise ValueError(
            f"capped targets sum to {int(budgets.sum())} < n_keep={n_keep}; targets must add up to at least n_keep"
        )
    # Priority: largest rounding excess first, then lowest index (lexsort's last key is primary).
    order = np.lexsort((np.arange(sizes.size), -(budgets - snapped)))
    while excess > 0:
        for k in order:
            if excess == 0:
                break
            if budgets[k] > 0:
                budgets[k] -= 1
                excess -= 1
    return budgets


def altp_budgets(*, weights: np.ndarray, sizes: np.ndarray, n_keep: int) -> np.ndarray:
    """ALTP budgets: ``T_k = w_k * n_keep`` water-filled under the region sizes, then rounded.

    The paper's ``T_k = w_k (r V)`` uses ``n_keep = floor(r V)`` as the total so
    that the kept count is exact. Overflow is shared before rounding so that
    each final budget is the floor or ceil of its capped target.

    Args:
        weights: (R,) positive DDF weights (:func:`ddf_weights`).
        sizes: (R,) positive int tokens per region.
        n_keep: exact total.

    Returns:
        (R,) int64 budgets summing to ``n_keep``.
    """
    sizes = _check_sizes(sizes, n_keep)
    return round_to_total(waterfill(weights, sizes, n_keep), sizes, n_keep)


def ddc_budgets(*, sizes: np.ndarray, keep: float, n_keep: int) -> np.ndarray:
    """DDC-only budgets: ``ceil(keep * size_k)`` per region, trimmed to ``n_keep``.

    Args:
        sizes: (R,) positive int tokens per region.
        keep: the shared keep ratio r in (0, 1].
        n_keep: exact total, normally ``floor(keep * sizes.sum())``.

    Returns:
        (R,) int64 budgets summing to ``n_keep``, each within 1 of ``keep * size_k``.
    """
    sizes = _check_sizes(sizes, n_keep)
    if not (0.0 < keep <= 1.0):
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    return round_to_total(keep * sizes.astype(np.float64), sizes, n_keep)
