"""Superpixels on the patch grid: majority mapping, dropped regions, variance oracles, SLIC."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import slic

from altp.methods.superpixels import (
    compute_regions,
    majority_patch_labels,
    region_variance,
    regions_from_labels,
)


def _image(seed: int = 0, size: int = 56) -> np.ndarray:
    """Smooth colour blobs plus a noisy square: SLIC finds several regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([255 * xx, 255 * yy, 128 + 100 * np.sin(6 * xx * yy)], axis=-1)
    q = size // 4
    img[q : 2 * q, q : 3 * q] = rng.integers(0, 256, size=(q, 2 * q, 3))
    return img.clip(0, 255).astype(np.uint8)


def test_majority_mapping_by_hand() -> None:
    # 4x4 pixels, 2x2 grid of 2x2-pixel patches.
    labels = np.array(
        [
            [0, 0, 1, 1],
            [0, 1, 2, 2],  # patch (0,1): two 1s and two 2s -> tie -> lowest label 1
            [3, 3, 2, 3],
            [3, 0, 2, 2],  # patch (1,1): three 2s
        ]
    )
    assert majority_patch_labels(labels, (2, 2)).tolist() == [0, 1, 3, 2]


def test_majority_mapping_non_square_patches() -> None:
    labels = np.zeros((4, 6), dtype=np.int64)
    labels[:, 3:] = 5
    labels[0, 0] = 5  # one stray pixel does not win its 2x3 patch
    assert majority_patch_labels(labels, (2, 2)).tolist() == [0, 5, 0, 5]


def test_region_without_patch_gets_dropped_and_relabelled() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    labels = np.array([[7, 7, 9, 9], [7, 3, 9, 9], [7, 7, 9, 9], [7, 7, 9, 9]])
    regions = regions_from_labels(img, labels, (2, 2))
    # Label 3 owns one pixel and no patch: only 7 and 9 remain, as regions 0 and 1.
    assert regions.region_labels.tolist() == [7, 9]
    assert regions.patch_region.tolist() == [0, 1, 0, 1]
    assert regions.patch_count.tolist() == [2, 2]
    assert regions.pixel_count.tolist() == [7, 8]  # the superpixel's own pixels
    assert regions.total_pixels == 16


def test_variance_modes_match_direct_computation() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 4, size=(8, 8))
    luma = np.array([0.299, 0.587, 0.114])
    got = {m: region_variance(img, labels, 5, m) for m in ("channel_mean", "pooled", "gray")}
    for k in range(4):
        px = img[labels == k].astype(np.float64)  # (n, 3)
        np.testing.assert_allclose(
            got["channel_mean"][k], np.mean([np.var(px[:, c]) for c in range(3)])
        )
        np.testing.assert_allclose(got["pooled"][k], np.var(px))
        np.testing.assert_allclose(got["gray"][k], np.var(px @ luma))
    assert got["channel_mean"][4] == 0.0  # label with no pixels


def test_flat_saturated_colour_has_no_texture_variance() -> None:
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[..., 0] = 255
    labels = np.zeros((4, 4), dtype=np.int64)
    assert region_variance(img, labels, 1, "channel_mean")[0] == 0.0
    assert region_variance(img, labels, 1, "pooled")[0] > 0.0  # why it is not the default


def test_compute_regions_matches_direct_slic() -> None:
    img = _image()
    regions = compute_regions(img, (4, 4), n_segments=6, compactness=5.0, sigma=1.0)
    labels = slic(img, n_segments=6, compactness=5.0, sigma=1.0, start_label=0, channel_axis=-1)
    assert regions.num_regions >= 2
    # Every patch in a region, every region owns a patch, counts add up.
    assert regions.patch_region.shape == (16,)
    assert set(regions.patch_region.tolist()) == set(range(regions.num_regions))
    assert int(regions.patch_count.sum()) == 16
    for k, lab in enumerate(regions.region_labels):
        px = img[labels == lab].astype(np.float64)
        assert regions.pixel_count[k] == len(px)
        np.testing.assert_allclose(
            regions.variance[k], np.mean([np.var(px[:, c]) for c in range(3)])
        )
    # Each patch's region is the most frequent SLIC label among its 14x14 pixels.
    for i, k in enumerate(regions.patch_region):
        r, c = divmod(i, 4)
        patch = labels[14 * r : 14 * r + 14, 14 * c : 14 * c + 14]
        counts = np.bincount(patch.ravel())
        assert regions.region_labels[k] == int(np.flatnonzero(counts == counts.max())[0])


def test_compute_regions_is_deterministic() -> None:
    img = _image(seed=1)
    a = compute_regions(img, (4, 4), n_segments=8)
    b = compute_regions(img.copy(), (4, 4), n_segments=8)
    for field in ("patch_region", "region_labels", "patch_count", "pixel_count", "variance"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_bad_inputs_raise_with_advice() -> None:
    with pytest.raises(ValueError, match="patch grid"):
        compute_regions(np.zeros((55, 56, 3), dtype=np.uint8), (4, 4))
    with pytest.raises(ValueError, match="uint8"):
        compute_regions(np.zeros((56, 56, 3), dtype=np.float32), (4, 4))
    with pytest.raises(ValueError, match="variance mode"):
        region_variance(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int64), 1, "lab")  # type: ignore[arg-type]
