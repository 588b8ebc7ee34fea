"""SLIC superpixels mapped onto the visual patch grid (ALTP's DDC step).

The image is the one the vision tower sees (336x336 uint8 RGB for GLaMM after
CLIP's resize + centre crop, before normalisation); the patch grid
``(rows, cols)`` comes from the model (24x24 for GLaMM, so 14-px patches).

Index conventions:

* ``slic_labels`` are scikit-image's labels (``start_label=0``), one per pixel.
* A *region* is a superpixel that owns at least one patch after the majority
  mapping; regions are numbered ``0..R-1`` in ascending SLIC label order, and
  ``region_labels[k]`` is region k's SLIC label. Superpixels owning no patch
  are dropped (they can hold no token, so they get no budget).
* ``patch_region`` is row-major over the grid: patch ``i`` is row ``i // cols``,
  column ``i % cols``, i.e. the same order as the visual tokens.

Example::

    regions = compute_regions(image, (24, 24))  # image: (336, 336, 3) uint8
    regions.patch_region.shape  # (576,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.segmentation import slic

__all__ = [
    "VARIANCE_MODES",
    "RegionMap",
    "VarianceMode",
    "compute_regions",
    "majority_patch_labels",
    "region_variance",
    "regions_from_labels",
    "slic_labels",
]

#: How the per-region pixel variance is measured (see :func:`region_variance`).
VarianceMode = Literal["channel_mean", "pooled", "gray"]
VARIANCE_MODES: tuple[str, ...] = ("channel_mean", "pooled", "gray")
# ITU-R BT.601 luma weights, the ones PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class RegionMap:
    """Superpixel regions of one image on its patch grid.

    Attributes:
        grid: (rows, cols) of the patch grid.
        patch_region: (rows*cols,) int64 region index in ``0..R-1`` of each patch, row-major.
        region_labels: (R,) int64 SLIC label of each region, ascending.
        patch_count: (R,) int64 patches owned by each region (sums to rows*cols).
        pixel_count: (R,) int64 |P_k|, pixels of the SLIC superpixel (all of its
            pixels, including those in patches won by another region).
        variance: (R,) float64 pixel variance of the superpixel (0..255 scale),
            measured as ``variance_mode`` says.
        total_pixels: |P_total| = H * W.
        variance_mode: how ``variance`` was measured.
        num_segments: distinct labels of the pixel label image (SLIC's realised
            superpixel count, which can be far below its target ``n_segments``);
            ``num_regions`` counts those that own at least one patch.
    """

    grid: tuple[int, int]
    patch_region: np.ndarray
    region_labels: np.ndarray
    patch_count: np.ndarray
    pixel_count: np.ndarray
    variance: np.ndarray
    total_pixels: int
    variance_mode: str
    num_segments: int

    @property
    def num_regions(self) -> int:
        return int(self.region_labels.shape[0])


def majority_patch_labels(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Label of each patch = the label holding most of the patch's pixels.

    Args:
        labels: (H, W) non-negative int label image; H and W must be multiples of
            rows and cols.
        grid: (rows, cols).

    Returns:
        (rows*cols,) int64 row-major. Ties go to the lowest label (``argmax``
        returns the first maximum), so the mapping is deterministic.
    """
    rows, cols = (int(g) for g in grid)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    h, w = labels.shape
    if rows < 1 or cols < 1 or h % rows or w % cols:
        raise ValueError(
            f"image {h}x{w} does not split into a {rows}x{cols} patch grid; pass the image exactly as "
            f"the vision tower sees it (e.g. 336x336 for a 24x24 grid of 14-px patches)"
        )
    if labels.min() < 0:
        raise ValueError("labels must be non-negative (use start_label=0)")
    ph, pw = h // rows, w // cols
    n_labels = int(labels.max()) + 1
    # (rows, ph, cols, pw) -> (rows, cols, ph*pw): the pixels of each patch in one row.
    per_patch = (
        labels.reshape(rows, ph, cols, pw).transpose(0, 2, 1, 3).reshape(rows * cols, ph * pw)
    )
    # Count labels per patch with one bincount over (patch, label) pairs.
    flat = np.arange(rows * cols)[:, None] * n_labels + per_patch.astype(np.int64)
    counts = np.bincount(flat.ravel(), minlength=rows * cols * n_labels).reshape(
        rows * cols, n_labels
    )
    return counts.argmax(axis=1).astype(np.int64)


