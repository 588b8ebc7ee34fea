"""Build the static HTML report of a study: tables, figures, per-image gallery.

Output (everything relative, open ``index.html`` from disk)::

    out/index.html
    out/figures/<model>_<data>_{metrics,pareto,coverage}.png
    out/gallery/<model>_<data>/<image_id>/{gt,r<i>_kept,r<i>_pred}.png

Tables come from :func:`eval.tables.build_tables` over the ``metrics.json``
files under the results folder, figures from :mod:`altp.viz.study`, the
gallery from every run directory under it that has per-image records and
predictions (:mod:`altp.report.gallery`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from altp.report.gallery import build_galleries
from altp.report.page import page_html
from altp.viz.rundir import RunDir, find_run_dirs
from altp.viz.study import write_study_figures
from altp.viz.style import SYNTHETIC_LABEL, is_synthetic
from eval.run_records import find_runs, load_pruner_defaults
from eval.tables import build_tables

__all__ = ["build_report"]

log = logging.getLogger(__name__)

_FIGURE_CAPTIONS = {
    "metrics": "each metric against visual tokens kept, per pruner (dashed: unpruned)",
    "pareto": "accuracy against remaining FLOPs and measured time per image; grey: Pareto front",
    "coverage": "object coverage against keep",
}


def _encoder(name: str | None) -> tuple[Any | None, str]:
    if name is None:
        return None, "per-image recall left out (no text encoder asked for)"
    from eval.text_encoders import TextEncoder, TextEncoderUnavailable

    try:
        return TextEncoder(name=name), f"per-image recall with the {name} text encoder"
    except TextEncoderUnavailable as err:
        return None, f"per-image recall left out: {err}"


def build_report(results: Path, out: Path, *, runs: list[RunDir] | None = None, conf_dir: Path | None = None,
                 text_encoder: str | None = "auto", max_images: int | None = 50) -> Path:
    """Write the report for ``results`` into ``out``; returns ``out/index.html``.

    Args:
        results: folder searched for ``metrics.json`` (tables, figures) and run directories (gallery).
        out: the report folder; its ``figures/`` and ``gallery/`` are rebuilt.
        runs: the gallery's run directories (default: every one under ``results``).
        conf_dir: Hydra config root whose ``pruner/*.yaml`` give default hyper-parameters.
        text_encoder: per-image recall encoder; ``"auto"`` = the runs' own (else minilm), None = none.
        max_images: at most this many gallery images per model and data (None: all).
    """
    results, out = Path(results), Path(out)
    for sub in ("figures", "gallery"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    records = find_runs(results) if results.is_dir() else []
    defaults = load_pruner_defaults(conf_dir) if conf_dir and Path(conf_dir).is_dir() else None
    tables = build_tables(records, pruner_defaults=defaults) if records else []
    fig_paths = write_study_figures(results, out / "figures", conf_dir=conf_dir, formats=("png",))
    figures = [(p.relative_to(out), f"{p.stem.rsplit('_', 1)[0]}: {_FIGURE_CAPTIONS.get(p.stem.rsplit('_', 1)[1], '')}")
               for p in fig_paths]
    runs = find_run_dirs(results) if runs is None else runs
    if text_encoder == "auto":
        text_encoder = next((r.text_encoder for r in runs if r.text_encoder), None) or "minilm"
    encoder, encoder_note = _encoder(text_encoder) if runs else (None, "")
    galleries = build_galleries(runs, out, encoder=encoder, max_images=max_images)
    names = [str(r.metrics.get("model")) + " " + str(r.metrics.get("data")) for r in records]
    names += [f"{r.model_name} {r.data.get('name')}" for r in runs]
    banner = f"{SYNTHETIC_LABEL}: the numbers here describe a synthetic benchmark." if any(
        is_synthetic(n) for n in names) else ""
    shas = sorted({str(r.metrics.get("git_sha")) for r in records if r.metrics.get("git_sha")})
    intro = (f"Built by python -m altp.report from {results} ({len(records)} run record(s), "
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'} with per-image outputs); "
             f"code version(s) {', '.join(shas) or 'unknown'}.")
    gallery_note = (
        "Per run: the kept tokens over the model's input (pruned tokens darkened; later PyramidDrop stages tinted; "
        "white lines: the run's superpixels), then the prediction over the original image (each mask outlined and "
        "numbered; the numbers match the phrases under it). Per-image scores "
        "follow the official protocol's per-image quantities: mIoU = the image's greedy mIoU (its mean over "
        "images is the reported mIoU); masks = GT masks paired at IoU >= 0.5 by the same greedy pairing; "
        f"recall = the official recall loop's hits / GT labels for this image ({encoder_note}). "
        "In brackets: difference from the unpruned run of the same model and data. AP50, METEOR and CIDEr have "
        "no per-image form in the protocol and are not shown here."
        + (f" At most {max_images} images per model and data." if max_images is not None else ""))
    html = page_html(title=f"Study report: {results}", banner=banner, intro=intro, tables=tables,
                     figures=figures, galleries=galleries, gallery_note=gallery_note)
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
