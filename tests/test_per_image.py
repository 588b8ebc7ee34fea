"""Per-image scores against hand-computed IoUs."""

from __future__ import annotations

import numpy as np

from altp.data.predictions import encode_mask
from eval.per_image import image_scores


def _box(y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((20, 20), bool)
    m[y0:y1, x0:x1] = True
    return encode_mask(m)


def test_image_scores_by_hand():
    gt = [_box(0, 10, 0, 10), _box(10, 20, 10, 20)]  # 100 px each
    # An exact copy of GT 0, and 50 px inside GT 1: IoU 50 / 100 = 0.5 (a hit: >= 0.5).
    pred = [_box(0, 10, 0, 10), _box(10, 20, 15, 20)]
    s = image_scores(pred_masks=pred, pred_phrases=["a", "b"], gt_masks=gt, gt_labels=["a", "b"])
    assert np.isclose(s.miou, (1.0 + 0.5) / 2)
    assert (s.mask_hits, s.n_gt, s.n_pred, s.recall_hits) == (2, 2, 2, None)
    s = image_scores(pred_masks=[_box(10, 20, 16, 20)], pred_phrases=["b"], gt_masks=gt, gt_labels=["a", "b"])
    assert np.isclose(s.miou, 0.4) and s.mask_hits == 0  # 40 / 100 < 0.5


def test_no_prediction_scores_zero():
    s = image_scores(pred_masks=[], pred_phrases=[], gt_masks=[_box(0, 5, 0, 5)], gt_labels=["a"])
    assert (s.miou, s.mask_hits, s.n_gt) == (0.0, 0, 1)