def region_variance(
    image: np.ndarray, labels: np.ndarray, n_labels: int, mode: VarianceMode
) -> np.ndarray:
    """Pixel variance of every label, on the 0..255 scale.

    Modes:
        ``channel_mean`` (default): mean over R, G, B of the per-channel variance
            (trace of the colour covariance / 3). It measures texture and edges
            and is blind to the hue of a flat region: a flat saturated red
            superpixel scores 0, as it should for "how much detail is here".
        ``pooled``: ``np.var`` over all 3*|P_k| channel values, the literal
            reading of Var(pixels); it also counts between-channel spread, so a
            flat saturated colour scores high.
        ``gray``: variance of BT.601 luma; ignores purely chromatic texture.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) labels in ``0..n_labels-1``.
        n_labels: number of labels.
        mode: one of the modes above.

    Returns:
        (n_labels,) float64; 0 for labels with no pixels.
    """
    if mode not in VARIANCE_MODES:
        raise ValueError(
            f"unknown variance mode {mode!r}; choose one of: {', '.join(VARIANCE_MODES)}"
        )
    flat_labels = labels.ravel()
    pixels = image.reshape(-1, 3).astype(np.float64)
    if mode == "gray":
        pixels = (pixels @ _LUMA)[:, None]
    n = np.bincount(flat_labels, minlength=n_labels).astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    channels = pixels.shape[1]
    # Per-label, per-channel first and second moments by bincount (no Python loop over pixels).
    s1 = np.stack(
        [np.bincount(flat_labels, pixels[:, c], n_labels) for c in range(channels)], axis=1
    )
    s2 = np.stack(
        [np.bincount(flat_labels, pixels[:, c] ** 2, n_labels) for c in range(channels)], axis=1
    )
    mean = s1 / safe_n[:, None]  # (L, C)
    if mode == "pooled":
        pooled_mean = mean.mean(axis=1)
        var = s2.sum(axis=1) / (channels * safe_n) - pooled_mean**2
    else:
        var = (s2 / safe_n[:, None] - mean**2).mean(axis=1)
    # E[x^2] - E[x]^2 can dip a hair below zero for flat regions.
    return np.where(n > 0, np.maximum(var, 0.0), 0.0)


def compute_regions(
    image: np.ndarray,
    grid: tuple[int, int],
    *,
    n_segments: int = 10,
    compactness: float = 5.0,
    sigma: float = 1.0,
    variance_mode: VarianceMode = "channel_mean",
    enforce_connectivity: bool = True,
) -> RegionMap:
    """SLIC superpixels of ``image`` mapped onto the patch grid, with density statistics.

    SLIC is scikit-image's (``start_label=0``, Lab conversion at its default);
    it is deterministic (grid-seeded centres, no random draws), so the same image
    always gives the same regions. ``n_segments`` is SLIC's target, not a count:
    with connectivity enforced (scikit-image's default) segments smaller than
    half the expected size are merged into a neighbour, and on the shapes val
    images N=10 leaves 4.7 superpixels on average (docs/protocol.md).

    Args:
        image: (H, W, 3) uint8 RGB as the vision tower sees it.
        grid: (rows, cols) patch grid; H/rows and W/cols must be integers.
        n_segments: SLIC's target number of superpixels (paper N=10).
        compactness: SLIC compactness (paper C=5).
        sigma: Gaussian pre-smoothing width in pixels (the paper names a sigma
            without a value; 1.0 is scikit-image's usual example value).
        variance_mode: colour space of the variance, see :func:`region_variance`.
        enforce_connectivity: scikit-image's switch (default True, its own
            default): merge small and disconnected segments into neighbours.

    Returns:
        A :class:`RegionMap`.
    """
    labels = slic_labels(image, n_segments=n_segments, compactness=compactness, sigma=sigma,
                         enforce_connectivity=enforce_connectivity)  # fmt: skip
    return regions_from_labels(image, labels, grid, variance_mode=variance_mode)


def slic_labels(
    image: np.ndarray,
    *,
    n_segments: int = 10,
    compactness: float = 5.0,
    sigma: float = 1.0,
    enforce_connectivity: bool = True,
) -> np.ndarray:
    """The (H, W) int SLIC label image :func:`compute_regions` maps onto the grid.

    Public so that drawings of the regions (boundaries, per-region heat maps)
    use the very labels the pruner used. Arguments as in :func:`compute_regions`.
    """
    _check_image(image)
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    return slic(
        image,
        n_segments=int(n_segments),
        compactness=float(compactness),
        sigma=float(sigma),
        start_label=0,
        channel_axis=-1,
        enforce_connectivity=bool(enforce_connectivity),
    )


def regions_from_labels(
    image: np.ndarray,
    labels: np.ndarray,
    grid: tuple[int, int],
    *,
    variance_mode: VarianceMode = "channel_mean",
) -> RegionMap:
    """Regions and density statistics from any pixel label image (SLIC's or a hand-made one).

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) non-negative int labels (need not be contiguous).
        grid: (rows, cols) patch grid.
        variance_mode: colour space of the variance, see :func:`region_variance`.

    Returns:
        A :class:`RegionMap`; labels that win no patch are dropped.
    """
    _check_image(image)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} must match the image's (H, W) {image.shape[:2]}")
    n_labels = int(labels.max()) + 1
    patch_labels = majority_patch_labels(labels, grid)
    # Keep only superpixels that won a patch; relabel them 0..R-1 in label order.
    region_labels, patch_region = np.unique(patch_labels, return_inverse=True)
    patch_count = np.bincount(patch_region, minlength=region_labels.shape[0])
    pixel_count_all = np.bincount(labels.ravel(), minlength=n_labels)
    variance_all = region_variance(image, labels, n_labels, variance_mode)
    return RegionMap(
        grid=(int(grid[0]), int(grid[1])),
        patch_region=patch_region.astype(np.int64).reshape(-1),
        region_labels=region_labels.astype(np.int64),
        patch_count=patch_count.astype(np.int64),
        pixel_count=pixel_count_all[region_labels].astype(np.int64),
        variance=variance_all[region_labels],
        total_pixels=int(labels.size),
        variance_mode=variance_mode,
        num_segments=int(np.unique(labels).size),
    )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}; "
            f"pass the vision tower's pixels before normalisation"
        )
