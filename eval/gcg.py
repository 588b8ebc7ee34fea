"""GCG evaluator: GLaMM's official numbers, in seconds, offline.

Usage::

    python -m eval.gcg --pred-dir runs/x/predictions --gt-dir data/GranDf/annotations/val_test \\
        --split val [--text-encoder bert-base-uncased|minilm|PATH] [--json metrics.json]

Protocol: groundingLMM ``eval/gcg/evaluate.py`` (quirk by quirk in ``docs/protocol.md``)
with every quirk kept: AP50 = COCOeval segm ``stats[1]`` with score 1.0 in the
official insertion order, greedy mIoU, recall's stop-at-first-rejection and
per-image failure rule, mean-pooled BERT embeddings with CLS/SEP, corpus
METEOR and set-dependent CIDEr without SPICE. What differs is only the work:
annotations are indexed by image, masks are never decoded (RLE IoU), each
distinct phrase is embedded once, and one Java process serves METEOR.

A missing prediction file scores as an empty prediction (empty caption, no
phrases, no masks) and is listed under ``missing_predictions``; the official
script crashes there instead. A prediction folder that does not exist or holds
no prediction of the split, a file whose ``image_id`` names another image, and a
mask whose RLE does not decode are errors (exit 2), never scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pycocoevalcap.meteor.meteor import Meteor

from altp.data.grandf import GrandfAnnotations, GrandfFormatError
from altp.data.predictions import PredictionFormatError, prediction_path, read_prediction, to_rle
from eval.captions import cider_score, meteor_score, tokenize_pairs
from eval.masks import ap50, greedy_miou, iou_matrix
from eval.recall import match_image
from eval.text_encoders import (
    DEFAULT_ENCODER,
    TextEncoder,
    TextEncoderUnavailable,
    cosine_matrix,
    resolve_text_encoder,
)

__all__ = ["evaluate", "format_table", "main"]

METRICS: tuple[str, ...] = ("meteor", "cider", "ap50", "miou", "recall")


def _load_predictions(
    pred_dir: Path, image_ids: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    if not pred_dir.is_dir():
        raise PredictionFormatError(f"prediction folder {pred_dir} does not exist; check --pred-dir")
    preds: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for image_id in image_ids:
        path = prediction_path(pred_dir, image_id)
        if not path.is_file():
            missing.append(image_id)
            preds[image_id] = {"image_id": image_id, "caption": "", "phrases": [], "pred_masks": []}
            continue
        preds[image_id] = read_prediction(path)
        named = preds[image_id].get("image_id")
        if named is not None and str(named) != image_id:
            raise PredictionFormatError(
                f"{path}: its image_id is {named!r} but the file is named for {image_id!r}; "
                "rename the file or fix its image_id"
            )
    if len(missing) == len(image_ids):
        raise PredictionFormatError(
            f"{pred_dir} holds no prediction for any of the {len(image_ids)} images of the split "
            f"(e.g. {image_ids[0]}.json); check --pred-dir and --split"
        )
    return preds, missing


def evaluate(
    *,
    pred_dir: Path,
    gt_dir: Path,
    split: str,
    text_encoder: str | TextEncoder = DEFAULT_ENCODER,
    image_ids: Sequence[str] | None = None,
    timings: dict[str, float] | None = None,
    meteor: Meteor | None = None,
) -> dict[str, Any]:
    """Score a folder of per-image predictions against a GranD-f split.

    Args:
        pred_dir: folder of ``<image_id>.json`` files (:mod:`altp.data.predictions`).
        gt_dir: folder holding ``{split}_gcg_coco_{caption,mask}_gt.json``.
        split: ``"val"`` or ``"test"``.
        text_encoder: ``bert-base-uncased`` (official), ``minilm``, a local
            folder, or a loaded :class:`TextEncoder` to reuse.
        image_ids: score only these images (kept in caption-GT order); the
            set-dependent metrics (AP50's ranking, CIDEr's document
            frequencies) then see exactly this set, as if the GT held only it.
        timings: if given, filled with wall seconds per stage (``meteor``:
            tokenizer + METEOR in a worker thread, from its start, overlapping
            the mask metrics; ``meteor_wait``: what the main thread still
            waited for it at the end).
        meteor: a running pycocoevalcap ``Meteor`` to reuse across calls
            (tests, sweeps); one is started and stopped otherwise.

    Returns:
        ``meteor, cider, ap50, miou, recall`` as fractions, plus ``n_images``,
        ``text_encoder``, ``recall_hits``, ``recall_gt_phrases``,
        ``recall_failed_images`` (ids), ``missing_predictions`` (ids).
    """
    clock = timings if timings is not None else {}
    t0 = time.perf_counter()
    # METEOR's Java start (seconds: it loads paraphrase tables) overlaps all other work.
    if not isinstance(text_encoder, TextEncoder):
        resolve_text_encoder(text_encoder)  # a missing encoder fails before any Java starts
    own_meteor = meteor is None
    scorer = Meteor() if own_meteor else meteor
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return _evaluate(
                pred_dir=Path(pred_dir),
                gt_dir=Path(gt_dir),
                split=split,
                text_encoder=text_encoder,
                image_ids=image_ids,
                clock=clock,
                meteor=scorer,
                pool=pool,
                t0=t0,
            )
    finally:
        if own_meteor:
            del scorer


def _evaluate(
    *,
    pred_dir: Path,
    gt_dir: Path,
    split: str,
    text_encoder: str | TextEncoder,
    image_ids: Sequence[str] | None,
    clock: dict[str, float],
    meteor: Meteor,
    pool: ThreadPoolExecutor,
    t0: float,
) -> dict[str, Any]:
    gt = GrandfAnnotations(gt_dir=gt_dir, split=split)
    ids = list(gt.image_ids)
    if image_ids is not None:
        wanted = {str(i) for i in image_ids}
        unknown = sorted(wanted - set(ids))
        if unknown:
            raise GrandfFormatError(f"image_ids not in the {split} split: {unknown[:5]}")
        ids = [i for i in ids if i in wanted]
    if not ids:
        raise ValueError("nothing to evaluate: the split (or image_ids) is empty")
    preds, missing = _load_predictions(pred_dir, ids)
    pred_rles = {i: [to_rle(m) for m in preds[i]["pred_masks"]] for i in ids}
    gt_rles = {i: [to_rle(a["segmentation"]) for a in gt.masks[i]] for i in ids}
    for i in ids:
        size = [int(gt.images[i]["height"]), int(gt.images[i]["width"])]
        bad = [list(r["size"]) for r in pred_rles[i] if [int(s) for s in r["size"]] != size]
        if bad:
            raise PredictionFormatError(
                f"{prediction_path(pred_dir, i)}: mask size {bad[0]} != image size {size}; resize masks to the original image"
            )
    clock["load"] = time.perf_counter() - t0

    # Java tokenizes and scores METEOR in its own processes (driven from a worker
    # thread) while this thread scores masks; CIDEr is pure Python and runs here
    # once the tokens are back, so it overlaps METEOR instead of following it.
    t_captions = time.perf_counter()
    tokens_future = pool.submit(
        tokenize_pairs,
        image_ids=ids,
        references={i: str(gt.captions[i]["caption"]) for i in ids},
        hypotheses={i: preds[i]["caption"] for i in ids},
    )

    def meteor_job() -> float:
        value = meteor_score(*tokens_future.result(), meteor=meteor)
        clock["meteor"] = time.perf_counter() - t_captions
        return value

    meteor_future = pool.submit(meteor_job)

    t = time.perf_counter()
    encoder = (
        text_encoder if isinstance(text_encoder, TextEncoder) else TextEncoder(name=text_encoder)
    )
    clock["encoder"] = time.perf_counter() - t

    t = time.perf_counter()
    id_set = set(ids)
    mask_gt = {
        "images": [img for img in gt.mask_data["images"] if str(img["id"]) in id_set],
        "annotations": [a for i in ids for a in gt.masks[i]],
        "categories": gt.mask_data["categories"],
    }
    ap = ap50(mask_gt=mask_gt, image_ids=ids, pred_masks={i: preds[i]["pred_masks"] for i in ids})
    clock["ap50"] = time.perf_counter() - t

    t = time.perf_counter()
    ious = {i: iou_matrix(pred_rles[i], gt_rles[i]) for i in ids}  # (P, G) per image
    miou = float(np.mean([greedy_miou(ious[i]) for i in ids]))
    clock["miou"] = time.perf_counter() - t

    t = time.perf_counter()
    labels = {i: list(gt.captions[i]["labels"]) for i in ids}
    phrases = {i: list(preds[i]["phrases"]) for i in ids}
    emb = encoder.embed([p for i in ids for p in (*labels[i], *phrases[i])])
    dim = int(encoder.model.config.hidden_size)
    hits, n_labels, failed = 0, 0, []
    for i in ids:
        a = np.stack([emb[x] for x in labels[i]]) if labels[i] else np.zeros((0, dim), np.float32)
        b = np.stack([emb[x] for x in phrases[i]]) if phrases[i] else np.zeros((0, dim), np.float32)
        outcome = match_image(
            ious=ious[i].T, text_sims=cosine_matrix(a, b), n_gt_labels=len(labels[i])
        )
        hits += outcome.hits
        n_labels += outcome.gt_labels
        if outcome.failed:
            failed.append(i)
    recall = hits / n_labels if n_labels > 0 else 0.0
    clock["recall"] = time.perf_counter() - t

    t = time.perf_counter()
    cider = cider_score(*tokens_future.result())
    clock["cider"] = time.perf_counter() - t
    t = time.perf_counter()
    meteor_value = meteor_future.result()
    clock["meteor_wait"] = time.perf_counter() - t
    clock["total"] = time.perf_counter() - t0
    return {
        "meteor": meteor_value,
        "cider": cider,
        "ap50": ap,
        "miou": miou,
        "recall": recall,
        "n_images": len(ids),
        "text_encoder": encoder.name,
        "recall_hits": hits,
        "recall_gt_phrases": n_labels,
        "recall_failed_images": failed,
        "missing_predictions": missing,
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A small Markdown table of the five metrics (x100)."""
    head = "| " + " | ".join(m.upper() if m != "miou" else "mIoU" for m in METRICS) + " |"
    rule = "|" + "|".join("---:" for _ in METRICS) + "|"
    row = "| " + " | ".join(f"{100 * metrics[m]:.1f}" for m in METRICS) + " |"
    notes = (
        f"{metrics['n_images']} images, text encoder {metrics['text_encoder']}, "
        f"recall {metrics['recall_hits']}/{metrics['recall_gt_phrases']}, "
        f"{len(metrics['recall_failed_images'])} image(s) with a failed match, "
        f"{len(metrics['missing_predictions'])} missing prediction(s)"
    )
    return "\n".join((head, rule, row, notes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.gcg", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--pred-dir", type=Path, required=True, help="folder of <image_id>.json predictions"
    )
    parser.add_argument(
        "--gt-dir", type=Path, required=True, help="folder with {split}_gcg_coco_*_gt.json"
    )
    parser.add_argument("--split", choices=("val", "test"), required=True)
    parser.add_argument(
        "--text-encoder",
        default=DEFAULT_ENCODER,
        help="bert-base-uncased (official), minilm, or a local folder",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(
            pred_dir=args.pred_dir,
            gt_dir=args.gt_dir,
            split=args.split,
            text_encoder=args.text_encoder,
        )
    except (TextEncoderUnavailable, GrandfFormatError, PredictionFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
