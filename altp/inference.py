"""One image through the model: its prediction fields and its record.

The runner decides which images to run (:mod:`altp.runner`) and writes and
summarises the results (:mod:`altp.run_summary`); this module only runs one
image and says what it produced, or records why it failed.

A record (``records/<image_id>.json``) holds, for one image: ``error`` (None, or
``"<ExceptionType>: message"`` for a failed image), the kept visual tokens
(``kept_tokens``: first stage; ``kept_tokens_per_stage``), ``kept_per_stage`` and
``stage_layers``, the pruner's per-image ``extras``, object coverage per stage,
token counts and timings in milliseconds.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altp.coverage import decode_gt_masks, image_object_coverage
from altp.data.grandf import GrandfSplit, Sample
from altp.predictions import write_prediction
from altp.provenance import write_json_atomic

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.models.base import GCGModel
    from altp.pruning.base import Pruner

__all__ = ["empty_prediction", "failed_record", "image_seed", "predict_image", "write_image"]


def image_seed(base_seed: int, image_id: str) -> int:
    """Seed for one image: stable across runs, processes and image order."""
    return (int(base_seed) * 1_000_003 + zlib.crc32(image_id.encode())) % (2**31)


def empty_prediction() -> dict[str, Any]:
    """What a failed image is scored as: no caption, no phrases, no masks."""
    return {"caption": "", "phrases": [], "masks": []}


def predict_image(
    model: GCGModel, pruner: Pruner | None, split: GrandfSplit, sample: Sample, seed: int
) -> tuple[dict, dict]:
    """Run one image; returns (prediction fields, record). Raises ImageLoadError."""
    t0 = time.perf_counter()
    image = split.load_image(sample)
    prep = None
    prep_ms = 0.0
    if pruner is not None:
        tp = time.perf_counter()
        prep = pruner.prepare(model.vision_image(image), model.grid)
        prep_ms = (time.perf_counter() - tp) * 1e3
    out = model.predict(image, pruner=pruner, prep=prep, seed=seed)
    wall_ms = (time.perf_counter() - t0) * 1e3  # the diagnostic below is not the model's time
    rec = out.record
    per_stage = rec.kept_tokens_per_stage[0] if rec.kept_tokens_per_stage else []
    record = {
        "image_id": sample.image_id,
        "error": None,
        "kept_tokens": rec.kept_tokens[0] if rec.kept_tokens else None,
        "kept_per_stage": list(rec.kept_per_stage),
        "stage_layers": list(rec.stage_layers),
        "extras": rec.extras[0] if rec.extras else {},
        "kept_tokens_per_stage": per_stage,
        **image_object_coverage(model, decode_gt_masks(split.annotations.masks[sample.image_id]), per_stage),
        "num_visual": out.num_visual,
        "num_text_tokens": out.num_text_tokens,
        "new_tokens": out.new_tokens,
        "n_phrases": len(out.phrases),
        "n_masks": len(out.masks),
        "timings": {**out.timings, "select_ms": rec.select_ms, "prep_ms": prep_ms,
                    "wall_ms": wall_ms},
    }
    pred = {"caption": out.caption, "phrases": list(out.phrases), "masks": list(out.masks)}
    return pred, record


def failed_record(sample: Sample, err: BaseException) -> dict:
    """The record of an image that failed with ``err``."""
    return {"image_id": sample.image_id, "error": f"{type(err).__name__}: {err}", "kept_tokens": None,
            "kept_per_stage": [], "stage_layers": [], "extras": {}, "kept_tokens_per_stage": [],
            "object_coverage": [], "timings": {}}


def write_image(
    pred_dir: Path, rec_dir: Path, image_id: str, pred: dict, record: dict,
    *, torn: Callable[[], None] | None = None,
) -> None:
    """Write one image's record, then its prediction, each atomically.

    The prediction comes last, so an image whose prediction exists has its record too.
    ``torn`` is called between the two writes (the runner's test-only fault point).
    """
    write_json_atomic(rec_dir / f"{image_id}.json", record)
    if torn is not None:
        torn()
    write_prediction(pred_dir, image_id=image_id, **pred)
