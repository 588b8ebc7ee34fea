"""AP50 and greedy mIoU against hand-computed cases of the official protocol."""

from __future__ import annotations

import numpy as np
import pytest

from altp.data.predictions import to_rle
from eval.masks import ap50, greedy_miou, iou_matrix
from tests.conftest import box, rle_of


def test_iou_matrix_equals_official_numpy_ratio() -> None:
    pred = [box(6, 6, 0, 3, 0, 3), box(6, 6, 2, 6, 2, 6), np.zeros((6, 6), bool)]
    gt = [box(6, 6, 0, 3, 0, 2), box(6, 6, 3, 6, 3, 6)]
    got = iou_matrix([to_rle(rle_of(m)) for m in pred], [to_rle(rle_of(m)) for m in gt])
    # Official compute_iou: sum(and) / sum(or) on decoded masks.
    want = np.array([[(p & g).sum() / (p | g).sum() for g in gt] for p in pred])
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == 6 / 9 and got[1, 1] == 9 / 16 and got[2, 0] == 0.0


def test_both_empty_gives_nan_like_the_official_zero_by_zero() -> None:
    empty = to_rle(rle_of(np.zeros((3, 3), bool)))
    assert np.isnan(iou_matrix([empty], [empty])[0, 0])


def test_iou_matrix_refuses_mixed_sizes() -> None:
    with pytest.raises(ValueError, match="different sizes"):
        iou_matrix([to_rle(rle_of(np.ones((2, 2))))], [to_rle(rle_of(np.ones((3, 2))))])


def test_greedy_miou_is_greedy_not_optimal() -> None:
    # Global max 0.9 first, then only 0.1 is left: (0.9 + 0.1) / 2 = 0.5,
    # although the optimal assignment 0.8 + 0.85 would give 0.825.
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_miou(iou) == pytest.approx(0.5, abs=1e-15)


def test_greedy_miou_unmatched_cost_nothing_and_zero_stops() -> None:
    # 3 preds x 1 GT: one pair 0.6, extra preds are ignored.
    assert greedy_miou(np.array([[0.6], [0.2], [0.0]])) == 0.6
    assert greedy_miou(np.zeros((2, 2))) == 0.0
    assert greedy_miou(np.zeros((0, 3))) == 0.0
    # Ties: first in row-major order wins, then the 0.0 leftover stops the loop.
    assert greedy_miou(np.array([[0.5, 0.5], [0.5, 0.0]])) == 0.5


def test_greedy_miou_nan_anywhere_stops_the_loop() -> None:
    # np.max is NaN -> "NaN > 0" is False -> nothing recorded, image scores 0.
    assert greedy_miou(np.array([[0.9, np.nan]])) == 0.0


def _gt(images: dict[str, list[np.ndarray]]) -> dict:
    imgs, anns = [], []
    for image_id, masks in images.items():
        h, w = masks[0].shape
        imgs.append({"id": image_id, "height": h, "width": w})
        for m in masks:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle_of(m),
                    "area": float(m.sum()),
                    "iscrowd": 0,
                }
            )
    return {"images": imgs, "annotations": anns, "categories": [{"id": 1}]}


TP = box(8, 8, 0, 4, 0, 4)  # the GT mask
FP = box(8, 8, 5, 8, 5, 8)  # disjoint


def test_ap50_mask_order_within_an_image_matters() -> None:
    gt = _gt({"a": [TP]})
    # [TP, FP]: precision 1 up to recall 1 -> AP 1 (COCOeval divides by tp + fp + eps).
    assert ap50(
        mask_gt=gt, image_ids=["a"], pred_masks={"a": [rle_of(TP), rle_of(FP)]}
    ) == pytest.approx(1.0, abs=1e-12)
    # [FP, TP]: recall 1 is reached at precision 1/2, and the envelope is 1/2 everywhere.
    assert ap50(
        mask_gt=_gt({"a": [TP]}), image_ids=["a"], pred_masks={"a": [rle_of(FP), rle_of(TP)]}
    ) == pytest.approx(0.5, abs=1e-15)


def test_ap50_ties_across_images_follow_sorted_ids_not_caption_order() -> None:
    # Two GT objects; image "a" holds the TP, image "b" only an FP. COCOeval
    # ranks tied scores by sorted image id: TP (recall 1/2 at precision 1) then
    # FP. Recall thresholds 0.00..0.50 (51 of 101) get precision 1, the rest 0.
    gt = _gt({"b": [TP], "a": [TP]})
    got = ap50(mask_gt=gt, image_ids=["b", "a"], pred_masks={"b": [rle_of(FP)], "a": [rle_of(TP)]})
    assert got == pytest.approx(51 / 101, abs=1e-12)
    # Had the FP come first, every threshold up to 1/2 would score 1/2.
    assert got != pytest.approx(0.5 * 51 / 101)


def test_ap50_without_any_prediction_is_zero() -> None:
    assert ap50(mask_gt=_gt({"a": [TP]}), image_ids=["a"], pred_masks={"a": []}) == 0.0


def test_iou_matrix_matches_decoded_ratio_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(1, 30, size=2))
        pred = [rng.random((h, w)) < rng.random() for _ in range(int(rng.integers(1, 4)))]
        gt = [rng.random((h, w)) < rng.random() for _ in range(int(rng.integers(1, 4)))]
        got = iou_matrix([to_rle(rle_of(m)) for m in pred], [to_rle(rle_of(m)) for m in gt])
        with np.errstate(invalid="ignore"):
            want = np.array([[(p & g).sum() / (p | g).sum() for g in gt] for p in pred])
        np.testing.assert_array_equal(got, want)  # NaN == NaN under assert_array_equal
