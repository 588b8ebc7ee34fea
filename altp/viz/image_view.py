"""Everything drawn for one image of one run, gathered from its record, prediction and split.

No model is loaded: the input pixels come from :mod:`altp.viz.geometry`, the
superpixels are recomputed with the run's own pruner settings
(:func:`altp.methods.superpixels.slic_labels`) and checked against the region sizes the
run recorded (``region_check`` says what differs, if anything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from altp.data.predictions import decode_mask
from altp.methods.superpixels import VarianceMode, regions_from_labels, slic_labels
from altp.viz.geometry import TokenGeometry, geometry_for
from altp.viz.overlays import stage_cells
from altp.viz.rundir import RunDir, kept_per_stage_lists, load_split
from eval.per_image import ImageScores, image_scores

__all__ = ["ImageView", "RegionView", "image_view"]


@dataclass(frozen=True)
class RegionView:
    """The run's superpixel regions on the input (first stage), with their recorded numbers.

    Attributes:
        labels: (S, S) int SLIC labels, recomputed with the run's pruner settings.
        region_ids: SLIC label of each region that held tokens (the record's).
        sizes: tokens per region (the record's ``region_sizes``).
        budgets: tokens kept per region T_k.
        densities: d_k (ALTP only, else None).
        weights: w_k (ALTP only, else None).
        check: "" when the recomputed regions equal the record's, else what differs.
    """

    labels: np.ndarray
    region_ids: list[int]
    sizes: list[int]
    budgets: list[int]
    densities: list[float] | None
    weights: list[float] | None
    check: str


@dataclass(frozen=True)
class ImageView:
    """One image under one run.

    Attributes:
        run: the run directory.
        image_id: the image.
        geometry: the model's token layout.
        pixels: (S, S, 3) uint8 input the vision tower saw.
        stages: (rows, cols) stages each token survived (see :func:`stage_cells`).
        kept_counts: tokens kept after each stage whose indices the record holds.
        recorded_counts: the record's ``kept_per_stage`` (every stage, indices or not).
        stage_layers: LLM layer of each stage (empty when unpruned).
        coverage: the record's ``object_coverage`` per stage, when recorded.
        regions: the superpixel regions (ALTP, DDC), else None.
        original: (H, W, 3) uint8 original image.
        pred_masks: (H, W) bool masks; ``phrases`` and ``caption`` the prediction's.
        gt_masks: (H, W) bool GT masks; ``gt_labels``, ``gt_caption`` the GT's.
        scores: per-image scores (:mod:`eval.per_image`).
        error: the record's error for a failed image, else None.
        merged: per token the first stage made by merging (VisionZip's contextual tokens),
            the original indices of the patches it absorbed; empty for other pruners.
    """

    run: RunDir
    image_id: str
    geometry: TokenGeometry
    pixels: np.ndarray
    stages: np.ndarray
    kept_counts: list[int]
    recorded_counts: list[int]
    stage_layers: list[int]
    coverage: list[float] | None
    regions: RegionView | None
    original: np.ndarray
    pred_masks: list[np.ndarray]
    phrases: list[str]
    caption: str
    gt_masks: list[np.ndarray]
    gt_labels: list[str]
    gt_caption: str
    scores: ImageScores
    error: str | None
    merged: list[list[int]] = field(default_factory=list)

    @property
    def n_stages(self) -> int:
        return max(1, len(self.kept_counts))

    @property
    def later_stages(self) -> list[tuple[int, int]]:
        """(layer, kept) of stages the record counts but whose indices it does not hold."""
        n = len(self.kept_counts)
        return list(zip(self.stage_layers[n:], self.recorded_counts[n:], strict=False))


def _regions(run: RunDir, extras: dict[str, Any], pixels: np.ndarray, grid: tuple[int, int]) -> RegionView | None:
    if "region_ids" not in extras:
        return None
    p = run.pruner
    # A run recorded before the switch existed ran with scikit-image's default (True).
    labels = slic_labels(pixels, n_segments=int(p.get("n_segments", 10)),
                         compactness=float(p.get("compactness", 5.0)), sigma=float(p.get("sigma", 1.0)),
                         enforce_connectivity=bool(p.get("enforce_connectivity", True)))
    regions = regions_from_labels(pixels, labels, grid, variance_mode=cast("VarianceMode", str(p.get("variance_mode", "channel_mean"))))  # the run's validated config
    ids, sizes = [int(x) for x in extras["region_ids"]], [int(x) for x in extras["region_sizes"]]
    got_ids, got_sizes = regions.region_labels.tolist(), regions.patch_count.tolist()
    check = "" if (got_ids, got_sizes) == (ids, sizes) else (
        f"recomputed SLIC regions differ from the record (sizes {got_sizes} vs recorded {sizes})")
    return RegionView(labels=labels, region_ids=ids, sizes=sizes, budgets=[int(b) for b in extras["budgets"]],
                      densities=extras.get("densities"), weights=extras.get("weights"), check=check)


def image_view(run: RunDir, image_id: str, *, encoder: Any | None = None) -> ImageView:
    """Gather one image of ``run`` (``encoder``: a text encoder for per-image recall, or None).

    Raises:
        KeyError: the run has no record of ``image_id`` (lists a few it has).
        ValueError: the record's token count does not fit the model's grid.
    """
    if image_id not in run.image_ids:
        have = ", ".join(run.image_ids[:5]) or "none"
        raise KeyError(f"{run.path} has no record and prediction of image {image_id!r} (it has: {have})")
    geo = geometry_for(run.model)
    record, pred = run.record(image_id), run.prediction(image_id)
    num_visual = int(record.get("num_visual") or geo.num_tokens)
    if num_visual != geo.num_tokens:
        raise ValueError(f"{run.path}: record has {num_visual} visual tokens but the {geo.family} grid "
                         f"{geo.grid[0]}x{geo.grid[1]} has {geo.num_tokens}")
    split = load_split(run.data)
    sample = next((s for s in split if s.image_id == image_id), None)
    if sample is None:
        raise KeyError(f"image {image_id!r} is not in split {run.data.get('name')} under {run.data.get('gt_dir')}")
    image = split.load_image(sample)
    pixels = geo.pixels(image)
    kept = kept_per_stage_lists(record, num_visual)
    gt_anns = split.annotations.masks[image_id]
    scores = image_scores(pred_masks=pred["pred_masks"], pred_phrases=pred["phrases"],
                          gt_masks=[a["segmentation"] for a in gt_anns], gt_labels=list(sample.labels),
                          encoder=encoder)
    return ImageView(
        run=run, image_id=image_id, geometry=geo, pixels=pixels, stages=stage_cells(kept, geo.grid),
        kept_counts=[len(k) for k in kept], recorded_counts=[int(k) for k in record.get("kept_per_stage") or []],
        stage_layers=[int(x) for x in record.get("stage_layers") or []],
        coverage=record.get("object_coverage"),
        regions=_regions(run, record.get("extras") or {}, pixels, geo.grid),
        original=np.asarray(image.convert("RGB")),
        pred_masks=[decode_mask(m) for m in pred["pred_masks"]], phrases=list(pred["phrases"]),
        caption=str(pred["caption"]),
        gt_masks=[decode_mask(a["segmentation"]) for a in gt_anns], gt_labels=list(sample.labels),
        gt_caption=sample.caption, scores=scores, error=record.get("error"),
        merged=[list(map(int, g)) for g in (record.get("merged_tokens_per_stage") or [[]])[0]],
    )  # fmt: skip
