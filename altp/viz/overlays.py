"""Arrays drawn over a model's input image: kept tokens, superpixel regions, masks.

Arrays only (no plotting; PIL draws the mask numbers), so what a figure shows can
be tested cell by cell.
Index conventions as in :mod:`altp.viz.geometry`: token ``i`` covers grid row
``i // cols``, column ``i % cols``; images are (H, W) or (H, W, C) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.font_manager import FontProperties, findfont
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt
from skimage.segmentation import find_boundaries

__all__ = [
    "DROPPED_RGBA",
    "boundary_mask",
    "kept_token_rgb",
    "label_centroids",
    "mask_anchor",
    "mask_overlay",
    "region_value_image",
    "stage_cells",
    "upsample_cells",
]

DROPPED_RGBA = (0.0, 0.0, 0.0, 0.72)  # a token pruned at the first stage: the image darkened


def stage_cells(kept_per_stage: Sequence[Sequence[int]], grid: tuple[int, int]) -> np.ndarray:
    """How many stages each token survived, on the grid.

    Args:
        kept_per_stage: per stage, the original indices kept after it (nested:
            each stage keeps a subset of the previous one).
        grid: (rows, cols).

    Returns:
        (rows, cols) int: 0 = pruned at the first stage, s = kept through stage
        s and pruned at stage s + 1, S = kept to the end (S = number of stages).

    Raises:
        ValueError: an index outside the grid.
    """
    rows, cols = grid
    out = np.zeros(rows * cols, dtype=np.int64)
    for kept in kept_per_stage:
        idx = np.asarray(kept, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= rows * cols):
            raise ValueError(f"kept index {int(idx.max())} outside the {rows}x{cols} token grid")
        out[idx] += 1
    return out.reshape(rows, cols)


def upsample_cells(cells: np.ndarray, size: int) -> np.ndarray:
    """(rows, cols[, C]) per-token values -> (size, size[, C]), each token a solid cell."""
    rows, cols = cells.shape[:2]
    if size % rows or size % cols:
        raise ValueError(f"a {size} px input does not split into a {rows}x{cols} grid")
    return np.repeat(np.repeat(cells, size // rows, axis=0), size // cols, axis=1)


def kept_token_rgb(image: np.ndarray, stages: np.ndarray, n_stages: int,
                   stage_rgb: Sequence[Sequence[float]] = ()) -> np.ndarray:
    """The input image with pruned tokens darkened (and, for several stages, tinted by stage).

    Args:
        image: (S, S, 3) uint8 input.
        stages: (rows, cols) from :func:`stage_cells`.
        n_stages: number of stages S (tokens with ``stages == S`` are shown untouched).
        stage_rgb: for ``s in 1..S-1``, the tint (r, g, b in 0..1) of tokens dropped
            after stage s; blended at 55 %. Unused for one stage.

    Returns:
        (S, S, 3) uint8.
    """
    size = image.shape[0]
    per_pixel = upsample_cells(stages, size)  # (S, S)
    out = image.astype(np.float64)
    alpha = DROPPED_RGBA[3]
    out[per_pixel == 0] *= 1.0 - alpha
    for s in range(1, n_stages):
        tint = np.asarray(stage_rgb[s - 1][:3], dtype=np.float64) * 255.0
        sel = per_pixel == s
        out[sel] = 0.45 * out[sel] + 0.55 * tint
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels on the boundary between two labels."""
    return find_boundaries(labels, mode="inner")


def region_value_image(labels: np.ndarray, region_ids: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """(H, W) float: each pixel of label ``region_ids[k]`` gets ``values[k]``; NaN elsewhere."""
    out = np.full(labels.shape, np.nan, dtype=np.float64)
    lut = dict(zip((int(r) for r in region_ids), (float(v) for v in values), strict=True))
    for rid, val in lut.items():
        out[labels == rid] = val
    return out


def label_centroids(labels: np.ndarray, region_ids: Sequence[int]) -> list[tuple[float, float]]:
    """(y, x) centre of the pixel of each region nearest its centroid (inside the region even if not convex)."""
    out = []
    for rid in region_ids:
        ys, xs = np.nonzero(labels == int(rid))
        if ys.size == 0:
            out.append((float("nan"), float("nan")))
            continue
        cy, cx = ys.mean(), xs.mean()
        i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        out.append((float(ys[i]), float(xs[i])))
    return out


def mask_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(y, x) of the mask's pixel farthest from its border (inside it even if not convex); (-1, -1) if empty."""
    depth = np.asarray(distance_transform_edt(np.pad(mask.astype(bool), 1)))[1:-1, 1:-1]
    if not depth.any():
        return -1, -1
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(y), int(x)


def _ring(sel: np.ndarray, width: int, *, outside: bool) -> np.ndarray:
    """(H, W) bool: the ``width`` px band just inside (or just outside) the mask ``sel``."""
    if outside:
        return np.asarray(binary_dilation(sel, iterations=width), dtype=bool) & ~sel
    return sel & ~np.asarray(binary_erosion(sel, iterations=width, border_value=1), dtype=bool)


def mask_overlay(image: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W, 3) uint8: the image in its own colours, each (H, W) bool mask outlined and numbered.

    Masks are not filled: on a benchmark of coloured shapes a fill colour reads as
    the object's colour. Each mask gets a white outline inside a black one (visible
    on any background) and its number (1-based, in mask order) at its innermost
    pixel, in white on black; a legend maps the numbers to phrases.

    Args:
        image: (H, W, 3) uint8.
        masks: (H, W) bool each, in phrase order.
    """
    out = image[..., :3].astype(np.uint8)  # a copy
    size = max(out.shape[:2])
    width = max(1, round(size / 170))  # about 1 px of each tone on a 200 px thumbnail
    for mask in masks:
        sel = mask.astype(bool)
        out[_ring(sel, width, outside=True)] = 0
        out[_ring(sel, width, outside=False)] = 255
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.truetype(findfont(FontProperties(family="DejaVu Sans", weight="bold")), max(8, round(size * 0.075)))
    for number, mask in enumerate(masks, start=1):
        y, x = mask_anchor(mask)
        if y >= 0:
            draw.text((x, y), str(number), fill="white", font=font, anchor="mm", stroke_width=max(1, width),
                      stroke_fill="black")
    return np.array(canvas)
