"""Paper-shaped tables (Markdown, LaTeX, CSV) built only from run records.

A run record is a directory with a flat ``metrics.json`` (written by
:func:`altp.run.runner.run`): ``model``, ``pruner``, ``keep``, ``data``, ``split``,
the five metrics as fractions, ``flops_ratio`` (remaining fraction),
``mean_kept_tokens``, ``pruner.<hparam>`` keys and provenance.

Tables, one set per (model, data family) found; data family = the ``data`` name
without its ``_val`` / ``_test`` suffix, so val and test runs share a row:

* main (Table 1 for ``glamm``, Table 2 for ``omg_llava``): rows pruner x keep at
  the pruner's default hyper-parameters (``conf/pruner/<name>.yaml``); columns
  val/test x METEOR CIDEr AP50 mIoU Recall, then remaining FLOPs, then object
  coverage (``ObjCov``, :mod:`altp.coverage`) when a run of the table records it;
* ablation (Table 3): none / uniform / random / ddc / altp rows only;
* beyond the paper: pruners the paper does not compare (VisionZip, DivPrune, DART, ...) and
  ALTP / DDC at the LLM input (``pruner.layer=0``), with the unpruned, FastV and ALTP rows
  beside them; those runs stay out of the main and sweep tables;
* sweep (Table 4): ALTP runs, one row per setting of the ``pruner.*`` keys that vary;
* with the paper's numbers (:mod:`eval.paper_tables`): the paper's Tables 1-4, each
  paper row followed by our run of that cell.

Metrics are shown x100 with one decimal; the FLOPs column shows one declared
convention of :data:`altp.flops.FLOPS_CONVENTIONS` (``flops=``, default
:data:`DEFAULT_FLOPS`), named in each table's footnote. Several records of one cell (same
model, data, split, pruner, keep and hyper-parameters): the newest wins, by
``finished_at`` (ISO time in metrics.json) when present, else the file's
modification time, and the table's notes list the records set aside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from altp.flops import FLOPS_CONVENTIONS, FlopsConvention
from altp.pruner_order import pruner_rank
from eval.paper_tables import load_paper, paper_tables
from eval.run_records import (
    REGIONS_KEY,
    RunRecord,
    find_failed,
    find_runs,
    is_default,
    load_pruner_defaults,
    newest_per_cell,
    sortable,
)
from eval.table_format import MISSING, Table, pct, to_csv, to_latex, to_markdown

__all__ = [
    "DEFAULT_FLOPS",
    "METRICS",
    "RunRecord",
    "Table",
    "build_tables",
    "find_runs",
    "flops_convention",
    "load_pruner_defaults",
    "newest_per_cell",
    "paper_tables",
    "to_csv",
    "to_latex",
    "to_markdown",
    "write_tables",
]

METRICS = (
    ("meteor", "METEOR"),
    ("cider", "CIDEr"),
    ("ap50", "AP50"),
    ("miou", "mIoU"),
    ("recall", "Recall"),
)
SPLITS = ("val", "test")
_ABLATION = ("none", "uniform", "random", "ddc", "altp")
#: the pruners of the paper's tables; the others (and ALTP/DDC at the LLM input) go to "beyond the paper"
PAPER_PRUNERS = ("none", "fastv", "pdrop", "random", "uniform", "ddc", "altp")
_BEYOND_REFERENCES = ("none", "fastv", "altp")
_MAIN_NUMBER = {"glamm": "Table 1", "omg_llava": "Table 2"}
_SYNTHETIC_WORDS = ("synthetic", "shapes", "tiny")
_LABELS = ["Method", "Tokens", "keep"]
# The paper's convention: our FLOPs column is then comparable with the paper's printed one.
DEFAULT_FLOPS = "paper"

Rows = list[tuple[list[str], dict[str, "RunRecord"]]]  # (row labels, run per split)


def _regions_cell(run: RunRecord) -> str:
    v = run.metrics.get(REGIONS_KEY)
    return MISSING if v is None else f"{float(v):.1f}"


def flops_header(flops: FlopsConvention) -> str:
    """The FLOPs column's header, naming its convention (``FLOPs (paper)``)."""
    return f"FLOPs ({flops.name})"


def keep_cell(run: RunRecord) -> str:
    """The keep a row ran at: the command line's, or, where the pruner's schedule ignores it
    (PDrop with ``lambda_``), the fraction kept after each stage (``0.5>0.25>0.125``)."""
    fractions = run.metrics.get("kept_fraction_per_stage")
    if run.metrics.get("keep_ignored") and fractions:
        return ">".join(f"{f:.3g}" for f in fractions)
    return f"{float(run.metrics['keep']):g}"


