"""Token-retention figures: the drawn cells are exactly the recorded kept tokens.

The rendered checks draw with the real plotting function on matplotlib's Agg
canvas and read the pixels back; the oracle is the kept index list itself
(token i = grid row i // cols, column i % cols), not the code that draws.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from altp.viz.geometry import geometry_for
from altp.viz.image_view import ImageView, image_view
from altp.viz.overlays import mask_anchor, mask_overlay, stage_cells
from altp.viz.rundir import RunDir, find_run_dirs, load_run_dir
from altp.viz.study import metrics_figure, study_groups
from altp.viz.tokens import draw_kept_tokens, token_figure
from eval.per_image import ImageScores

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "results" / "shapes" / "ci_slice" / "glamm_shapes" / "shapes_val"
GLAMM = {"_target_": "altp.models.glamm_shapes.build_glamm_shapes"}


def slice_runs(tmp: Path, n_images: int = 3) -> list[RunDir]:
    """The committed CI slice's run directories with their split generated small under ``tmp``.

    A generated split of n images is the prefix of a larger one (same seed), so the
    slice's first images are the same files as in the 200-image split.
    """
    runs = []
    for run in find_run_dirs(SLICE):
        root = tmp / "data" / "shapes"
        data = {**run.data, "root": str(root), "gt_dir": str(root / "annotations"),
                "image_dir": str(root / "images"), "generate": {**run.data["generate"], "n_images": n_images}}
        runs.append(dataclasses.replace(run, data=data))
    return runs


def _view(kept_per_stage: list[list[int]], layers: list[int]) -> ImageView:
    geo = geometry_for(GLAMM)
    run = RunDir(path=Path("."), model=GLAMM, pruner={"name": "test"}, data={}, keep=0.1)
    blank = np.zeros((8, 8, 3), np.uint8)
    return ImageView(
        run=run, image_id="x", geometry=geo, pixels=np.full((336, 336, 3), 200, np.uint8),
        stages=stage_cells(kept_per_stage, geo.grid), kept_counts=[len(k) for k in kept_per_stage],
        recorded_counts=[len(k) for k in kept_per_stage], stage_layers=layers, coverage=None, regions=None,
        original=blank, pred_masks=[], phrases=[], caption="", gt_masks=[], gt_labels=[], gt_caption="",
        scores=ImageScores(miou=0.0, mask_hits=0, n_gt=0, n_pred=0, recall_hits=None, n_gt_labels=0), error=None,
    )  # fmt: skip


def _render_kept(view: ImageView) -> np.ndarray:
    """The kept-token panel alone, one screen pixel per input pixel: (336, 336, 3) uint8."""
    fig = Figure(figsize=(3.36, 3.36), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    draw_kept_tokens(ax, view)
    ax.set_axis_off()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _centres(arr: np.ndarray) -> np.ndarray:
    """(576, 3): the rendered colour at the centre of every 14 px token cell, row-major."""
    idx = np.arange(24) * 14 + 7
    return arr[idx][:, idx].reshape(576, 3).astype(int)


def test_kept_panel_marks_exactly_the_kept_cells():
    kept = sorted(np.random.default_rng(0).choice(576, size=57, replace=False).tolist())
    centres = _centres(_render_kept(_view([kept], [2])))
    untouched = np.all(centres == 200, axis=1)
    assert set(np.flatnonzero(untouched).tolist()) == set(kept)
    assert np.all(centres[~untouched].max(axis=1) < 100), "pruned cells must be darkened"


def test_kept_panel_shades_each_stage():
    rng = np.random.default_rng(1)
    first = sorted(rng.choice(576, size=120, replace=False).tolist())
    second = sorted(rng.choice(first, size=40, replace=False).tolist())
    centres = _centres(_render_kept(_view([first, second], [2, 4])))
    kept_to_end = np.all(centres == 200, axis=1)
    pruned_first = centres.max(axis=1) < 100
    dropped_later = ~kept_to_end & ~pruned_first
    assert set(np.flatnonzero(kept_to_end).tolist()) == set(second)
    assert set(np.flatnonzero(dropped_later).tolist()) == set(first) - set(second)
    assert len({tuple(c) for c in centres[dropped_later]}) == 1  # one tint for the stage


def test_stage_cells_rejects_indices_outside_the_grid():
    with pytest.raises(ValueError, match="outside the 24x24"):
        stage_cells([[0, 576]], (24, 24))


def test_geometry_dispatch():
    assert geometry_for(GLAMM).grid == (24, 24)
    omg = geometry_for({"_target_": "altp.models.omg_llava_tiny.build_omg_llava_tiny"})
    assert (omg.grid, omg.input_size, omg.cell) == ((16, 16), 1024, 64)
    with pytest.raises(ValueError, match="known families: glamm, omg_llava"):
        geometry_for({"_target_": "somewhere.else.build"})


def test_committed_slice_regions_and_tokens_match_the_records(tmp_path):
    runs = {r.pruner_name: r for r in slice_runs(tmp_path)}
    altp = runs["altp"]
    image_id = altp.image_ids[0]
    record = json.loads((altp.path / "records" / f"{image_id}.json").read_text())
    view = image_view(altp, image_id)
    # Superpixels recomputed from the run's pruner config give the recorded regions.
    assert view.regions is not None and view.regions.check == ""
    assert view.regions.sizes == record["extras"]["region_sizes"]
    assert np.flatnonzero(view.stages.ravel()).tolist() == record["kept_tokens"]
    fig = token_figure([altp, runs["pdrop"], runs["none"]], image_id)
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith(f"kept {len(record['kept_tokens'])}/576") for t in titles)
    assert any("all 576 tokens kept" in t for t in titles)


def test_load_run_dir_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run_dir(tmp_path)


def test_mask_overlay_outlines_and_numbers_without_recolouring_the_object():
    colour = np.array([40, 200, 220], np.uint8)  # a "cyan" object: a fill colour would read as its own
    image = np.broadcast_to(colour, (200, 200, 3)).copy()
    square = np.zeros((200, 200), bool)
    square[40:160, 40:160] = True
    bar = np.zeros((200, 200), bool)
    bar[170:195, 20:180] = True
    out = mask_overlay(image, [square, bar])
    assert (out[60, 60] == colour).all() and (out[140, 70] == colour).all()  # inside, off border and number
    assert (out[5, 5] == colour).all()  # outside every mask
    assert (out[100, 40] == 255).all() and (out[100, 39] == 0).all()  # white inner ring, black outer ring
    assert (out[169, 100] == 0).all() and (out[170, 100] == 255).all()  # the bar's outline too
    for y, x in (mask_anchor(square), mask_anchor(bar)):  # each mask's number: white on black at its anchor
        patch = out[y - 7:y + 8, x - 7:x + 8].reshape(-1, 3)
        assert (patch == 255).all(axis=1).any() and (patch == 0).all(axis=1).any()
    assert mask_anchor(np.zeros((4, 4), bool)) == (-1, -1)


def test_metrics_figure_ticks_are_legible_in_the_report_column():
    """At a 1400 px page the report shows figures ~1330 px wide: tick labels must stay >= 11 px there."""
    (model, data), runs = next(iter(study_groups(ROOT / "results", ROOT / "conf").items()))
    fig = metrics_figure(model, data, runs)
    scale = min(1.0, 1330 / (fig.get_figwidth() * 120))  # saved at 120 dpi, shrunk to the column
    sizes = [t.get_fontsize() for ax in fig.axes if ax.axison for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert sizes and min(sizes) * 120 / 72 * scale >= 11


def test_pareto_time_row_reads_the_benchmark_and_names_its_machine():
    from altp.viz.study import pareto_figure, with_measured_times

    (model, data), runs = next(iter(study_groups(ROOT / "results", ROOT / "conf").items()))
    timing = {"machine": "Test CPU, 2 cores", "measured": "2026-12-06", "data": "shapes_val", "images": 64,
              "threads": 1, "rows": [{"pruner": "fastv", "keep": 0.1, "images_per_s": 4.0, "batch_size": 1,
                                      "workers": 1, "images_per_s_runs": [3.9, 4.0, 4.1]},
                                     {"pruner": "none", "keep": 1.0, "images_per_s": 2.0, "batch_size": 1,
                                      "workers": 1, "images_per_s_runs": [2.0, 2.0, 2.1]}]}  # fmt: skip
    timed = {(r.metrics["pruner"], float(r.metrics["keep"]), r.metrics.get("bench_s_per_image"))
             for r in with_measured_times(runs, timing)}  # fmt: skip
    assert ("fastv", 0.1, 0.25) in timed and ("none", 1.0, 0.5) in timed  # 1 / images per second
    assert all(t is None for p, k, t in timed if (p, k) not in (("fastv", 0.1), ("none", 1.0)))
    fig = pareto_figure(model, data, with_measured_times(runs, timing), timing)
    assert fig is not None
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any("bench_throughput" in x for x in labels) and not any("as recorded" in x for x in labels)
    footer = " ".join(t.get_text() for t in fig.texts).replace("\n", " ")
    assert "Test CPU, 2 cores" in footer and "median of 3 runs" in footer and "batch 1" in footer
