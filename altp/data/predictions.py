"""Per-image GCG predictions in GLaMM's own JSON format.

One file ``<pred_dir>/<image_id>.json`` per image, exactly what groundingLMM's
``eval/gcg/infer.py`` and OMG-LLaVA's ``tools/gcg_omg_seg_llava.py`` write::

    {"image_id": "sa_10010541",
     "caption": "A man rides a horse.",
     "phrases": ["A man", "a horse"],
     "pred_masks": [{"size": [H, W], "counts": "<compressed RLE>"}, ...]}

The i-th phrase pairs with the i-th mask. ``image_id`` comes first because the
official evaluator looks at the first key (see :func:`read_prediction`).
Masks are compressed COCO RLE (column-major run lengths, ``counts`` as an
ASCII string), so they can be scored by the official script unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
from pycocotools import mask as mask_utils

from altp.data.rle import rle_problem

__all__ = [
    "PredictionFormatError",
    "Rle",
    "OFFICIAL_KEYS",
    "encode_mask",
    "decode_mask",
    "to_rle",
    "prediction_path",
    "write_prediction",
    "read_prediction",
]

#: The keys GLaMM writes, in GLaMM's order.
OFFICIAL_KEYS: tuple[str, ...] = ("image_id", "caption", "phrases", "pred_masks")


class PredictionFormatError(ValueError):
    """A prediction file is not valid JSON or not in GLaMM's format."""


class Rle(TypedDict):
    """A compressed COCO RLE: ``size`` is [H, W]; ``counts`` is an ASCII str in JSON files and
    bytes where pycocotools made it (both are what pycocotools reads)."""

    size: list[int]
    counts: str | bytes


def encode_mask(mask: np.ndarray) -> Rle:
    """Encode one binary mask as compressed COCO RLE.

    Args:
        mask: ``(H, W)`` array, bool or 0/1 integers; row ``y``, column ``x``.

    Returns:
        ``{"size": [H, W], "counts": str}``, the same bytes
        ``pycocotools.mask.encode`` gives, with counts decoded to ASCII so the
        dict is JSON-serialisable (GLaMM's ``coco_encode_rle`` does the same).
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(
            f"encode_mask expects one (H, W) mask, got shape {arr.shape}; encode a stack one mask at a time"
        )
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(
                "encode_mask expects a binary mask; threshold it first (e.g. logits > 0)"
            )
        arr = arr.astype(bool)
    rle = mask_utils.encode(np.asfortranarray(arr.astype(np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),  # pyright: ignore[reportAttributeAccessIssue]  (encode's counts are bytes; the stub says str | bytes)
    }


def decode_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a compressed RLE dict (``counts`` str or bytes) to an ``(H, W)`` bool mask."""
    counts = rle["counts"]
    enc: Rle
    if isinstance(counts, list):
        h, w = rle["size"]
        # uncompressed RLE (list counts) is a valid frPyObjects input the stub does not list
        enc = mask_utils.frPyObjects(rle, h, w)  # pyright: ignore[reportCallIssue, reportArgumentType]
    elif isinstance(counts, str):
        enc = {"size": rle["size"], "counts": counts.encode("ascii")}
    else:
        enc = cast(Rle, rle)  # bytes counts: already what pycocotools reads
    return mask_utils.decode(enc).astype(bool)


def to_rle(segmentation: Mapping[str, Any]) -> Rle:
    """Normalise an RLE dict for pycocotools: bytes counts (str is encoded, lists compressed)."""
    counts = segmentation["counts"]
    h, w = (int(s) for s in segmentation["size"])
    if isinstance(counts, list):
        # uncompressed RLE (list counts) is a valid frPyObjects input the stub does not list
        return mask_utils.frPyObjects(segmentation, h, w)  # pyright: ignore[reportCallIssue, reportArgumentType]
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("ascii")}
    return {"size": [h, w], "counts": counts}


def prediction_path(pred_dir: Path, image_id: str) -> Path:
    """Where the prediction for ``image_id`` lives (``<pred_dir>/<image_id>.json``)."""
    return Path(pred_dir) / f"{image_id}.json"


