"""altp.data.rle against an independent oracle: run lengths counted from the pixels themselves."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from altp.data.rle import compressed_runs, rle_problem


def _runs_from_pixels(mask: np.ndarray) -> list[int]:
    """COCO's run lengths: column-major, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), density=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_runs_of_pycocotools_encodings_match_the_pixels(h, w, density, seed) -> None:
    mask = np.random.default_rng(seed).random((h, w)) < density
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert compressed_runs(rle["counts"]).tolist() == _runs_from_pixels(mask)
    assert rle_problem({"size": [h, w], "counts": rle["counts"].decode()}) is None


def test_long_runs_need_several_groups() -> None:
    mask = np.zeros((1000, 1000), bool)
    mask[100:900, 300:700] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert compressed_runs(rle["counts"]).tolist() == _runs_from_pixels(mask)


@pytest.mark.parametrize(
    ("rle", "needle"),
    [
        ({"size": [10, 10], "counts": "zzzz"}, "outside '0'..'o'"),
        ({"size": [10, 10], "counts": "52"}, "runs cover 7 pixels"),
        ({"size": [10, 10], "counts": "0T"}, "ends in the middle"),
        ({"size": [10, 10], "counts": [50, -10, 60]}, "negative run"),
        ({"size": [10, 10], "counts": [50, 40]}, "runs cover 90 pixels"),
        ({"size": [10], "counts": "0T3"}, "size must be [height, width]"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], "a polygon"),
        ({"size": [10, 10], "counts": 5}, "counts must be a string or a list"),
    ],
)
def test_what_does_not_decode_is_named(rle, needle) -> None:
    problem = rle_problem(rle)
    assert problem is not None and needle in problem


def test_uncompressed_counts_that_cover_the_image_are_fine() -> None:
    assert rle_problem({"size": [10, 10], "counts": [50, 40, 10]}) is None
