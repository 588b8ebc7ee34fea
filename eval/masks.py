"""Mask metrics of the GCG protocol: AP50 (COCOeval) and greedy mIoU.

Both follow groundingLMM ``eval/gcg/evaluate.py`` exactly, quirks included,
but decode nothing: IoU matrices come from ``pycocotools.mask.iou`` on the RLEs,
which gives the same doubles as the official ``sum(and) / sum(or)`` on decoded
masks (both divide the same two integer counts).

Index conventions: ``pred`` lists are in ``pred_masks`` order, ``gt`` lists in
mask-GT file order; an IoU matrix ``iou[i, j]`` is pred ``i`` x GT ``j`` unless
named otherwise.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from altp.data.predictions import Rle

__all__ = ["iou_matrix", "greedy_miou", "ap50"]


def iou_matrix(pred: Sequence[Rle], gt: Sequence[Rle]) -> np.ndarray:
    """IoU of every predicted mask with every GT mask.

    Args:
        pred: ``P`` RLEs (from :func:`altp.data.predictions.to_rle`).
        gt: ``G`` RLEs of the same image size.

    Returns:
        ``(P, G)`` float64. Where both masks are empty the official
        ``0 / 0`` gives NaN, and so does this (NaN steers the official greedy
        loops, see :func:`greedy_miou`); ``pycocotools`` alone would say 0.
    """
    out = np.zeros((len(pred), len(gt)), dtype=np.float64)
    if not pred or not gt:
        return out
    sizes = {tuple(r["size"]) for r in (*pred, *gt)}
    if len(sizes) != 1:
        raise ValueError(
            f"masks of one image have different sizes {sorted(sizes)}; predictions must be at the image's original (H, W)"
        )
    out[:] = mask_utils.iou(list(pred), list(gt), [0] * len(gt))
    # area() takes a list of RLEs too (one area each); the stub lists only one RLE
    empty_pred = mask_utils.area(list(pred)) == 0  # pyright: ignore[reportArgumentType]
    empty_gt = mask_utils.area(list(gt)) == 0  # pyright: ignore[reportArgumentType]
    out[np.outer(empty_pred, empty_gt)] = np.nan
    return out


def greedy_miou(iou: np.ndarray) -> float:
    """One image's mIoU by the official greedy one-to-one pairing.

    Take the global maximum (first in row-major order on ties), record it,
    delete its row and column, repeat while the maximum is > 0; return the
    mean of the recorded IoUs, 0.0 if none. A NaN anywhere makes ``max`` NaN
    and ends the loop, as in the official code.

    Args:
        iou: ``(P, G)`` pred x GT IoU matrix (not modified).
    """
    m = np.array(iou, dtype=np.float64, copy=True)
    paired: list[float] = []
    while m.size > 0 and np.max(m) > 0:
        r, c = np.unravel_index(np.argmax(m, axis=None), m.shape)
        paired.append(float(m[r, c]))
        m = np.delete(np.delete(m, r, axis=0), c, axis=1)
    return float(np.mean(paired)) if paired else 0.0


def ap50(
    *,
    mask_gt: dict[str, Any],
    image_ids: Sequence[str],
    pred_masks: dict[str, list[Rle]],
) -> float:
    """AP at IoU 0.5 exactly as the official ``COCOeval(...).stats[1]``.

    Args:
        mask_gt: the mask-GT dict (``images``, ``annotations``,
            ``categories``), already restricted to the evaluated images.
        image_ids: evaluated images in caption-file order: the order the
            official script inserts detections, which (all scores being 1.0)
            decides COCOeval's stable sorts together with the sorted image ids.
        pred_masks: ``image_id -> [RLE, ...]`` in ``pred_masks`` order.

    Returns:
        ``stats[1]`` as a fraction (-1.0 where COCOeval has nothing to score).

    COCOeval is run with only the parameters ``stats[1]`` reads (IoU 0.5,
    area "all", maxDets 100). Every image, threshold and area range is
    evaluated independently inside COCOeval, so dropping the others changes
    no number; it removes ~40x of the matching work.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # COCO/COCOeval print progress
        gt = COCO()
        gt.dataset = mask_gt  # pyright: ignore[reportAttributeAccessIssue]  (the stub's private TypedDict; this is the GT JSON)
        gt.createIndex()
        detections = [
            {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": 1.0}
            for image_id in image_ids
            for rle in pred_masks.get(image_id, [])
        ]
        if detections:
            dt = gt.loadRes(detections)  # pyright: ignore[reportArgumentType]  (loadRes takes a list of results too)
        else:  # loadRes crashes on an empty list; an empty result set is what it would mean
            dt = COCO()
            dt.dataset = {
                "images": list(mask_gt["images"]),
                "categories": list(mask_gt["categories"]),
                "annotations": [],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "segm")
        ev.params.catIds = [1]
        ev.params.iouThrs = np.array([0.5])
        ev.params.areaRng = [[0**2, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    s = ev.eval["precision"][0, :, :, 0, 0]  # (R recall thresholds, K=1 category)
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0
