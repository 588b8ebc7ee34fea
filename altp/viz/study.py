"""Study figures from run records: every metric against kept tokens, FLOPs and time.

Reads the flat ``metrics.json`` files under a results folder (as the tables do:
newest record per cell, default hyper-parameters only, plus ALTP / DDC at the LLM input as
``altp@input`` / ``ddc@input``; :mod:`eval.run_records`)
and draws, per model and data split (``<model>_<data>_*.png`` and ``.pdf``):

* ``metrics``: METEOR and CIDEr (top row), AP50, mIoU and recall (bottom row)
  against the mean number of visual tokens kept after the first stage, one line
  per pruner, the unpruned run as a dashed line;
* ``pareto``: AP50, mIoU and recall against each recorded FLOPs ratio (keys
  ``flops*``) and against time per image, with the Pareto front (no
  other run is both cheaper and better) drawn in grey. The time is
  ``scripts/bench_throughput.py``'s measurement (1 / images per second, the median
  of its repeats, in steady state) when a ``throughput.json`` it wrote sits in the
  model's folder (``<results>/.../<model>/throughput.json``; the footer names its
  machine, settings and date), otherwise each run's recorded mean wall time (its
  machine's load and batch size: not a speed comparison, as the footer says);
* ``coverage``: object coverage against keep, when the records hold it.

Example (what ``make figures`` runs)::

    python -m altp.viz figures results --out results/figures
"""

from __future__ import annotations

import sys
import textwrap
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from altp.pruner_order import in_display_order
from altp.viz.style import SYNTHETIC_LABEL, is_synthetic, pruner_colour, save
from eval.run_records import RunRecord, find_runs, is_default, load_pruner_defaults, newest_per_cell

__all__ = ["METRICS", "THROUGHPUT_FILE", "study_groups", "with_measured_times", "write_study_figures"]

METRICS = (("meteor", "METEOR"), ("cider", "CIDEr"), ("ap50", "AP50"), ("miou", "mIoU"), ("recall", "Recall"))
_GROUNDING = (("ap50", "AP50"), ("miou", "mIoU"), ("recall", "Recall"))
_COST_LABELS = {
    # two lines each: one panel's width holds about 35 characters of axis label
    "flops_ratio": "remaining FLOPs (prompt), %\nprefill, eq. 5, own prompt",
    "flops_ratio_paper": "remaining FLOPs (paper), %\neq. 5, 32 text tokens",
    "generation_flops_ratio": "remaining FLOPs (generation), %\nprefill + decoding",
    "time_per_image_s": "measured time per image, s\n(as recorded; see the footer)",
    "bench_s_per_image": "time per image, s\n(bench_throughput; see the footer)",
}
THROUGHPUT_FILE = "throughput.json"


def _measured_times(results: Path, model: str) -> dict[str, Any] | None:
    """The ``throughput.json`` of ``model``'s folder under ``results`` (bench_throughput's output), or None."""
    import json

    for path in sorted(Path(results).rglob(f"{model}/{THROUGHPUT_FILE}")):
        info = json.loads(path.read_text(encoding="utf-8"))
        info["path"] = str(path)
        return info
    return None


def with_measured_times(runs: list[RunRecord], info: dict[str, Any] | None) -> list[RunRecord]:
    """``runs`` with ``bench_s_per_image`` (1 / images per second) where ``info`` measured their cell.

    A row matches a run by pruner and keep (the pruner's defaults: the bench composes
    ``pruner=<name> keep=<k>``); runs at other settings (``@input``) get none.
    """
    if not info:
        return runs
    by_cell = {(str(r["pruner"]), round(float(r["keep"]), 6)): 1.0 / float(r["images_per_s"])
               for r in info.get("rows", []) if r.get("images_per_s")}  # fmt: skip
    out = []
    for run in runs:
        key = (str(run.metrics["pruner"]), round(float(run.metrics["keep"]), 6))
        if key in by_cell and not _at_input(run):
            run = replace(run, metrics={**run.metrics, "bench_s_per_image": by_cell[key]})
        out.append(run)
    return out


def study_groups(results: Path, conf_dir: Path | None = None) -> dict[tuple[str, str], list[RunRecord]]:
    """(model, data) -> the newest default-setting run of each cell, for every group under ``results``."""
    runs, _ = newest_per_cell(find_runs(results))
    defaults = load_pruner_defaults(conf_dir) if conf_dir and Path(conf_dir).is_dir() else {}
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in runs:
        if is_default(r, defaults) or _at_input(r):
            groups[(str(r.metrics["model"]), str(r.metrics["data"]))].append(r)
    split_rank = {"val": 0, "test": 1}  # val before test, as in the tables
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0].family,
                                                       split_rank.get(str(kv[1][0].metrics["split"]), 2), kv[0][1])))


def _at_input(run: RunRecord) -> bool:
    """ALTP or DDC pruning at the LLM input (``pruner.layer=0``): a series of its own, ``<pruner>@input``."""
    return str(run.metrics["pruner"]) in ("altp", "ddc") and dict(run.hparams).get("layer") == 0


