"""The paper's Tables 1-4 with this harness's runs beside them, one ``paper`` / ``ours`` row pair per cell.

``results/paper/paper_tables.csv`` (long format, one printed value a row; see its
README) holds every value of the paper's Tables 1-4. For each paper table this
builds:

* one table per (our model, data family) whose model is the paper's (``glamm``) or a
  variant of it (``glamm_shapes``, ``glamm_tiny``): each paper row is followed by an
  ``ours`` row holding our newest run of that cell, ``—`` where we have none;
* the paper's rows alone when no run of ours has that model, so the targets show.

A paper row (method, kept tokens, Table 4's SLIC N and C) is matched to our runs by
pruner, keep (the csv's ``keep``: ``floor(keep * V)`` = the paper's token count) and
hyper-parameters: the pruner's defaults (``conf/pruner/<name>.yaml``), except the
ones the row names (Table 4: ``n_segments`` = N, ``compactness`` = C), which the run
must have recorded with that value. Table 4 beside our runs also shows, next to N
(SLIC's target), the regions our run realised (``extras.regions.mean``; ``—`` in the
paper's rows, which report only N). Our FLOPs column shows one declared convention
(:data:`altp.flops.FLOPS_CONVENTIONS`), said in the footnote; the paper's is its
printed remaining-FLOPs column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altp.flops import FlopsConvention
from eval.run_records import REGIONS_KEY, RunRecord, newest_per_cell
from eval.table_format import MISSING, Table, pct

__all__ = ["PAPER_COLUMNS", "PaperCell", "load_paper", "paper_tables"]

PAPER_COLUMNS = (
    "table", "model", "split", "method", "kept_tokens", "keep",
    "superpixels_N", "compactness_C", "metric", "value", "note",
)  # fmt: skip
# Paper csv column -> the pruner hyper-parameter it sets (Table 4).
_HPARAM_COLUMNS = {"superpixels_N": ("N", "n_segments"), "compactness_C": ("C", "compactness")}
_METRICS = (
    ("meteor", "METEOR"),
    ("cider", "CIDEr"),
    ("ap50", "AP50"),
    ("miou", "mIoU"),
    ("recall", "Recall"),
)
_SPLITS = ("val", "test")
_SUBJECT = {
    1: "main results",
    2: "main results",
    3: "component ablation, DDC alone vs ALTP",
    4: "ALTP's SLIC segments N and compactness C at 57 tokens",
}
_PAPER_DATA = "GranD-f"
_SYNTHETIC_WORDS = ("synthetic", "shapes", "tiny")


@dataclass(frozen=True)
class PaperCell:
    """One row of a paper table: a method at a token budget and setting (values per split and metric)."""

    table: int
    model: str
    method: str
    kept_tokens: int
    keep: float
    hparams: tuple[tuple[str, float], ...]  # (pruner hyper-parameter, value) the row fixes


def load_paper(path: Path) -> list[dict[str, str]]:
    """The paper's values from ``path``, checked for the columns and types tables rely on.

    Raises:
        ValueError: a missing column, an empty file, or a row whose numbers do not parse
            (the message names the line).
    """
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in PAPER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks column(s) {missing}; expected {', '.join(PAPER_COLUMNS)}"
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has no rows")
    for line, row in enumerate(rows, start=2):
        try:
            _ = int(row["table"]), int(row["kept_tokens"]), float(row["keep"]), float(row["value"])  # parse to validate
            for col in _HPARAM_COLUMNS:
                if row[col]:
                    float(row[col])
        except ValueError as err:
            raise ValueError(f"{path} line {line}: {err}") from None
    return rows


def _cell(row: dict[str, str]) -> PaperCell:
    hp = tuple((name, float(row[col])) for col, (_, name) in _HPARAM_COLUMNS.items() if row[col])
    return PaperCell(table=int(row["table"]), model=row["model"], method=row["method"],
                     kept_tokens=int(row["kept_tokens"]), keep=float(row["keep"]), hparams=hp)  # fmt: skip


def _matches(
    run: RunRecord, cell: PaperCell, split: str, defaults: dict[str, dict[str, Any]]
) -> bool:
    m = run.metrics
    if m.get("split") != split or m.get("pruner") != cell.method:
        return False
    if not math.isclose(float(m.get("keep", 1.0)), cell.keep):
        return False
    got, fixed = dict(run.hparams), dict(cell.hparams)
    for key, value in fixed.items():  # the row's own setting must be recorded
        if key not in got or got[key] != value:
            return False
    return all(
        k not in got or got[k] == v
        for k, v in defaults.get(cell.method, {}).items()
        if k not in fixed
    )


def _our_tokens(runs: list[RunRecord]) -> str:
    kept = next(
        (
            r.metrics["mean_kept_tokens"]
            for r in runs
            if r.metrics.get("mean_kept_tokens") is not None
        ),
        None,
    )
    if kept is None:
        return MISSING
    return str(int(kept)) if float(kept).is_integer() else f"{kept:.1f}"


def _one_table(
    number: int,
    rows: list[dict[str, str]],
    ours: tuple[str, str, list[RunRecord]] | None,
    defaults: dict[str, dict[str, Any]],
    flops: FlopsConvention,
    source: Path,
) -> Table:
    cells = list(dict.fromkeys(_cell(r) for r in rows))  # paper order, each cell once
    value = {(_cell(r), r["split"], r["metric"]): r["value"] for r in rows}
    splits = [s for s in _SPLITS if any(r["split"] == s for r in rows)]
    metrics = [(k, name) for k, name in _METRICS if any(r["metric"] == k for r in rows)]
    has_flops = any(r["metric"] == "flops" for r in rows)
    hp_labels = [
        (label, name) for col, (label, name) in _HPARAM_COLUMNS.items() if any(r[col] for r in rows)
    ]

    # Table 4 beside our runs: our realised SLIC regions right after N, which is only SLIC's target.
    names = [name for _, name in hp_labels]
    at = names.index("n_segments") + 1 if ours is not None and "n_segments" in names else None

    def with_regions(settings: list[str], regions: str) -> list[str]:
        return settings if at is None else [*settings[:at], regions, *settings[at:]]

    hp_cols = with_regions([label for label, _ in hp_labels], "Regions")
    label_cols = ["Method", "Tokens", *hp_cols, "Source"]
    columns, groups = list(label_cols), [("", len(label_cols))]
    for split in splits:
        columns += [name for _, name in metrics]
        groups.append((split, len(metrics)))
    if has_flops:
        # The paper's rows are in its own convention; ours in the one chosen (the same by default).
        columns.append("FLOPs (paper)" if flops.name == "paper" else f"FLOPs (paper's; ours: {flops.name})")
        groups.append(("", 1))

    body, missing_flops = [], 0
    for cell in cells:
        hp = dict(cell.hparams)
        settings = [f"{hp[name]:g}" for _, name in hp_labels]
        line = [cell.method, str(cell.kept_tokens), *with_regions(settings, MISSING), "paper"]
        for split in splits:
            line += [value.get((cell, split, k), MISSING) for k, _ in metrics]
        if has_flops:
            line.append(
                next(
                    (value[(cell, s, "flops")] for s in _SPLITS if (cell, s, "flops") in value),
                    MISSING,
                )
            )
        body.append(line)
        if ours is None:
            continue
        # Several runs can fit one cell (records with and without a key the config leaves at its
        # default): the newest wins, as in eval.tables.
        by_split = {
            s: max((r for r in ours[2] if _matches(r, cell, s, defaults)),
                   key=lambda r: (r.finished, str(r.path)), default=None)
            for s in splits
        }  # fmt: skip
        found = [r for r in by_split.values() if r is not None]
        # FLOPs and regions from val (the paper prints one FLOPs column), else our first split.
        first = by_split.get("val") or (found[0] if found else None)
        regions = first.metrics.get(REGIONS_KEY) if first else None
        realised = MISSING if regions is None else f"{float(regions):.1f}"
        line = [cell.method, _our_tokens(found), *with_regions(settings, realised), "ours"]
        for split in splits:
            run = by_split[split]
            line += [pct(run.metrics.get(k)) if run else MISSING for k, _ in metrics]
        if has_flops:
            line.append(pct(first.metrics.get(flops.key)) if first else MISSING)
            missing_flops += first is not None and first.metrics.get(flops.key) is None
        body.append(line)

    model = rows[0]["model"]
    subject = f"Table {number} ({_SUBJECT.get(number, 'paper table')})"
    notes = [
        f"paper = as reported by the ALTP paper ({source}), not produced by this code; values x100"
    ]
    if ours is None:
        title = f"{subject}: paper ({model} on {_PAPER_DATA}); no run of ours with {model} yet"
    else:
        our_model, family, _ = ours
        title = f"{subject}: paper ({model} on {_PAPER_DATA}) vs ours ({our_model} on {family})"
        notes.append(
            "ours = this harness's newest run of the cell (pruner, keep, the pruner's default "
            "hyper-parameters except the row's N / C); Tokens = our mean kept visual tokens "
            "(PDrop's first stage keeps more, at equal FLOPs); — = no run yet"
        )
        if any(w in f"{our_model} {family}".lower() for w in _SYNTHETIC_WORDS):
            title += " -- SYNTHETIC benchmark / small model"
            notes.append(
                f"ours runs {our_model} on {family}, not {model} on {_PAPER_DATA}: compare how the "
                "methods rank and degrade, not the values"
            )
        if at is not None:
            notes.append(
                "Regions = realised SLIC regions of our run: those that own at least one visual "
                "token, mean over images of the val run, else the first split (metrics.json "
                f"{REGIONS_KEY}); the paper reports only the target N, so its rows show {MISSING}"
            )
        if has_flops:
            notes.append(f"FLOPs: paper = its remaining-FLOPs column; ours = {flops.description}, % "
                         f"(metrics.json {flops.key}; scripts/make_tables.py --flops {flops.name})")  # fmt: skip
            if missing_flops:
                notes.append(
                    f"{missing_flops} of our row(s) have no {flops.key} (recorded before that "
                    "convention existed): rerun them, or pass --flops prompt"
                )
    notes += [f"paper's note: {n}" for n in dict.fromkeys(r["note"] for r in rows if r["note"])]
    slug = f"paper_table{number}" + ("" if ours is None else f"_{ours[0]}_{ours[1]}")
    return Table(slug=slug, title=title, columns=columns, groups=groups, rows=body, notes=notes)


def paper_tables(
    runs: list[RunRecord],
    paper: list[dict[str, str]],
    *,
    pruner_defaults: dict[str, dict[str, Any]],
    flops: FlopsConvention,
    source: Path,
) -> list[Table]:
    """Every paper table, beside each matching set of our runs (see the module docstring).

    Args:
        runs: our run records (newest per cell is used).
        paper: rows of :func:`load_paper`.
        pruner_defaults: per pruner, its default hyper-parameters.
        flops: the FLOPs convention of our FLOPs column.
        source: the paper csv's path, named in the footnotes.
    """
    runs, _ = newest_per_cell(runs)
    tables = []
    for number in sorted({int(r["table"]) for r in paper}):
        rows = [r for r in paper if int(r["table"]) == number]
        model = rows[0]["model"]
        mine = sorted(
            {(str(r.metrics["model"]), r.family) for r in runs
             if str(r.metrics["model"]) == model or str(r.metrics["model"]).startswith(f"{model}_")}
        )  # fmt: skip
        if not mine:
            tables.append(_one_table(number, rows, None, pruner_defaults, flops, source))
        for our_model, family in mine:
            subset = [
                r for r in runs if str(r.metrics["model"]) == our_model and r.family == family
            ]
            tables.append(
                _one_table(
                    number, rows, (our_model, family, subset), pruner_defaults, flops, source
                )
            )
    return tables
