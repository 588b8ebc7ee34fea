"""How much of each visual token's patch a mask covers, through a vision tower's geometry.

A model adapter maps an image to its visual-token grid by a resize (and a crop
or a padding); every token then stands for one rectangle of the *original*
image. :func:`rect_area_fractions` measures a mask over such rectangles
exactly: the mask is the piecewise-constant function that is 1 on the unit
square of each True pixel, and a rectangle's value is the mask's area inside
it divided by the rectangle's area. Parts of a rectangle outside the image
(padding) count as not covered. No resampling kernel is involved, so the
answer does not depend on how the image itself was interpolated.

The coordinate mapping of a resize follows PIL (what CLIP's and OMG-LLaVA's
preprocessing use): resizing ``n`` pixels to ``m`` puts output pixel ``i`` over
the input interval ``[i * n / m, (i + 1) * n / m)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rect_area_fractions"]


def _interp_rows(table: np.ndarray, coords: np.ndarray) -> np.ndarray:
    # Linear interpolation of ``table`` (n + 1, ...) along axis 0 at real ``coords`` clamped to [0, n].
    n = table.shape[0] - 1
    c = np.clip(coords, 0.0, float(n))
    i = np.minimum(np.floor(c).astype(np.int64), max(n - 1, 0))
    a = (c - i).reshape(-1, *([1] * (table.ndim - 1)))
    return table[i] * (1.0 - a) + table[np.minimum(i + 1, n)] * a


def rect_area_fractions(mask: np.ndarray, y_edges: np.ndarray, x_edges: np.ndarray) -> np.ndarray:
    """Fraction of each grid rectangle covered by ``mask``.

    Args:
        mask: (H, W) bool, pixel ``[y, x]`` covering ``[y, y + 1) x [x, x + 1)``.
        y_edges: (R + 1,) ascending row boundaries in the mask's pixel
            coordinates; rectangle row ``r`` spans ``[y_edges[r], y_edges[r + 1])``.
            May reach outside ``[0, H]`` (padding).
        x_edges: (C + 1,) ascending column boundaries, likewise.

    Returns:
        (R, C) float64 in [0, 1]: mask area inside each rectangle (the part
        inside the image) divided by the whole rectangle's area.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    y_edges, x_edges = np.asarray(y_edges, np.float64), np.asarray(x_edges, np.float64)
    if np.any(np.diff(y_edges) <= 0) or np.any(np.diff(x_edges) <= 0):
        raise ValueError("y_edges and x_edges must be strictly ascending")
    h, w = m.shape
    # integral[y, x] = mask area in [0, y) x [0, x); between integer corners the area of a
    # piecewise-constant mask is exactly the bilinear interpolation of this table.
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    integral[1:, 1:] = m.cumsum(0, dtype=np.float64).cumsum(1)
    at_rows = _interp_rows(integral, y_edges)  # (R + 1, W + 1)
    corners = _interp_rows(at_rows.T, x_edges).T  # (R + 1, C + 1)
    area = corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
    rect = np.diff(y_edges)[:, None] * np.diff(x_edges)[None, :]
    return np.clip(area / rect, 0.0, 1.0)