def _by_pruner(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = defaultdict(list)
    for r in runs:
        out[str(r.metrics["pruner"]) + ("@input" if _at_input(r) else "")].append(r)
    return {p: sorted(out[p], key=lambda r: float(r.metrics["keep"])) for p in in_display_order(out)}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _cost_keys(runs: list[RunRecord]) -> list[str]:
    """Every FLOPs ratio the records hold (``flops*`` numeric keys), then time per image."""
    flops = sorted({k for r in runs for k, v in r.metrics.items() if k.startswith("flops") and _num(v) is not None})
    flops.sort(key=lambda k: k != "flops_ratio")
    for key in ("bench_s_per_image", "time_per_image_s"):  # the measurement if there is one, else as recorded
        if any(_num(r.metrics.get(key)) for r in runs):
            return [*flops, key]
    return flops


def _cost_label(key: str) -> str:
    return _COST_LABELS.get(key, f"{key}, %" if key.startswith("flops") else key)


def _footer(fig: Figure, model: str, data: str, runs: list[RunRecord], timing: dict[str, Any] | None = None) -> None:
    devices = sorted({f"{r.metrics.get('device')}/{r.metrics.get('dtype')}" for r in runs})
    encoders = sorted({str(r.metrics.get("text_encoder")) for r in runs if r.metrics.get("text_encoder")})
    note = f"{model} on {data}: {len(runs)} runs; device {', '.join(devices)}; recall text encoder {', '.join(encoders)}"
    if is_synthetic(model, data):
        note = f"{SYNTHETIC_LABEL}. {note}"
    if timing is not None and any(_num(r.metrics.get("bench_s_per_image")) for r in runs):
        rows = timing.get("rows") or [{}]
        row = rows[0]
        repeats = len(row.get("images_per_s_runs", [])) or 1
        note += (f"; time per image = 1 / images per second measured by scripts/bench_throughput.py on "
                 f"{timing.get('machine', timing.get('device', '?'))} ({timing.get('measured', 'date not recorded')}): "
                 f"first {timing.get('images')} images of {timing.get('data')}, batch {row.get('batch_size')}, "
                 f"{row.get('workers')} input worker, {timing.get('threads')} torch thread, steady state, median of "
                 f"{repeats} runs (round-robin); runs at other settings ({', '.join(sorted(_unmeasured(runs))) or '-'}) "
                 f"have no time")
    elif any(_num(r.metrics.get("time_per_image_s")) for r in runs):
        note += ("; time per image as each run recorded it (its machine's load and batch size, run.json "
                 "'throughput'): not a speed comparison, which scripts/bench_throughput.py measures")
    # wrapped to the figure's width (about 15 characters of 8 pt text per inch), never cut off at its edges
    note = "\n".join(textwrap.wrap(note, width=max(40, int(fig.get_figwidth() * 15))))
    fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, color="dimgrey")


def _unmeasured(runs: list[RunRecord]) -> set[str]:
    return {str(r.metrics["pruner"]) + ("@input" if _at_input(r) else "") for r in runs
            if _num(r.metrics.get("bench_s_per_image")) is None}  # fmt: skip


def _lines(ax: Axes, groups: dict[str, list[RunRecord]], x_key: str, y_key: str, scale_x: float = 1.0) -> None:
    for pruner, rs in groups.items():
        pts = [(_num(r.metrics.get(x_key)), _num(r.metrics.get(y_key))) for r in rs]
        pts = [(x * scale_x, 100 * y) for x, y in pts if x is not None and y is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        if pruner == "none" and x_key == "mean_kept_tokens":
            ax.axhline(ys[0], color=pruner_colour(pruner), ls="--", lw=1.2, label="none (unpruned)")
            ax.plot(xs, ys, "*", color=pruner_colour(pruner), ms=10)
        else:
            marker = "*" if pruner == "none" else "o"
            ax.plot(xs, ys, marker=marker, ms=9 if pruner == "none" else 5, color=pruner_colour(pruner),
                    label="none (unpruned)" if pruner == "none" else pruner)


def _pareto_front(ax: Axes, runs: list[RunRecord], x_key: str, y_key: str, scale_x: float) -> None:
    pts = [(_num(r.metrics.get(x_key)), _num(r.metrics.get(y_key))) for r in runs]
    # Cheapest first, the best of equal costs first: a point is on the front if it beats every
    # cheaper one. Costs equal to 3 significant digits tie (PDrop's solved lambda matches
    # FastV's FLOPs to 0.1 %, by design).
    pts = sorted(((float(f"{x * scale_x:.3g}"), 100 * y) for x, y in pts if x is not None and y is not None),
                 key=lambda p: (p[0], -p[1]))
    front, best = [], -np.inf
    for x, y in pts:
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="grey", lw=4, alpha=0.3, zorder=0, label="Pareto front")


