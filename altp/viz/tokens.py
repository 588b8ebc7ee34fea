"""The token-retention figure (the paper's Fig. 4/5, for any image, run and model).

One row per run directory, panels left to right:

1. the model's input image with the run's SLIC boundaries (ALTP, DDC);
2. per-region density d_k (ALTP; DDC: tokens per region) with the budgets T_k written in;
3. per-region weight w_k (ALTP) with T_k;
4. the kept-token grid over the input: pruned tokens darkened, and for several
   stages (PyramidDrop) the tokens dropped at each later stage tinted by stage;
5. the predicted masks on the original image, their phrases and the caption,
   with the image's per-image scores (:mod:`eval.per_image`);
6. the ground truth the same way.

Panels 2-3 appear only when some row has regions.

Example::

    python -m altp.viz tokens runs/glamm_shapes/shapes_val/altp/keep0.1 \\
        runs/glamm_shapes/shapes_val/fastv/keep0.1 --image sa_15691869 --out tokens.png
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from altp.viz.image_view import ImageView, image_view
from altp.viz.overlays import (
    boundary_mask,
    kept_token_rgb,
    label_centroids,
    mask_overlay,
    region_value_image,
    upsample_cells,
)
from altp.viz.rundir import RunDir
from altp.viz.style import SYNTHETIC_LABEL, is_synthetic

__all__ = ["draw_kept_tokens", "stage_colours", "token_figure", "write_token_figure"]

_STROKE = [patheffects.withStroke(linewidth=2.5, foreground="black")]
#: tint of the patches a merging pruner (VisionZip) folded into its contextual tokens
MERGED_RGB = (0.25, 0.55, 1.0)


def stage_colours(n_stages: int) -> list[tuple[float, float, float, float]]:
    """Tints of tokens dropped after stage 1..S-1 (warm = dropped late)."""
    return [colormaps["autumn"](1.0 - s / max(1, n_stages - 1)) for s in range(1, n_stages)]


def _boundaries_rgba(labels: np.ndarray, colour: tuple[float, float, float], alpha: float) -> np.ndarray:
    edge = boundary_mask(labels)
    rgba = np.zeros((*labels.shape, 4))
    rgba[edge] = (*colour, alpha)
    return rgba


def draw_kept_tokens(ax: Axes, view: ImageView, legend_ax: Axes | None = None) -> None:
    """The input with pruned tokens darkened (tinted by stage for several stages); legend in ``legend_ax``."""
    n = view.n_stages
    tints = stage_colours(n)
    ax.imshow(kept_token_rgb(view.pixels, view.stages, n, tints), interpolation="nearest")
    if view.regions is not None:
        ax.imshow(_boundaries_rgba(view.regions.labels, (1.0, 1.0, 1.0), 0.5), interpolation="nearest")
    absorbed = sorted({j for group in view.merged for j in group})
    if absorbed:  # patches folded into merged tokens: tinted, not dropped
        cells = np.zeros(view.geometry.num_tokens, dtype=bool)
        cells[absorbed] = True
        per_pixel = upsample_cells(cells.reshape(view.geometry.grid), view.pixels.shape[0])
        tint = np.zeros((*per_pixel.shape, 4))
        tint[per_pixel] = (*MERGED_RGB, 0.55)
        ax.imshow(tint, interpolation="nearest")
    total, layers, counts = view.geometry.num_tokens, view.stage_layers, view.kept_counts
    if not layers:
        ax.set_title(f"all {total} tokens kept (unpruned)", fontsize=9)
        return
    if n == 1:
        title = f"kept {counts[0]}/{total} at layer {layers[0]}"
        if view.merged:
            title += f" + {len(view.merged)} merged"
        later = view.later_stages
        if later:  # a multi-stage record without per-stage indices: say what is not drawn
            title += "\nthen " + ", ".join(f"{k} (layer {lay})" for lay, k in later) + ": not drawn"
        ax.set_title(title, fontsize=8)
        handles = [Patch(facecolor="black", alpha=0.72, label=f"pruned ({total - counts[0] - len(absorbed)})")]
        if view.merged:
            handles.append(Patch(facecolor=MERGED_RGB, alpha=0.55,
                                 label=f"merged into {len(view.merged)} tokens ({len(absorbed)} patches)"))
    else:
        ax.set_title(f"kept {' > '.join(map(str, counts))} of {total}\nat layers {', '.join(map(str, layers))}",
                     fontsize=9)
        handles = [Patch(facecolor="white", edgecolor="grey", label=f"kept to the end ({counts[-1]})")]
        for s in range(n - 1, 0, -1):
            handles.append(Patch(facecolor=tints[s - 1], label=f"dropped at layer {layers[s]} ({counts[s - 1] - counts[s]})"))
        handles.append(Patch(facecolor="black", alpha=0.72, label=f"pruned at layer {layers[0]} ({total - counts[0]})"))
    if view.coverage:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label="object coverage " + " > ".join(f"{c:.2f}" for c in view.coverage)))
    if legend_ax is not None:
        legend_ax.legend(handles=handles, loc="upper center", fontsize=7, frameon=False)


def _region_panel(ax: Axes, view: ImageView, which: str) -> None:
    reg = view.regions
    assert reg is not None
    values = {"density": reg.densities, "weight": reg.weights, "size": reg.sizes}[which]
    img = region_value_image(reg.labels, reg.region_ids, values)
    vals = np.asarray(values, dtype=np.float64)
    log = which == "density" and vals.min() > 0 and vals.max() / vals.min() > 100
    norm = LogNorm(vals.min(), vals.max()) if log else Normalize(vals.min(), vals.max())
    ax.imshow(view.pixels, alpha=0.35)
    im = ax.imshow(img, cmap="magma" if which == "density" else "viridis", norm=norm, alpha=0.85,
                   interpolation="nearest")
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    for (y, x), budget in zip(label_centroids(reg.labels, reg.region_ids), reg.budgets, strict=True):
        ax.text(x, y, f"T={budget}", color="white", fontsize=8, ha="center", va="center", path_effects=_STROKE)
    title = {"density": "density $d_k$" + (" (log)" if log else ""), "weight": "weight $w_k$",
             "size": "tokens per region $|k|$"}[which]
    ax.set_title(f"{title}, budget $T_k$", fontsize=9)


def _masks_panel(ax: Axes, text_ax: Axes, original: np.ndarray, masks: Sequence[np.ndarray],
                 names: Sequence[str], caption: str, title: str) -> None:
    """Masks outlined and numbered over the image (:func:`mask_overlay`); below, the numbered phrases."""
    ax.imshow(mask_overlay(original, masks))
    ax.set_title(title, fontsize=9)
    labels = [f"{i}  {textwrap.shorten(p, 34)}" for i, p in enumerate(names[:len(masks)], start=1)]
    labels += [f"–  {textwrap.shorten(p, 34)} (no mask)" for p in names[len(masks):]]
    labels += [f"{i}  (no phrase)" for i in range(len(names) + 1, len(masks) + 1)]
    handles = [Patch(facecolor="none", edgecolor="none", label=label) for label in labels]
    text = textwrap.fill(caption or "(empty caption)", 44)
    leg = text_ax.legend(handles=handles, loc="upper center", fontsize=7, frameon=False, title=text,
                         title_fontsize=7, handlelength=0, handletextpad=0)
    leg.set_alignment("left")  # the caption reads as a paragraph


def _text_lines(view: ImageView) -> int:
    """Lines of text under the prediction and GT panels of one row (the longer of the two)."""
    pred = len(textwrap.wrap(view.caption or "-", 44)) + len(view.phrases) + 1
    gt = len(textwrap.wrap(view.gt_caption or "-", 44)) + len(view.gt_labels)
    return max(pred, gt, view.n_stages + 2)


def _blank(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, textwrap.fill(text, 26), ha="center", va="center", fontsize=8, color="grey",
            transform=ax.transAxes)


def token_figure(runs: Sequence[RunDir], image_id: str) -> Figure:
    """The figure for ``image_id`` with one row per run (see the module docstring)."""
    views = [image_view(run, image_id) for run in runs]
    has_regions = any(v.regions is not None for v in views)
    has_weights = any(v.regions is not None and v.regions.weights is not None for v in views)
    cols = ["input", *(["density"] if has_regions else []), *(["weight"] if has_weights else []),
            "kept", "pred", "gt"]
    # Each run: a row of square panels, then a row of text (captions, phrases, legends) under them.
    heights = [h for v in views for h in (3.0, 0.2 + 0.14 * _text_lines(v))]
    fig = Figure(figsize=(3.1 * len(cols), sum(heights) + 0.7), layout="constrained")
    grid = np.asarray(fig.subplots(len(heights), len(cols), squeeze=False, gridspec_kw={"height_ratios": heights}))
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for text_ax in grid[1::2].ravel():
        text_ax.set_axis_off()
    for row, text_row, view in zip(grid[0::2], grid[1::2], views, strict=True):
        texts = dict(zip(cols, text_row, strict=True))
        panel = dict(zip(cols, row, strict=True))
        reg = view.regions
        ax = panel["input"]
        ax.imshow(view.pixels)
        if reg is not None:
            ax.imshow(_boundaries_rgba(reg.labels, (1.0, 0.9, 0.0), 1.0), interpolation="nearest")
            p = view.run.pruner
            ax.set_title(f"input, SLIC N={p.get('n_segments')} C={p.get('compactness')} "
                         f"σ={p.get('sigma')}: {len(reg.region_ids)} regions", fontsize=9)
            if reg.check:
                texts["input"].text(0.5, 1.0, textwrap.fill(reg.check, 44), color="red", fontsize=7, ha="center",
                                    va="top", transform=texts["input"].transAxes)
        else:
            ax.set_title(f"input ({view.geometry.input_size} px)", fontsize=9)
        ax.set_ylabel(f"{view.run.label}\n{view.run.model_name}", fontsize=10, fontweight="bold")
        if "density" in panel:
            if reg is None:
                _blank(panel["density"], f"{view.run.pruner_name}: no superpixel regions")
            else:
                _region_panel(panel["density"], view, "density" if reg.densities is not None else "size")
        if "weight" in panel:
            if reg is None or reg.weights is None:
                _blank(panel["weight"], "no density weights" if reg is None else
                       f"{view.run.pruner_name}: the same share in every region")
            else:
                _region_panel(panel["weight"], view, "weight")
        draw_kept_tokens(panel["kept"], view, texts["kept"])
        s = view.scores
        score = f"mIoU {s.miou:.2f} · {s.mask_hits}/{s.n_gt} GT masks at IoU≥0.5"
        title = f"FAILED: {textwrap.shorten(view.error, 60)}" if view.error else f"prediction\n{score}"
        _masks_panel(panel["pred"], texts["pred"], view.original, view.pred_masks, view.phrases, view.caption, title)
        _masks_panel(panel["gt"], texts["gt"], view.original, view.gt_masks, view.gt_labels, view.gt_caption,
                     f"ground truth\n{len(view.gt_masks)} masks")
    run0 = views[0].run
    head = f"{image_id} · {run0.data.get('name')} · {views[0].geometry.input_note}"
    if is_synthetic(run0.model_name, str(run0.data.get("name", ""))):
        head += f"\n{SYNTHETIC_LABEL}"
    fig.suptitle(head, fontsize=11)
    return fig


def write_token_figure(runs: Sequence[RunDir], image_id: str, out: Path, *, dpi: int = 110) -> Path:
    """Draw and save the figure (format from ``out``'s suffix, PNG by default)."""
    fig = token_figure(runs, image_id)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, metadata={"Software": None} if out.suffix in ("", ".png") else None)
    return out