def _tokens(runs: list[RunRecord]) -> str:
    """Kept visual tokens of a row (mean over images, from the first split that has it)."""
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


def _metric_table(
    *,
    slug: str,
    title: str,
    label_cols: list[str],
    rows: Rows,
    splits: list[str],
    flops: FlopsConvention,
) -> Table:
    """Row labels, then METEOR..Recall per split, then FLOPs (from val, else the first split)."""
    # Realised SLIC regions (DDC / ALTP records since the field exists), next to the row's labels.
    regions = any(r.metrics.get(REGIONS_KEY) is not None for _, b in rows for r in b.values())
    columns, groups = list(label_cols), [("", len(label_cols) + regions)]
    if regions:
        columns.append("Regions")
    for split in splits:
        columns += [name for _, name in METRICS]
        groups.append((split, len(METRICS)))
    columns.append(flops_header(flops))
    coverage = any(
        r.metrics.get("object_coverage") is not None for _, b in rows for r in b.values()
    )
    if coverage:
        columns.append("ObjCov")
    groups.append(("", 1 + coverage))
    body, notes, missing_flops = [], [], 0
    for labels, by_split in rows:
        cells = list(labels)
        if regions:
            cells.append(_regions_cell(by_split.get("val") or next(iter(by_split.values()))))
        for split in splits:
            run = by_split.get(split)
            cells += [pct(run.metrics.get(key)) if run else MISSING for key, _ in METRICS]
            if run is not None and run.metrics.get("n_failed"):
                failed = list(run.metrics.get("failed_images") or [])
                named = f" ({', '.join(failed[:5])}{f' +{len(failed) - 5} more' if len(failed) > 5 else ''})"
                notes.append(
                    f"{' '.join(labels)} ({split}): {run.metrics['n_failed']} of "
                    f"{run.metrics.get('n_images')} images failed{named if failed else ''} and score as "
                    "empty predictions; rerunning the run retries them"
                )
        flops_run = by_split.get("val") or next(iter(by_split.values()))
        cells.append(pct(flops_run.metrics.get(flops.key)))
        missing_flops += flops_run.metrics.get(flops.key) is None
        if coverage:
            cells.append(pct(flops_run.metrics.get("object_coverage")))
        body.append(cells)
    encoders = sorted({str(r.metrics.get("text_encoder")) for _, b in rows for r in b.values()})
    notes.append(
        f"metrics x100; FLOPs = {flops.description}, % (metrics.json {flops.key}; "
        f"scripts/make_tables.py --flops {flops.name}); recall text encoder: {', '.join(encoders)}"
    )
    if missing_flops:
        notes.append(
            f"{missing_flops} row(s) have no {flops.key} (recorded before that convention "
            "existed): rerun them, or pass --flops prompt"
        )
    if regions:
        notes.append(
            "Regions = SLIC regions that own at least one visual token, mean over images of the val "
            "run like FLOPs (the N of n_segments is only SLIC's target; metrics.json also has "
            "extras.regions.min, single_region_share and extras.slic_segments.*)"
        )
    if coverage:
        notes.append(
            "ObjCov = GT object patches kept at the first pruning stage, mean over objects then "
            "images, % from the val run like FLOPs (per-stage values in metrics.json); unpruned = 100"
        )
    return Table(slug=slug, title=title, columns=columns, groups=groups, rows=body, notes=notes)


def _group_rows(runs: list[RunRecord], label: Callable[[RunRecord], tuple[Any, list[str]]]) -> Rows:
    """Runs that share a label become one row (one run per split), rows ordered by label's sort key."""
    grouped: dict[tuple[Any, tuple[str, ...]], dict[str, RunRecord]] = {}
    for run in runs:
        key, cells = label(run)
        grouped.setdefault((key, tuple(cells)), {})[str(run.metrics["split"])] = run
    return [
        (list(cells), by_split)
        for (_, cells), by_split in sorted(grouped.items(), key=lambda kv: kv[0][0])
    ]


def _row_key(run: RunRecord, *, default: bool) -> tuple:
    """Unpruned first, then keep descending, then the paper's method order.

    Default-setting runs of one pruner and keep share a row whatever else they
    record (val and test side by side); other settings get rows of their own.
    """
    pruner, keep = str(run.metrics["pruner"]), float(run.metrics["keep"])
    return (pruner != "none", -keep, pruner_rank(pruner), pruner, "" if default else repr(run.hparams))


def _at_input(run: RunRecord) -> bool:
    """A run of the paper's method (or its ablation) pruning at the LLM input (``pruner.layer=0``)."""
    return str(run.metrics["pruner"]) in ("altp", "ddc") and dict(run.hparams).get("layer") == 0


