"""Recall's matching loop against hand-computed cases of the official quirks."""

from __future__ import annotations

import numpy as np

from eval.recall import ImageRecall, match_image


def test_best_iou_pair_failing_the_text_test_stops_the_image() -> None:
    # GT0 x pred0 has the best IoU (0.9) but dissimilar text (0.2): the loop stops,
    # although GT1 x pred1 (IoU 0.8, sim 0.9) would pass. Neither is counted.
    ious = np.array([[0.9, 0.1], [0.1, 0.8]])
    sims = np.array([[0.2, 0.1], [0.1, 0.9]])
    assert match_image(ious=ious, text_sims=sims, n_gt_labels=2) == ImageRecall(
        hits=0, gt_labels=2, failed=False
    )


def test_hits_zero_rows_and_columns() -> None:
    # 0.9 (sim 0.8) is a hit; its row and column are zeroed, so 0.85 (same row) is
    # gone and the next max is 0.6 at (1, 1) with sim 0.7: a second hit.
    ious = np.array([[0.9, 0.85], [0.7, 0.6]])
    sims = np.array([[0.8, 0.9], [0.1, 0.7]])
    assert match_image(ious=ious, text_sims=sims, n_gt_labels=2).hits == 2


def test_iou_below_half_stops() -> None:
    assert (
        match_image(ious=np.array([[0.49]]), text_sims=np.array([[1.0]]), n_gt_labels=1).hits == 0
    )
    assert match_image(ious=np.array([[0.5]]), text_sims=np.array([[0.5]]), n_gt_labels=1).hits == 1


def test_more_phrases_than_masks_still_scores() -> None:
    # 1 GT x 1 pred mask but 2 pred phrases: sims is (1, 2), indices stay in range.
    res = match_image(ious=np.array([[0.7]]), text_sims=np.array([[0.9, 0.1]]), n_gt_labels=1)
    assert res == ImageRecall(hits=1, gt_labels=1, failed=False)


def test_fewer_phrases_than_masks_fails_when_the_index_falls_outside() -> None:
    # 2 pred masks, 1 phrase: the best IoU is with mask 1, sims has no column 1.
    res = match_image(ious=np.array([[0.2, 0.9]]), text_sims=np.array([[0.9]]), n_gt_labels=1)
    assert res == ImageRecall(hits=0, gt_labels=1, failed=True)


def test_failure_after_a_hit_discards_the_hit() -> None:
    # First pair (0, 0) is a hit; the next best (1, 1) is outside sims (1 phrase):
    # the official try/except drops the whole image, hits included.
    ious = np.array([[0.9, 0.0], [0.0, 0.8]])
    res = match_image(ious=ious, text_sims=np.array([[0.9], [0.9]]), n_gt_labels=2)
    assert res == ImageRecall(hits=0, gt_labels=2, failed=True)


def test_empty_prediction() -> None:
    res = match_image(ious=np.zeros((3, 0)), text_sims=np.zeros((3, 0)), n_gt_labels=3)
    assert res == ImageRecall(hits=0, gt_labels=3, failed=False)


def test_nan_iou_is_taken_as_a_hit_like_the_official_loop() -> None:
    # argmax returns the NaN; "NaN < 0.5" is False, so with similar text it counts.
    res = match_image(
        ious=np.array([[np.nan, 0.7]]), text_sims=np.array([[0.9, 0.9]]), n_gt_labels=1
    )
    assert res.hits == 1