def metrics_figure(model: str, data: str, runs: list[RunRecord]) -> Figure:
    # One row per metric group (captioning, grounding), the legend in the free slot: 12 in wide,
    # so the report's ~1350 px column shows it near 1:1 at 120 dpi (ticks ~15 px; a row of five was ~7 px).
    groups = _by_pruner(runs)
    fig = Figure(figsize=(12.0, 7.6), layout="constrained")
    slots = ("meteor", "cider", "legend", "ap50", "miou", "recall")  # row by row
    axes: dict[str, Axes] = dict(zip(slots, np.asarray(fig.subplots(2, 3)).ravel(), strict=True))
    for key, name in METRICS:
        ax = axes[key]
        _lines(ax, groups, "mean_kept_tokens", key)
        ax.set_title(name)
        ax.set_xlabel("visual tokens kept (mean, first stage)")
        ax.grid(alpha=0.3)
    for key in ("meteor", "ap50"):
        axes[key].set_ylabel("score x100")
    axes["legend"].set_axis_off()
    axes["legend"].legend(*axes["meteor"].get_legend_handles_labels(), loc="center", fontsize=10)
    fig.suptitle(f"{model} · {data}: metrics against kept tokens")
    _footer(fig, model, data, runs)
    cast(ConstrainedLayoutEngine, fig.get_layout_engine()).set(rect=(0, 0.03, 1, 0.97))  # layout="constrained"
    return fig


def pareto_figure(model: str, data: str, runs: list[RunRecord], timing: dict[str, Any] | None = None) -> Figure | None:
    costs = _cost_keys(runs)
    if not costs:
        return None
    groups = _by_pruner(runs)
    fig = Figure(figsize=(4.2 * len(_GROUNDING), 3.6 * len(costs)), layout="constrained")
    axes = np.asarray(fig.subplots(len(costs), len(_GROUNDING), squeeze=False))
    for row, cost in zip(axes, costs, strict=True):
        scale = 100.0 if cost.startswith("flops") else 1.0
        for ax, (key, name) in zip(row, _GROUNDING, strict=True):
            _pareto_front(ax, runs, cost, key, scale)
            _lines(ax, groups, cost, key, scale_x=scale)
            ax.set_xlabel(_cost_label(cost))
            ax.set_ylabel(f"{name} x100")
            ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=9)
    fig.suptitle(f"{model} · {data}: accuracy against cost (up and left is better)")
    _footer(fig, model, data, runs, timing)
    cast(ConstrainedLayoutEngine, fig.get_layout_engine()).set(rect=(0, 0.04, 1, 0.96))
    return fig


def coverage_figure(model: str, data: str, runs: list[RunRecord]) -> Figure | None:
    keys = [k for k in ("object_coverage", "object_coverage_final") if any(_num(r.metrics.get(k)) for r in runs)]
    if not keys:
        return None
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for pruner, rs in _by_pruner(runs).items():
        for key, ls in zip(keys, ("-", ":"), strict=False):
            pts = [(float(r.metrics["keep"]), _num(r.metrics.get(key))) for r in rs]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, ls, marker="*" if pruner == "none" else "o", color=pruner_colour(pruner),
                        label=pruner if key == keys[0] else None)
    ax.set_xlabel("keep (fraction of visual tokens)")
    ax.set_ylabel("object coverage" + (" (solid: first stage, dotted: final)" if len(keys) > 1 else ""))
    ax.grid(alpha=0.3)
    ax.set_ylim(-0.05, 1.1)
    # inside the axes, where the curves leave room (high keep, low coverage): outside, a figure
    # legend ran into the title
    ax.legend(loc="lower right", ncols=2, fontsize=8, framealpha=0.9)
    fig.suptitle(f"{model} · {data}: object coverage against keep", fontsize=11)
    _footer(fig, model, data, runs)
    cast(ConstrainedLayoutEngine, fig.get_layout_engine()).set(rect=(0, 0.1, 1, 0.9))
    return fig


def write_study_figures(results: Path, out_dir: Path, *, conf_dir: Path | None = None,
                        formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Draw every figure for every (model, data) under ``results`` into ``out_dir``; returns the files.

    A group whose runs hold no scores (made with ``evaluate=false``) gets no metric figures
    (they would be empty panels): a note on stderr says so.

    Raises:
        ValueError: there are run records, but none of them has scores (nothing would be drawn).
    """
    written, unscored = [], []
    for (model, data), runs in study_groups(results, conf_dir).items():
        scored = any(_num(r.metrics.get(key)) is not None for r in runs for key, _ in METRICS)
        if not scored:
            unscored.append(f"{model} {data}")
            print(f"note: no run of {model} {data} under {results} has scores (made with evaluate=false?): "
                  f"no metric figures for it", file=sys.stderr)
        timing = _measured_times(results, model)
        figs = {"metrics": metrics_figure(model, data, runs) if scored else None,
                "pareto": pareto_figure(model, data, with_measured_times(runs, timing), timing) if scored else None,
                "coverage": coverage_figure(model, data, runs)}
        for name, fig in figs.items():
            if fig is not None:
                written += save(fig, Path(out_dir) / f"{model}_{data}_{name}", formats=formats)
    if unscored and not written:
        raise ValueError(f"no run under {results} has scores ({', '.join(unscored)}: made with evaluate=false?); "
                         f"nothing to draw: score them (python -m eval.gcg) or rerun with evaluate=true")
    return written