def _changed(run: RunRecord, defaults: dict[str, dict[str, Any]]) -> str:
    """``key=value`` of the hyper-parameters that differ from the pruner's config, or ''."""
    want = defaults.get(str(run.metrics["pruner"]), {})
    return ", ".join(f"{k}={v}" for k, v in run.hparams if k in want and k != "keep" and want[k] != v)


def _model_tables(
    model: str,
    family: str,
    mine: list[RunRecord],
    defaults: dict[str, dict[str, Any]],
    flops: FlopsConvention,
) -> list[Table]:
    splits = [s for s in SPLITS if any(r.metrics["split"] == s for r in mine)]
    splits += sorted({str(r.metrics["split"]) for r in mine} - set(SPLITS))
    where = f"{model} on {family}"
    if any(w in f"{model} {family}".lower() for w in _SYNTHETIC_WORDS):
        where += " (synthetic benchmark / small model, not GranD-f with the paper's model)"
    tag = f"{model}_{family}"

    paper_rows = [r for r in mine if str(r.metrics["pruner"]) in PAPER_PRUNERS]
    main = [r for r in paper_rows if is_default(r, defaults)]
    # A pruner with no run at its default setting still shows up, labelled with its setting.
    shown = {str(r.metrics["pruner"]) for r in main}
    main += [r for r in paper_rows if str(r.metrics["pruner"]) not in shown and not _at_input(r)]

    def label(r: RunRecord) -> tuple[Any, list[str]]:
        name, default = str(r.metrics["pruner"]), is_default(r, defaults)
        if not default and r.hparams:
            name += " (" + ", ".join(f"{k}={v}" for k, v in r.hparams) + ")"
        tokens = _tokens([x for x in mine if x.cell[3:] == r.cell[3:]])
        return _row_key(r, default=default), [name, tokens, keep_cell(r)]

    number = _MAIN_NUMBER.get(model, "Main table")
    tables = [
        _metric_table(slug=f"main_{tag}", title=f"{number}: {where}", label_cols=_LABELS,
                      rows=_group_rows(main, label), splits=splits, flops=flops)
    ]  # fmt: skip
    beyond = [r for r in mine if _at_input(r) or str(r.metrics["pruner"]) not in PAPER_PRUNERS]
    if beyond:
        # The paper's references beside them: the unpruned model, FastV and ALTP at their defaults.
        beyond += [r for r in main if str(r.metrics["pruner"]) in _BEYOND_REFERENCES and is_default(r, defaults)]

        def beyond_label(r: RunRecord) -> tuple[Any, list[str]]:
            changed = _changed(r, defaults)
            name = str(r.metrics["pruner"]) + (f" ({changed})" if changed else "")
            tokens = _tokens([x for x in mine if x.cell[3:] == r.cell[3:]])
            return _row_key(r, default=not changed), [name, tokens, keep_cell(r)]

        tables.append(
            _metric_table(slug=f"beyond_{tag}",
                          title=f"Beyond the paper: the 2025 baselines and ALTP/DDC at the LLM input: {where}",
                          label_cols=_LABELS, rows=_group_rows(beyond, beyond_label), splits=splits, flops=flops)
        )  # fmt: skip
    ablation = [r for r in main if r.metrics["pruner"] in _ABLATION]
    names = {str(r.metrics["pruner"]) for r in ablation}
    if names & {"ddc", "altp"} and len(names) > 1:
        tables.append(
            _metric_table(slug=f"ablation_{tag}", title=f"Table 3 (component ablation): {where}",
                          label_cols=_LABELS, rows=_group_rows(ablation, label), splits=splits,
                          flops=flops)
        )  # fmt: skip
    sweep = [r for r in mine if r.metrics["pruner"] == "altp" and not _at_input(r)]  # the LLM-input rows: beyond
    keys = sorted({k for r in sweep for k, _ in r.hparams})
    varying = [k for k in keys if len({repr(dict(r.hparams).get(k)) for r in sweep}) > 1]
    if varying:

        def sweep_label(r: RunRecord) -> tuple[Any, list[str]]:
            hp = dict(r.hparams)
            cells = [str(hp.get(k, MISSING)) for k in varying]
            return (-float(r.metrics["keep"]), tuple(sortable(hp.get(k)) for k in varying)), [
                keep_cell(r),
                *cells,
            ]

        tables.append(
            _metric_table(slug=f"sweep_{tag}", title=f"Table 4 (ALTP hyper-parameters): {where}",
                          label_cols=["keep", *varying], rows=_group_rows(sweep, sweep_label), splits=splits,
                          flops=flops)
        )  # fmt: skip
    return tables


