"""Per-image GCG scores, for browsing predictions one image at a time.

Each number is the official protocol's own per-image quantity, not a new metric:

* ``miou``: the image's greedy mIoU (:func:`eval.masks.greedy_miou`); the
  reported mIoU is exactly the mean of these over the split.
* ``mask_hits`` / ``n_gt``: GT masks paired at IoU >= 0.5 by that same greedy
  one-to-one pairing (a mask-only count; no text involved).
* ``recall_hits`` / ``n_gt_labels``: the official recall loop on this image
  (:func:`eval.recall.match_image`, IoU >= 0.5 and text similarity >= 0.5 with
  the given text encoder); the reported recall is the sum of hits over the sum
  of labels. ``None`` when no text encoder is given.

AP50, METEOR and CIDEr have no per-image counterpart in the protocol (AP50
ranks detections across images, METEOR is one corpus score, CIDEr's document
frequencies come from the whole evaluated set), so none is computed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from altp.data.predictions import to_rle
from eval.masks import greedy_miou, iou_matrix
from eval.recall import match_image

__all__ = ["ImageScores", "image_scores"]

_HIT_IOU = 0.5


@dataclass(frozen=True)
class ImageScores:
    """One image's scores (see the module docstring for what each means)."""

    miou: float
    mask_hits: int
    n_gt: int
    n_pred: int
    recall_hits: int | None
    n_gt_labels: int


def _greedy_hits(iou: np.ndarray) -> int:
    """Pairs of :func:`greedy_miou`'s pairing with IoU >= 0.5 (taken first: the loop takes maxima)."""
    m = np.array(iou, dtype=np.float64, copy=True)
    hits = 0
    while m.size > 0 and np.max(m) >= _HIT_IOU:
        r, c = np.unravel_index(np.argmax(m, axis=None), m.shape)
        hits += 1
        m = np.delete(np.delete(m, r, axis=0), c, axis=1)
    return hits


def image_scores(
    *,
    pred_masks: Sequence[Mapping[str, Any]],
    pred_phrases: Sequence[str],
    gt_masks: Sequence[Mapping[str, Any]],
    gt_labels: Sequence[str],
    encoder: Any | None = None,
) -> ImageScores:
    """Score one image's prediction against its GT.

    Args:
        pred_masks: the prediction's ``pred_masks`` (RLE, any counts form), in order.
        pred_phrases: the prediction's ``phrases``.
        gt_masks: the image's GT segmentations in mask-file order.
        gt_labels: the image's GT labels (the i-th pairs with the i-th mask).
        encoder: an :class:`eval.text_encoders.TextEncoder` for recall, or None to skip it.
    """
    pred = [to_rle(m) for m in pred_masks]
    gt = [to_rle(m) for m in gt_masks]
    iou = iou_matrix(pred, gt)  # (P, G)
    recall_hits = None
    if encoder is not None:
        from eval.text_encoders import cosine_matrix

        emb = encoder.embed([*gt_labels, *pred_phrases])
        dim = int(encoder.model.config.hidden_size)

        def stack(texts: Sequence[str]) -> np.ndarray:
            return np.stack([emb[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)

        sims = cosine_matrix(stack(gt_labels), stack(pred_phrases))
        recall_hits = match_image(ious=iou.T, text_sims=sims, n_gt_labels=len(gt_labels)).hits
    return ImageScores(
        miou=greedy_miou(iou),
        mask_hits=_greedy_hits(iou),
        n_gt=len(gt),
        n_pred=len(pred),
        recall_hits=recall_hits,
        n_gt_labels=len(gt_labels),
    )
