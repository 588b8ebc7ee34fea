"""Images through the model: their prediction fields and their records.

The runner decides which images to run (:mod:`altp.run.runner`), the loop
(:mod:`altp.run.batches`) feeds them to the model in batches, and the summary is
written by :mod:`altp.run.summary`; this module calls the model on a batch and
says what each image produced, or records why it failed.

A record (``records/<image_id>.json``) holds, for one image: ``error`` (None, or
``"<ExceptionType>: message"`` for a failed image), the kept visual tokens
(``kept_tokens``: first stage; ``kept_tokens_per_stage``), ``kept_per_stage`` and
``stage_layers``, the pruner's per-image ``extras``, object coverage per stage,
token counts and timings in milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altp.coverage import coverage_fields, decode_gt_masks, gt_object_patches
from altp.data.grandf import GrandfSplit, Sample
from altp.data.predictions import write_prediction
from altp.models.base import GCGModel, GCGPrediction, ImageInputs
from altp.provenance import write_json_atomic
from altp.pruning.base import Pruner

__all__ = [
    "empty_prediction",
    "failed_record",
    "image_record",
    "image_seed",
    "predict_batch",
    "sample_gt_patches",
    "write_image",
]


def image_seed(base_seed: int, image_id: str) -> int:
    """Seed for one image: stable across runs, processes and image order."""
    return (int(base_seed) * 1_000_003 + zlib.crc32(image_id.encode())) % (2**31)


def empty_prediction() -> dict[str, Any]:
    """What a failed image is scored as: no caption, no phrases, no masks."""
    return {"caption": "", "phrases": [], "masks": []}


def predict_batch(
    model: GCGModel, pruner: Pruner | None, inputs: Sequence[ImageInputs], preps: Sequence[Any], seeds: Sequence[int]
) -> list[GCGPrediction]:
    """The model's predictions for a batch of preprocessed images, one per input, in order."""
    return list(model.predict_batch(inputs, pruner=pruner, preps=preps, seeds=seeds))


def sample_gt_patches(model: GCGModel, split: GrandfSplit, sample: Sample) -> list[np.ndarray | None]:
    """The image's GT objects on the model's token grid (:func:`altp.coverage.gt_object_patches`).

    Image-only work: the input pipeline does it in its workers.
    """
    return gt_object_patches(model, decode_gt_masks(split.annotations.masks[sample.image_id]))


def image_record(
    sample: Sample, out: GCGPrediction, gt_patches: Sequence[np.ndarray | None], timings: dict[str, float]
) -> tuple[dict, dict]:
    """One image's (prediction fields, record) from the model's ``GCGPrediction``.

    Args:
        sample: the image's sample.
        out: the image's :class:`altp.models.base.GCGPrediction`.
        gt_patches: the image's :func:`sample_gt_patches` (for the object coverage).
        timings: the runner's own timings of this image (input wait, worker times, wall),
            merged after the model's.
    """
    rec = out.record
    per_stage = rec.kept_tokens_per_stage[0] if rec.kept_tokens_per_stage else []
    merged = rec.merged_tokens_per_stage[0] if rec.merged_tokens_per_stage else []
    # A token made by merging shows the patches it absorbed: they count as covered.
    shown = [sorted({*kept, *(j for group in groups for j in group)})
             for kept, groups in zip(per_stage, merged, strict=True)] if merged else per_stage  # fmt: skip
    record = {
        "image_id": sample.image_id,
        "error": None,
        "kept_tokens": rec.kept_tokens[0] if rec.kept_tokens else None,
        "kept_per_stage": list(rec.kept_per_stage),
        "stage_layers": list(rec.stage_layers),
        "extras": rec.extras[0] if rec.extras else {},
        "kept_tokens_per_stage": per_stage,
        **({"merged_tokens_per_stage": merged} if merged else {}),
        **coverage_fields(gt_patches, shown),
        "num_visual": out.num_visual,
        "num_text_tokens": out.num_text_tokens,
        "new_tokens": out.new_tokens,
        "n_phrases": len(out.phrases),
        "n_masks": len(out.masks),
        "timings": {**out.timings, "select_ms": rec.select_ms, **timings},
    }
    pred = {"caption": out.caption, "phrases": list(out.phrases), "masks": list(out.masks)}
    return pred, record


def failed_record(sample: Sample, err: BaseException, *, type_name: str | None = None) -> dict:
    """The record of an image that failed with ``err`` (``type_name``: the type to name, default ``err``'s)."""
    return {
        "image_id": sample.image_id,
        "error": f"{type_name or type(err).__name__}: {err}",
        "kept_tokens": None,
        "kept_per_stage": [],
        "stage_layers": [],
        "extras": {},
        "kept_tokens_per_stage": [],
        "object_coverage": [],
        "timings": {},
    }


def write_image(
    pred_dir: Path,
    rec_dir: Path,
    image_id: str,
    pred: dict,
    record: dict,
    *,
    torn: Callable[[], None] | None = None,
) -> None:
    """Write one image's record, then its prediction, each atomically.

    The prediction comes last, so an image whose prediction exists has its record too.
    ``torn`` is called between the two writes (the runner's test-only fault point).
    """
    write_json_atomic(rec_dir / f"{image_id}.json", record)
    if torn is not None:
        torn()
    write_prediction(pred_dir, image_id=image_id, **pred)
