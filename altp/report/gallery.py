"""The report's per-image gallery: every image under every run, side by side.

For each (model, data) group of run directories (:func:`altp.viz.rundir.find_run_dirs`)
and each image they recorded, one row: the ground truth, then per run its kept
tokens over the model's input and its prediction over the original image, with
the per-image scores of :mod:`eval.per_image` and their difference from the
unpruned run of the same group. Thumbnails are PNG files written with PIL from
the arrays of :mod:`altp.viz.overlays`; the page refers to them by relative path.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from altp.viz.image_view import ImageView, image_view
from altp.viz.overlays import boundary_mask, kept_token_rgb, mask_overlay
from altp.viz.rundir import RunDir
from altp.viz.tokens import stage_colours

__all__ = ["Cell", "Gallery", "build_galleries"]

THUMB = 200  # px, longest side of every thumbnail


@dataclass(frozen=True)
class Cell:
    """One image under one run: thumbnails (paths relative to the report) and what to print."""

    run_key: str
    kept_png: str
    pred_png: str
    caption: str
    phrases: list[tuple[str, int | None]]  # (phrase, its mask's number in the thumbnail); None: no mask
    kept: str
    scores: dict[str, float | int | None]
    delta: dict[str, float | None]
    error: str | None
    note: str


@dataclass
class Gallery:
    """One (model, data) group: its runs (columns) and images (rows)."""

    slug: str
    model: str
    data: str
    runs: list[RunDir]
    run_keys: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # image_id, gt_png, gt_caption, gt_labels, cells


def _save(arr: np.ndarray, path: Path, *, nearest: bool) -> None:
    img = Image.fromarray(arr)
    scale = THUMB / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img = img.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def _kept_array(view: ImageView) -> np.ndarray:
    arr = kept_token_rgb(view.pixels, view.stages, view.n_stages, stage_colours(view.n_stages))
    if view.regions is not None:
        edge = boundary_mask(view.regions.labels)
        arr[edge] = (0.5 * arr[edge] + 0.5 * 255).astype(np.uint8)
    return arr


def _kept_text(view: ImageView) -> str:
    total = view.geometry.num_tokens
    if not view.stage_layers:
        return f"all {total} tokens"
    counts = view.recorded_counts or view.kept_counts
    layers = ", ".join(str(x) for x in view.stage_layers)
    return f"{' > '.join(map(str, counts))} of {total} (layer{'s' if len(counts) > 1 else ''} {layers})"


def _scores(view: ImageView) -> dict[str, float | int | None]:
    s = view.scores
    return {"miou": s.miou, "mask_hits": s.mask_hits, "n_gt": s.n_gt,
            "recall": None if s.recall_hits is None else s.recall_hits / max(1, s.n_gt_labels)}


def build_galleries(runs: list[RunDir], out: Path, *, encoder: Any | None = None,
                    max_images: int | None = 50) -> list[Gallery]:
    """Write every thumbnail under ``out/gallery/`` and return the galleries to render.

    Args:
        runs: run directories with per-image records and predictions.
        out: the report folder (thumbnails go to ``out/gallery/<group>/``).
        encoder: text encoder for per-image recall, or None to leave it out.
        max_images: at most this many images per group (the first in id order); None for all.
    """
    groups: dict[tuple[str, str], list[RunDir]] = defaultdict(list)
    for run in runs:
        groups[(run.model_name, str(run.data.get("name")))].append(run)
    galleries = []
    for (model, data), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r.sort_key)
        slug = f"{model}_{data}"
        keys = [f"r{i}" for i in range(len(members))]  # column ids in file names and data attributes
        gal = Gallery(slug=slug, model=model, data=data, runs=members, run_keys=keys)
        ids = sorted({i for r in members for i in r.image_ids})
        ids = ids if max_images is None else ids[:max_images]
        ref = next((r for r in members if r.pruner_name == "none"), None)
        for image_id in ids:
            folder = out / "gallery" / slug / image_id
            rel = f"gallery/{slug}/{image_id}"
            views = {k: image_view(r, image_id, encoder=encoder) for k, r in zip(keys, members, strict=True)
                     if image_id in r.image_ids}
            ref_view = next((v for v in views.values() if ref is not None and v.run is ref), None)
            any_view = next(iter(views.values()))
            _save(mask_overlay(any_view.original, any_view.gt_masks), folder / "gt.png", nearest=False)
            cells: dict[str, Cell | None] = {}
            for key in keys:
                view = views.get(key)
                if view is None:
                    cells[key] = None
                    continue
                _save(_kept_array(view), folder / f"{key}_kept.png", nearest=True)
                _save(mask_overlay(view.original, view.pred_masks), folder / f"{key}_pred.png", nearest=False)
                scores = _scores(view)
                ref_scores = _scores(ref_view) if ref_view is not None else {}
                delta = {k: (None if scores.get(k) is None or ref_scores.get(k) is None
                             else float(scores[k]) - float(ref_scores[k]))  # type: ignore[arg-type]
                         for k in ("miou", "recall")}
                n_masks = len(view.pred_masks)
                cells[key] = Cell(
                    run_key=key, kept_png=f"{rel}/{key}_kept.png", pred_png=f"{rel}/{key}_pred.png",
                    caption=view.caption, phrases=[(p, i + 1 if i < n_masks else None) for i, p in enumerate(view.phrases)],
                    kept=_kept_text(view), scores=scores, delta=delta, error=view.error,
                    note=view.regions.check if view.regions is not None else "",
                )  # fmt: skip
            gal.rows.append({
                "image_id": image_id, "gt_png": f"{rel}/gt.png", "gt_caption": any_view.gt_caption,
                "gt_labels": [(label, i + 1 if i < len(any_view.gt_masks) else None)
                              for i, label in enumerate(any_view.gt_labels)],
                "cells": cells,
            })  # fmt: skip
        galleries.append(gal)
    return galleries
