"""GCG recall: GT phrases matched by a prediction in both mask and text.

Per image (groundingLMM ``eval/gcg/evaluate.py``, ``find_best_matches``):
IoU matrix GT masks x pred masks and similarity matrix GT labels x pred
phrases; repeatedly take the highest-IoU pair (first in row-major order on
ties); if its IoU < 0.5 or its similarity < 0.5, stop for this image (no other
pair is tried); else count a hit and zero that row and column in both
matrices. The official loop runs inside ``try/except``: an error (the matrices
have different shapes, so a max-IoU index falls outside the similarity matrix)
adds no hit, yet the image's GT labels still count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageRecall", "match_image"]

IOU_THRESHOLD = 0.5
TEXT_SIM_THRESHOLD = 0.5


@dataclass(frozen=True)
class ImageRecall:
    """Outcome for one image: ``hits`` matched GT labels out of ``gt_labels``;
    ``failed`` when the official loop would have raised (``hits`` is then 0)."""

    hits: int
    gt_labels: int
    failed: bool


def match_image(*, ious: np.ndarray, text_sims: np.ndarray, n_gt_labels: int) -> ImageRecall:
    """Run the official matching loop on one image.

    Args:
        ious: ``(G_masks, P_masks)`` GT x pred IoU (NaN where both are empty).
        text_sims: ``(G_labels, P_phrases)`` GT label x pred phrase cosine
            similarity. Its shape may differ from ``ious`` (more phrases than
            masks, or fewer): that is the official failure mode.
        n_gt_labels: number of GT labels (what the image adds to the
            denominator, whatever happens).
    """
    ious = np.array(ious, dtype=np.float64, copy=True)
    sims = np.array(text_sims, dtype=np.float64, copy=True)
    hits = 0
    try:
        while ious.size > 0:
            idx = np.unravel_index(np.argmax(ious), ious.shape)
            if ious[idx] < IOU_THRESHOLD or sims[idx] < TEXT_SIM_THRESHOLD:
                break
            hits += 1
            ious[idx[0], :] = 0
            ious[:, idx[1]] = 0
            sims[idx[0], :] = 0
            sims[:, idx[1]] = 0
    except IndexError:
        return ImageRecall(hits=0, gt_labels=n_gt_labels, failed=True)
    return ImageRecall(hits=hits, gt_labels=n_gt_labels, failed=False)
