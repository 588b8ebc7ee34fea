"""Realistic, degraded GLaMM-format predictions for a GCG split (demos, benchmarks, tests).

Starting from the ground truth, each object may be missed, its mask shifted,
eroded or dilated, its phrase paraphrased or replaced; spurious objects are
added and captions reworded. ``quality`` in [0, 1] scales every degradation.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage import draw

from altp.data.grandf import caption_gt_path, mask_gt_path
from altp.data.predictions import Rle, encode_mask, write_prediction

__all__ = ["write_noisy_predictions"]

_PARAPHRASE = {
    "circle": "round shape", "square": "box", "triangle": "triangular shape",
    "ellipse": "oval", "star": "star shape", "diamond": "rhombus", "rectangle": "block",
    "small": "little", "large": "big",
}  # fmt: skip
_WRONG_WORDS = ["lamp", "tree", "person", "car", "window", "cup", "dog", "sign"]


def _paraphrase(label: str, rng: np.random.Generator) -> str:
    words = [_PARAPHRASE.get(w, w) if rng.random() < 0.7 else w for w in label.split()]
    return " ".join(words)


def _drop_words(caption: str, phrases: list[str], rng: np.random.Generator, p: float) -> str:
    """Drop each caption word outside the grounded phrases with probability p (one draw per word)."""
    pieces, pos = [], 0
    for phrase in phrases:  # phrases occur in order; keep them whole so they stay grounded
        hit = caption.find(phrase, pos)
        if hit < 0:
            continue
        pieces += [(caption[pos:hit], True), (phrase, False)]
        pos = hit + len(phrase)
    pieces.append((caption[pos:], True))
    out = []
    for text, droppable in pieces:
        if droppable:
            words = text.split(" ")
            draws = rng.random(len(words))
            text = " ".join(w for w, u in zip(words, draws, strict=True) if not (w and u < p))
        out.append(text)
    return " ".join("".join(out).split())


def _perturb(mask: np.ndarray, rng: np.random.Generator, badness: float) -> np.ndarray:
    """Shift, grow or shrink a (H, W) bool mask by amounts that scale with badness in [0, 1]."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return mask
    extent = max(int(np.ptp(ys)), int(np.ptp(xs)), 1)
    dy, dx = (rng.normal(0.0, 0.25 * badness * extent, size=2)).round().astype(int)
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys2, xs2 = ys + dy, xs + dx
    keep = (ys2 >= 0) & (ys2 < h) & (xs2 >= 0) & (xs2 < w)
    out[ys2[keep], xs2[keep]] = True
    radius = int(round(abs(rng.normal(0.0, 0.08 * badness * extent))))
    if radius > 0:
        op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
        out = op(out, iterations=radius)
    return out


def write_noisy_predictions(
    gt_dir: Path, split: str, pred_dir: Path, *, seed: int, quality: float
) -> None:
    """Write GLaMM-format predictions (one ``{image_id}.json`` per image) degraded from the GT.

    Each file is ``{"image_id", "caption", "phrases", "pred_masks"}`` in that key
    order, masks as compressed RLE with str counts, the i-th phrase paired with
    the i-th mask. ``quality`` in [0, 1] sets how good they are: 1 copies the GT;
    lower values miss more objects, add spurious ones, shift/erode/dilate masks
    more, and paraphrase or replace more phrases. The random draws depend only on
    (seed, image id), so lowering the quality degrades the same predictions
    monotonically.
    """
    if not 0.0 <= quality <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {quality}")
    cap = json.loads(caption_gt_path(gt_dir, split).read_text(encoding="utf-8"))
    gt = json.loads(mask_gt_path(gt_dir, split).read_text(encoding="utf-8"))
    by_image: dict[str, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sizes = {img["id"]: (img["height"], img["width"]) for img in cap["images"]}
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    bad = 1.0 - quality
    for ann in cap["annotations"]:
        image_id = ann["image_id"]
        rng = np.random.default_rng([seed, zlib.crc32(image_id.encode("ascii"))])
        h, w = sizes[image_id]
        caption: str = ann["caption"]
        phrases: list[str] = []
        pred_masks: list[Rle] = []
        for label, m_ann in zip(ann["labels"], by_image.get(image_id, []), strict=True):
            u_miss, u_text = rng.random(), rng.random()
            mask = _perturb(mask_utils.decode(m_ann["segmentation"]).astype(bool), rng, bad)
            if u_miss < 0.5 * bad or not mask.any():
                continue  # missed object: its words stay in the caption, like a model that forgets the mask
            if u_text < 0.15 * bad:
                phrase = f"a {_WRONG_WORDS[int(rng.integers(len(_WRONG_WORDS)))]}"
            elif u_text < 0.6 * bad:
                phrase = _paraphrase(label, rng)
            else:
                phrase = label
            caption = caption.replace(label, phrase, 1)
            phrases.append(phrase)
            pred_masks.append(encode_mask(mask))
        if rng.random() < 0.5 * bad:
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = (
                max(2, int(rng.integers(h // 20, h // 5))),
                max(2, int(rng.integers(w // 20, w // 5))),
            )
            spurious = np.zeros((h, w), dtype=bool)
            spurious[draw.ellipse(cy, cx, ry, rx, shape=(h, w))] = True
            phrase = f"a {_WRONG_WORDS[int(rng.integers(len(_WRONG_WORDS)))]}"
            caption = f"{caption.rstrip('.')} and {phrase}."
            phrases.append(phrase)
            pred_masks.append(encode_mask(spurious))
        if rng.random() < 0.5 * bad:
            caption = caption.replace("The image shows", "In this picture we see", 1)
        caption = _drop_words(caption, phrases, rng, 0.35 * bad)
        write_prediction(
            pred_dir, image_id=image_id, caption=caption, phrases=phrases, masks=pred_masks
        )
