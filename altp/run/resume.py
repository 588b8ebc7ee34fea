"""Which images a run still has to do: resume rules for a run directory.

An image is done when its record reads back as a successful one for that image
and its prediction reads back as a valid GLaMM-format prediction for that image.
Everything else is run (again):

* no files yet, or only the record (a run killed between the two writes);
* a record that says the image failed: failed images are retried on every
  resume and stay recorded as failed until they succeed;
* a record or prediction that is truncated, not JSON, lacks fields, or names
  another image: re-run, with a warning naming the file, never a crash.

Leftover temp files of interrupted atomic writes are removed first (the caller
holds the run directory's lock, so nobody else is writing them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from altp.data.grandf import Sample
from altp.data.predictions import PredictionFormatError, prediction_path, read_prediction

__all__ = ["RECORD_KEYS", "ResumePlan", "plan_resume", "read_record"]

log = logging.getLogger(__name__)

#: Fields every successful record has (what the run summary reads).
RECORD_KEYS = ("image_id", "error", "kept_per_stage", "stage_layers", "extras", "num_visual",
               "num_text_tokens", "new_tokens", "n_phrases", "n_masks", "timings")


@dataclass(frozen=True)
class ResumePlan:
    """What a run directory already holds for a list of samples.

    Attributes:
        done: image id -> its successful record, for images that need no inference.
        todo: samples to run, in split order.
        retried: ids of images recorded as failed, run again.
        repaired: ``(image id, why)`` for images whose files were incomplete or corrupt.
    """

    done: dict[str, dict[str, Any]]
    todo: list[Sample]
    retried: list[str] = field(default_factory=list)
    repaired: list[tuple[str, str]] = field(default_factory=list)


class _Unusable(Exception):
    """A record or prediction file that cannot be trusted (the message says why)."""


def read_record(path: Path, image_id: str) -> dict[str, Any]:
    """The record at ``path`` if it is a well-formed record of ``image_id``.

    Raises:
        _Unusable: missing, not JSON, lacking :data:`RECORD_KEYS` or naming another image.
    """
    if not path.is_file():
        raise _Unusable("no record")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _Unusable(f"corrupt record {path.name} ({err})") from None
    if not isinstance(record, dict) or record.get("image_id") != image_id:
        raise _Unusable(f"record {path.name} is not a record of {image_id}")
    if record.get("error") is None:
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise _Unusable(f"record {path.name} lacks {missing}")
    return record


def _check_prediction(pred_dir: Path, image_id: str) -> None:
    path = prediction_path(pred_dir, image_id)
    if not path.is_file():
        raise _Unusable("no prediction")
    try:
        pred = read_prediction(path)
    except PredictionFormatError as err:
        raise _Unusable(str(err)) from None
    if pred.get("image_id") != image_id:
        raise _Unusable(f"prediction {path.name} names image {pred.get('image_id')!r}")


def _remove_temp_files(*folders: Path) -> None:
    for folder in folders:
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def plan_resume(samples: list[Sample], pred_dir: Path, rec_dir: Path) -> ResumePlan:
    """Sort ``samples`` into done and to-do by what ``pred_dir`` and ``rec_dir`` hold (see the module doc)."""
    _remove_temp_files(pred_dir, rec_dir)
    done: dict[str, dict[str, Any]] = {}
    todo: list[Sample] = []
    retried: list[str] = []
    repaired: list[tuple[str, str]] = []
    for sample in samples:
        image_id = sample.image_id
        rec_path = rec_dir / f"{image_id}.json"
        has_pred = prediction_path(pred_dir, image_id).exists()
        if not has_pred and not rec_path.exists():
            todo.append(sample)
            continue
        try:
            record = read_record(rec_path, image_id)
            if record.get("error") is not None:
                retried.append(image_id)
                todo.append(sample)
                continue
            _check_prediction(pred_dir, image_id)
        except _Unusable as err:
            if has_pred:  # a record without its prediction is an interrupted write, not damage
                log.warning("image %s: %s; running it again", image_id, err)
            repaired.append((image_id, str(err)))
            todo.append(sample)
            continue
        done[image_id] = record
    return ResumePlan(done=done, todo=todo, retried=retried, repaired=repaired)
