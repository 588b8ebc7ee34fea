"""Object coverage: how much of each ground-truth object the kept visual tokens still show.

A diagnostic of *where* a pruner keeps tokens, independent of what the model
then generates. Definitions, per image and per pruning stage:

* **Object patches** ``P_o`` of GT object ``o``: the visual tokens whose patch is
  at least half covered by the object's mask, measured through exactly the
  geometry the vision tower sees (:meth:`GCGModel.token_grid_fraction`: GLaMM's
  resize + centre crop, OMG-LLaVA's square padding + resize). An object that
  covers no patch by half (smaller than half a patch, or thin) but overlaps
  some patch gets its single best-covered patch (the first in row-major order
  on ties): the model sees it there. An object with no overlap at all (cut off
  by GLaMM's centre crop, or an empty mask) is *out of view*: no token ever
  shows it, so it is left out of the mean and counted in ``gt_objects_out_of_view``.
* **Coverage** of a stage: ``mean over in-view objects of |P_o ∩ K_s| / |P_o|``,
  ``K_s`` the original visual indices kept after stage ``s``. Every object
  weighs the same whatever its size (a small object lost counts as much as a
  large one). ``None`` when the image has no in-view object.

Records carry one value per stage (``object_coverage``, ``[]`` when unpruned);
:func:`summarise_coverage` averages them over images into metrics.json, with
an unpruned run at 1.0 by definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as mask_utils

from altp.data.predictions import to_rle

__all__ = [
    "OBJECT_PATCH_FRACTION",
    "coverage_fields",
    "decode_gt_masks",
    "gt_object_patches",
    "image_object_coverage",
    "object_patches",
    "stage_coverage",
    "summarise_coverage",
]

#: a patch belongs to an object when at least this fraction of its area lies in the mask
OBJECT_PATCH_FRACTION = 0.5
_EPS = 1e-9  # a patch exactly half covered must not fall below 0.5 by float round-off


class _TokenGrid(Protocol):
    """The part of :class:`altp.models.base.GCGModel` this diagnostic uses (evaluation does not
    import the model layer)."""

    def token_grid_fraction(self, mask: np.ndarray) -> np.ndarray: ...


def object_patches(fraction: np.ndarray) -> np.ndarray | None:
    """Flat row-major indices of an object's patches, or None when the object is out of view.

    Args:
        fraction: (rows, cols) covered fraction of each patch (``token_grid_fraction``).

    Returns:
        Ascending int64 indices into ``0..rows*cols-1``: the patches at least half
        covered, else the single best-covered one; None if no patch is covered at all.
    """
    flat = np.asarray(fraction, dtype=np.float64).ravel()
    idx = np.flatnonzero(flat >= OBJECT_PATCH_FRACTION - _EPS)
    if idx.size:
        return idx
    if flat.size == 0 or flat.max() <= 0.0:
        return None
    return np.array([int(flat.argmax())], dtype=np.int64)  # argmax: first of the ties


def stage_coverage(
    objects: Sequence[np.ndarray], kept_per_stage: Sequence[Sequence[int]]
) -> list[float | None]:
    """Per stage, the mean over ``objects`` of the fraction of their patches kept.

    Args:
        objects: per in-view object, its patch indices (:func:`object_patches`).
        kept_per_stage: per stage, the original visual indices kept after it.

    Returns:
        One value per stage; None entries when ``objects`` is empty.
    """
    out: list[float | None] = []
    for kept in kept_per_stage:
        if not objects:
            out.append(None)
            continue
        k = np.asarray(list(kept), dtype=np.int64)
        out.append(float(np.mean([np.isin(p, k).sum() / p.size for p in objects])))
    return out


def decode_gt_masks(annotations: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """(H, W) bool masks of an image's GT mask annotations (RLE ``segmentation``), in file order."""
    return [mask_utils.decode(to_rle(a["segmentation"])).astype(bool) for a in annotations]


def gt_object_patches(model: _TokenGrid, masks: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """Per GT mask, its patch indices (:func:`object_patches`; None: out of view).

    Depends on the image's GT and the model's geometry only, so the input
    pipeline computes it in its workers, beside the image.
    """
    return [object_patches(model.token_grid_fraction(m)) for m in masks]


def coverage_fields(patches: Sequence[np.ndarray | None], kept_per_stage: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The record fields of one image from its :func:`gt_object_patches`: ``object_coverage``,
    ``gt_objects``, ``gt_objects_out_of_view``."""
    in_view = [p for p in patches if p is not None]
    return {
        "object_coverage": stage_coverage(in_view, kept_per_stage),
        "gt_objects": len(in_view),
        "gt_objects_out_of_view": len(patches) - len(in_view),
    }


def image_object_coverage(
    model: _TokenGrid, masks: Sequence[np.ndarray], kept_per_stage: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """The record fields of one image: ``object_coverage``, ``gt_objects``, ``gt_objects_out_of_view``.

    Args:
        model: a :class:`altp.models.base.GCGModel` (its ``token_grid_fraction``).
        masks: the image's GT masks at its original size.
        kept_per_stage: per stage, original visual indices kept (empty: unpruned).
    """
    return coverage_fields(gt_object_patches(model, masks), kept_per_stage)


def summarise_coverage(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json keys from successful records (mean over images with an in-view object).

    Returns:
        ``object_coverage`` (first stage), ``object_coverage_final`` (last stage),
        ``object_coverage_per_stage`` (one mean per stage; None when images differ in
        their number of stages, ``[]`` unpruned) and ``object_coverage_n_images``
        (images averaged). An unpruned image covers 1.0. Records written before
        coverage existed are skipped; with none left every value is None.
    """
    rows = [r["object_coverage"] for r in records if r.get("gt_objects") and "object_coverage" in r]
    out: dict[str, Any] = {
        "object_coverage": None,
        "object_coverage_final": None,
        "object_coverage_per_stage": None,
        "object_coverage_n_images": len(rows),
    }
    if not rows:
        return out
    mean = lambda xs: float(sum(xs) / len(xs))  # noqa: E731
    out["object_coverage"] = mean([r[0] if r else 1.0 for r in rows])
    out["object_coverage_final"] = mean([r[-1] if r else 1.0 for r in rows])
    if len({len(r) for r in rows}) == 1:
        out["object_coverage_per_stage"] = [mean(col) for col in zip(*rows, strict=True)]
    return out