def _duplicate_notes(
    dropped: list[tuple[RunRecord, RunRecord]], mine: list[RunRecord]
) -> list[str]:
    """What newest-wins set aside, named against the record that won (not an intermediate one).

    The unpruned model's copies (the run layout that gave pruner=none a directory per
    keep) get one line per cell.
    """
    winner = {r.cell: r for r in mine}
    notes, unpruned = [], {}
    for old, _ in dropped:
        new = winner.get(old.cell)
        if new is None:
            continue
        if new.metrics.get("pruner") == "none":
            unpruned.setdefault(new.path, []).append(old.path)
        else:
            notes.append(f"duplicate run of one cell: kept the newest, {new.path}, over {old.path}")
    for new_path, old_paths in unpruned.items():
        notes.append(
            f"unpruned model recorded {1 + len(old_paths)} times (pruner=none ignores keep): "
            f"kept the newest, {new_path}, over {', '.join(str(p) for p in old_paths)}"
        )
    return notes


def build_tables(
    runs: list[RunRecord],
    *,
    pruner_defaults: dict[str, dict[str, Any]] | None = None,
    flops: str = DEFAULT_FLOPS,
) -> list[Table]:
    """Main, ablation and sweep tables for every (model, data family) in ``runs``.

    Args:
        runs: run records (duplicates of a cell allowed: the newest wins and a
            note in the table says which record was set aside).
        pruner_defaults: per pruner, its default hyper-parameters (see
            :func:`load_pruner_defaults`); runs that differ go to the sweep table
            only. None treats every run as default.
        flops: the FLOPs convention of the FLOPs column, a key of
            :data:`altp.flops.FLOPS_CONVENTIONS`.
    """
    convention = flops_convention(flops)
    runs, dropped = newest_per_cell(runs)
    tables = []
    for model, family in sorted({(str(r.metrics["model"]), r.family) for r in runs}):
        mine = [r for r in runs if str(r.metrics["model"]) == model and r.family == family]
        model_tables = _model_tables(model, family, mine, pruner_defaults or {}, convention)
        model_tables[0].notes += _duplicate_notes(dropped, mine)
        tables += model_tables
    return tables


def flops_convention(name: str) -> FlopsConvention:
    """The FLOPs convention called ``name``; ValueError listing the valid ones otherwise."""
    if name not in FLOPS_CONVENTIONS:
        raise ValueError(
            f"unknown FLOPs convention {name!r}; choose one of: {', '.join(FLOPS_CONVENTIONS)}"
        )
    return FLOPS_CONVENTIONS[name]


def write_tables(
    results: Path,
    out_dir: Path,
    *,
    conf_dir: Path | None = None,
    paper_csv: Path | None = None,
    flops: str = DEFAULT_FLOPS,
) -> list[Table]:
    """Build every table from ``results`` and write ``<slug>.{md,tex,csv}`` plus ``tables.md`` into ``out_dir``.

    Args:
        results: folder searched for run records (``paper/`` and ``tables/`` skipped).
        out_dir: where the tables go (created).
        conf_dir: Hydra config root whose ``pruner/*.yaml`` give default hyper-parameters.
        paper_csv: the paper's reported numbers (``results/paper/paper_tables.csv``);
            adds the paper's Tables 1-4 with our runs beside them.
        flops: the FLOPs convention shown (see :func:`build_tables`).

    Returns:
        The tables written, in file order of ``tables.md``.
    """
    runs = find_runs(results)
    defaults = load_pruner_defaults(conf_dir) if conf_dir else None
    tables = build_tables(runs, pruner_defaults=defaults, flops=flops)
    for failed in find_failed(results):  # a cell whose last run failed: under its model's main table
        data = str(failed.info.get("data", ""))
        tag = f"{failed.info.get('model')}_{data.removesuffix('_' + str(failed.info.get('split', '')))}"
        main = next((t for t in tables if t.slug == f"main_{tag}"), None)
        if main is not None:
            main.notes.append(failed.line)
    if paper_csv is not None:
        tables += paper_tables(runs, load_paper(paper_csv), pruner_defaults=defaults or {},
                               flops=flops_convention(flops), source=paper_csv)  # fmt: skip
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for t in tables:
        (out_dir / f"{t.slug}.md").write_text(to_markdown(t), encoding="utf-8")
        (out_dir / f"{t.slug}.tex").write_text(to_latex(t), encoding="utf-8")
        (out_dir / f"{t.slug}.csv").write_text(to_csv(t), encoding="utf-8")
    header = f"# Tables from {len(runs)} run record(s) under {results}\n\nGenerated by scripts/make_tables.py; do not edit.\n\n"
    header += "".join(f"{f.line}\n\n" for f in find_failed(results))
    (out_dir / "tables.md").write_text(
        header + "\n".join(to_markdown(t) for t in tables), encoding="utf-8"
    )
    return tables