def write_prediction(
    pred_dir: Path,
    *,
    image_id: str,
    caption: str,
    phrases: Sequence[str],
    masks: Sequence[np.ndarray] | Sequence[Rle] | Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one image's prediction atomically, with deterministic bytes.

    Args:
        pred_dir: output folder (created if missing).
        image_id: the GranD-f image id (file stem), e.g. ``"sa_10010541"``.
        caption: the cleaned caption (no ``<p>``/``[SEG]`` tags).
        phrases: grounded phrases; ``phrases[i]`` pairs with ``masks[i]``.
        masks: ``(H, W)`` binary arrays, or already-encoded RLE dicts.
        extra: optional non-official fields (e.g. tokens kept, timings); they
            are written after the four official keys, sorted, so official
            readers see the file they expect.

    Returns:
        The written path. Same inputs give a byte-identical file: JSON is
        dumped with fixed separators and the temp file is ``os.replace``-d in,
        so a crash never leaves a half-written prediction behind.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(OFFICIAL_KEYS))
    if clash:
        raise ValueError(
            f"extra must not redefine official keys {clash}; pass them as arguments instead"
        )
    rles = [m if isinstance(m, dict) else encode_mask(m) for m in masks]
    for rle in rles:
        if not isinstance(rle.get("counts"), str):
            raise ValueError(
                "RLE dicts passed to write_prediction need str counts; build them with encode_mask"
            )
    record: dict[str, Any] = {
        "image_id": str(image_id),
        "caption": str(caption),
        "phrases": [str(p) for p in phrases],
        "pred_masks": [
            {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"]} for r in rles
        ],
    }
    for key in sorted(extra):
        record[key] = extra[key]
    data = json.dumps(record, ensure_ascii=False, separators=(", ", ": "), allow_nan=False).encode(
        "utf-8"
    )

    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    final = prediction_path(pred_dir, image_id)
    fd, tmp = tempfile.mkstemp(prefix=f".{image_id}.", suffix=".tmp", dir=pred_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write() names no file: name it
            err.filename = str(final)
        raise
    return final


def read_prediction(path: Path) -> dict[str, Any]:
    """Read one prediction file written by this project, GLaMM or OMG-LLaVA.

    Accepts the flat format above and the wrapped form ``{image_id: {caption,
    phrases, pred_masks}}`` that the official evaluator also accepts (it
    unwraps the first value when that value is a dict with a ``caption``).

    Returns:
        ``{"image_id": str | None, "caption": str, "phrases": list[str],
        "pred_masks": list[dict]}`` plus any extra keys, in file order.

    Raises:
        PredictionFormatError: corrupt JSON, missing fields or a mask whose RLE does
            not decode, naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise PredictionFormatError(
            f"{path}: corrupt JSON ({e.msg} at line {e.lineno} col {e.colno}); re-run inference for this image"
        ) from e
    except UnicodeDecodeError as e:
        raise PredictionFormatError(
            f"{path}: not UTF-8 text ({e.reason}); re-run inference for this image"
        ) from e
    if not isinstance(record, dict) or not record:
        raise PredictionFormatError(
            f"{path}: expected a JSON object with keys {list(OFFICIAL_KEYS)}"
        )
    first_key = next(iter(record))
    first = record[first_key]
    if isinstance(first, dict) and "caption" in first:
        # Same unwrapping rule as the official loader: the first value is the record.
        record = {"image_id": first_key, **first}
    missing = [k for k in ("caption", "phrases", "pred_masks") if k not in record]
    if missing:
        raise PredictionFormatError(
            f"{path}: missing key(s) {missing}; a GCG prediction needs {list(OFFICIAL_KEYS)}"
        )
    if not isinstance(record["caption"], str):
        raise PredictionFormatError(f"{path}: 'caption' must be a string")
    if not isinstance(record["phrases"], list) or not all(
        isinstance(p, str) for p in record["phrases"]
    ):
        raise PredictionFormatError(f"{path}: 'phrases' must be a list of strings")
    masks = record["pred_masks"]
    if not isinstance(masks, list) or not all(
        isinstance(m, dict) and "size" in m and "counts" in m for m in masks
    ):
        raise PredictionFormatError(
            f"{path}: 'pred_masks' must be a list of RLE dicts with 'size' and 'counts'"
        )
    for k, mask in enumerate(masks):
        problem = rle_problem(mask)  # pycocotools would score a mask that does not decode
        if problem is not None:
            raise PredictionFormatError(f"{path}: pred_masks[{k}]: {problem}; re-run inference for this image")
    if record.get("image_id") is not None and not isinstance(record["image_id"], str | int):
        raise PredictionFormatError(f"{path}: 'image_id' must be a string")
    out: dict[str, Any] = {"image_id": record.get("image_id")}
    out.update(record)
    return out
