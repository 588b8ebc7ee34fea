"""Tables from hand-made run records: cells, newest-wins, splits of rows, LaTeX/CSV shape, paper side-by-side."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from eval.table_format import MISSING, to_csv, to_latex, to_markdown
from eval.tables import (
    build_tables,
    find_runs,
    load_pruner_defaults,
    paper_comparison,
    write_tables,
)

ALTP_DEFAULT = {"pruner.layer": 2, "pruner.n_segments": 10, "pruner.alpha": 1.5}


def _metrics(
    model: str, data: str, split: str, pruner: str, keep: float, base: float, **extra
) -> dict:
    """A flat metrics.json; metric values are base + small offsets so every cell is distinct."""
    return {
        "model": model, "pruner": pruner, "keep": keep, "data": f"{data}_{split}", "split": split,
        "meteor": base + 0.001, "cider": base + 0.002, "ap50": base + 0.003, "miou": base + 0.004,
        "recall": base + 0.005, "flops_ratio": 0.196 if keep < 1 else 1.0,
        "mean_kept_tokens": 576 if keep == 1.0 else int(keep * 576), "n_images": 10, "n_failed": 0,
        "text_encoder": "minilm", **extra,
    }  # fmt: skip


def _write(root: Path, name: str, metrics: dict) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))
    return path


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "conf" / "pruner").mkdir(parents=True)
    (tmp_path / "conf/pruner/altp.yaml").write_text(
        "_target_: x\nname: altp\nkeep: ${keep}\nlayer: 2\nn_segments: 10\nalpha: 1.5\n"
    )
    (tmp_path / "conf/pruner/fastv.yaml").write_text(
        "_target_: x\nname: fastv\nkeep: ${keep}\nlayer: 2\n"
    )
    return tmp_path / "conf"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    for split in ("val", "test"):
        _write(root, f"glamm/none/{split}", _metrics("glamm", "grandf", split, "none", 1.0, 0.30))
    _write(
        root,
        "glamm/fastv/old",
        _metrics(
            "glamm",
            "grandf",
            "val",
            "fastv",
            0.1,
            0.10,
            **{"pruner.layer": 2},
            finished_at="2026-01-01T00:00:00+00:00",
        ),
    )
    _write(
        root,
        "glamm/fastv/new",
        _metrics(
            "glamm",
            "grandf",
            "val",
            "fastv",
            0.1,
            0.14,
            **{"pruner.layer": 2},
            finished_at="2026-02-01T00:00:00+00:00",
        ),
    )
    _write(
        root,
        "glamm/fastv/test",
        # A key the config does not set (so not compared) must not split val and test rows.
        _metrics(
            "glamm", "grandf", "test", "fastv", 0.1, 0.12, **{"pruner.layer": 2, "pruner.note": "x"}
        ),
    )
    _write(
        root, "glamm/altp", _metrics("glamm", "grandf", "val", "altp", 0.1, 0.20, **ALTP_DEFAULT)
    )
    _write(
        root,
        "glamm/altp_a1",
        _metrics(
            "glamm", "grandf", "val", "altp", 0.1, 0.18, **{**ALTP_DEFAULT, "pruner.alpha": 1.0}
        ),
    )
    _write(
        root,
        "glamm/altp_k25",
        _metrics("glamm", "grandf", "val", "altp", 0.25, 0.25, **ALTP_DEFAULT),
    )
    _write(
        root,
        "glamm/ddc",
        _metrics("glamm", "grandf", "val", "ddc", 0.1, 0.17, **{"pruner.layer": 2}),
    )
    _write(root, "tiny/none", _metrics("glamm_tiny", "synthetic", "val", "none", 1.0, 0.60))
    # Neither the paper's numbers nor our own output are run records.
    _write(root, "paper/x", _metrics("glamm", "grandf", "val", "none", 1.0, 0.99))
    _write(root, "tables/x", _metrics("glamm", "grandf", "val", "none", 1.0, 0.99))
    return root


def _table(tables: list, slug: str):
    (found,) = [t for t in tables if t.slug == slug]
    return found


def _row(table, *labels: str) -> dict[str, str]:
    (row,) = [r for r in table.rows if r[: len(labels)] == list(labels)]
    headers, i = [], 0
    for group, span in table.groups:
        headers += [f"{group} {c}".strip() for c in table.columns[i : i + span]]
        i += span
    return dict(zip(headers, row, strict=True))


def test_main_table_cells_and_newest_wins(results: Path, conf: Path) -> None:
    runs = find_runs(results)
    assert len(runs) == 10  # paper/ and tables/ skipped
    tables = build_tables(runs, pruner_defaults=load_pruner_defaults(conf))
    main = _table(tables, "main_glamm_grandf")
    assert main.title.startswith("Table 1: glamm on grandf") and "synthetic" not in main.title
    fastv = _row(main, "fastv", "57", "0.1")
    # Newest (finished_at 2026-02) wins: base 0.14 -> AP50 0.143 -> "14.3".
    assert (fastv["val METEOR"], fastv["val AP50"], fastv["val Recall"]) == ("14.1", "14.3", "14.5")
    assert fastv["test AP50"] == "12.3" and fastv["FLOPs"] == "19.6"
    assert any("kept the newest" in n and "fastv/new" in n and "fastv/old" in n for n in main.notes)
    altp = _row(main, "altp", "57", "0.1")
    assert altp["val CIDEr"] == "20.2" and altp["test CIDEr"] == MISSING
    # Unpruned first, then keep descending, then the paper's method order.
    assert [r[0] for r in main.rows] == ["none", "altp", "fastv", "ddc", "altp"]
    assert [r[2] for r in main.rows] == ["1", "0.25", "0.1", "0.1", "0.1"]
    assert not any("alpha=1.0" in r[0] for r in main.rows)  # the sweep run stays out of Table 1


def test_ablation_and_sweep_tables(results: Path, conf: Path) -> None:
    tables = build_tables(find_runs(results), pruner_defaults=load_pruner_defaults(conf))
    ablation = _table(tables, "ablation_glamm_grandf")
    assert {r[0] for r in ablation.rows} == {"none", "ddc", "altp"}
    sweep = _table(tables, "sweep_glamm_grandf")
    assert sweep.columns[:2] == ["keep", "alpha"]
    assert [r[:2] for r in sweep.rows] == [["0.25", "1.5"], ["0.1", "1.0"], ["0.1", "1.5"]]
    assert _row(sweep, "0.1", "1.0")["val AP50"] == "18.3"


def test_synthetic_model_gets_its_own_clearly_labelled_table(results: Path, conf: Path) -> None:
    tables = build_tables(find_runs(results), pruner_defaults=load_pruner_defaults(conf))
    tiny = _table(tables, "main_glamm_tiny_synthetic")
    assert "synthetic benchmark" in tiny.title and "not GranD-f" in tiny.title
    assert tiny.groups[1] == ("val", 5) and len(tiny.groups) == 3  # no test column group
    assert tiny.rows == [["none", "576", "1", "60.1", "60.2", "60.3", "60.4", "60.5", "100.0"]]


def test_without_defaults_a_non_default_setting_is_labelled(results: Path) -> None:
    tables = build_tables(find_runs(results), pruner_defaults={"altp": {"alpha": 2.0}})
    names = [r[0] for r in _table(tables, "main_glamm_grandf").rows]
    assert any(n.startswith("altp (alpha=1.0") for n in names)


def _split_top_level(line: str) -> list[str]:
    return re.split(r"(?<!\\)&", line.removesuffix(r" \\"))


def test_latex_is_well_formed(results: Path, conf: Path) -> None:
    for table in build_tables(find_runs(results), pruner_defaults=load_pruner_defaults(conf)):
        tex = to_latex(table)
        assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}")
        assert tex.index(r"\begin{tabular}") < tex.index(r"\toprule") < tex.index(r"\midrule")
        assert tex.index(r"\bottomrule") < tex.index(r"\end{tabular}") < tex.index(r"\end{table}")
        spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1)
        assert len(spec) == len(table.columns)
        body = (
            tex[tex.index(r"\midrule") + len(r"\midrule") : tex.index(r"\bottomrule")]
            .strip()
            .splitlines()
        )
        assert len(body) == len(table.rows)
        for line in body:
            assert line.endswith(r" \\") and len(_split_top_level(line)) == len(table.columns)
        unlabelled = re.sub(r"\\label\{[^}]*\}", "", tex)  # underscores are legal in labels
        assert "_" not in unlabelled.replace(r"\_", "")  # glamm_tiny etc. escaped elsewhere
        assert "—" not in tex  # a missing cell becomes an en dash that pdflatex can set
        if MISSING in sum(table.rows, []):
            assert " -- " in tex
        spans = [int(s) for s in re.findall(r"\\multicolumn\{(\d+)\}", tex)]
        assert spans == [5] * len([g for g, _ in table.groups if g])


def test_csv_and_markdown(results: Path, conf: Path) -> None:
    main = _table(
        build_tables(find_runs(results), pruner_defaults=load_pruner_defaults(conf)),
        "main_glamm_grandf",
    )
    rows = list(csv.reader(io.StringIO(to_csv(main))))
    metrics = ["meteor", "cider", "ap50", "miou", "recall"]
    assert rows[0] == ["method", "tokens", "keep"] + [
        f"{s}_{m}" for s in ("val", "test") for m in metrics
    ] + ["flops"]
    assert rows[1][:3] == ["none", "576", "1"] and len(rows) == 1 + len(main.rows)
    altp = next(r for r in rows if r[:3] == ["altp", "57", "0.1"])
    assert altp[rows[0].index("val_ap50")] == "20.3" and altp[rows[0].index("test_ap50")] == ""
    md = to_markdown(main).splitlines()
    assert md[0] == f"### {main.title}" and md[2].startswith(
        "| Method | Tokens | keep | val METEOR"
    )
    assert all(line.count("|") == len(main.columns) + 1 for line in md[2 : 4 + len(main.rows)])


def test_paper_comparison(results: Path, conf: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper.csv"
    paper.write_text(
        "model,data,split,pruner,keep,kept_tokens,metric,value,note\n"
        "glamm,grandf,val,altp,0.1,57,ap50,20.0,\n"
        "glamm,grandf,val,altp,0.1,57,flops,20,\n"
        "glamm,grandf,val,pdrop,0.1,57,ap50,15.1,\n"
    )
    table = paper_comparison(find_runs(results), paper, pruner_defaults=load_pruner_defaults(conf))
    assert table.rows[0][-3:] == ["20.0", "20.3", "+0.3"]  # the default-alpha run, not the sweep's
    assert table.rows[1][-3:] == ["20.0", "19.6", "-0.4"]
    assert table.rows[2][-3:] == ["15.1", MISSING, MISSING]
    assert "not produced by this code" in table.notes[0]


def test_write_tables_and_errors(results: Path, conf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tables = write_tables(results, out, conf_dir=conf)
    for t in tables:
        for ext in ("md", "tex", "csv"):
            assert (out / f"{t.slug}.{ext}").read_text()
    assert (out / "tables.md").read_text().count("### ") == len(tables)
    with pytest.raises(FileNotFoundError, match="run experiments first"):
        find_runs(tmp_path / "nowhere")
    _write(results, "broken", {"model": "glamm", "keep": 0.1})
    with pytest.raises(ValueError, match="lacks"):
        find_runs(results)


def test_committed_paper_numbers_are_only_the_known_ones() -> None:
    """results/paper holds exactly the headline numbers of REFERENCE.md, nothing invented."""
    path = Path(__file__).resolve().parents[1] / "results/paper/glamm_grandf.csv"
    rows = list(csv.DictReader(path.open()))
    got = {(r["pruner"], r["keep"], r["metric"]): float(r["value"]) for r in rows}
    want = {
        ("none", "1.0", "ap50"): 30.8,
        ("none", "1.0", "miou"): 66.3,
        ("none", "1.0", "recall"): 41.8,
    }
    for pruner, vals in {
        "fastv": (14.0, 48.1, 23.3),
        "pdrop": (15.1, 49.7, 25.3),
        "altp": (20.0, 55.5, 30.3),
    }.items():
        want.update(
            {(pruner, "0.1", m): v for m, v in zip(("ap50", "miou", "recall"), vals, strict=True)}
        )
        want.update({(pruner, k, "flops"): f for k, f in (("0.1", 20), ("0.25", 33), ("0.5", 55))})
    assert got == want and len(rows) == len(want)
    assert {(r["model"], r["data"], r["split"]) for r in rows} == {("glamm", "grandf", "val")}
