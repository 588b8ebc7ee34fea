"""Tables from hand-made run records: cells, newest-wins, splits of rows, LaTeX/CSV shape, FLOPs
conventions, and the paper's Tables 1-4 beside our runs."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from eval.paper_tables import load_paper, paper_tables
from eval.table_format import MISSING, to_csv, to_latex, to_markdown
from eval.tables import (
    build_tables,
    find_runs,
    flops_convention,
    load_pruner_defaults,
    write_tables,
)

ROOT = Path(__file__).resolve().parents[1]

ALTP_DEFAULT = {"pruner.layer": 2, "pruner.n_segments": 10, "pruner.alpha": 1.5}


def _metrics(
    model: str, data: str, split: str, pruner: str, keep: float, base: float, **extra
) -> dict:
    """A flat metrics.json; metric values are base + small offsets so every cell is distinct."""
    return {
        "model": model, "pruner": pruner, "keep": keep, "data": f"{data}_{split}", "split": split,
        "meteor": base + 0.001, "cider": base + 0.002, "ap50": base + 0.003, "miou": base + 0.004,
        "recall": base + 0.005, "flops_ratio": 0.196 if keep < 1 else 1.0,
        "flops_ratio_paper": 0.2 if keep < 1 else 1.0, "generation_flops_ratio": 0.61 if keep < 1 else 1.0,
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
    tables = build_tables(runs, pruner_defaults=load_pruner_defaults(conf), flops="prompt")
    main = _table(tables, "main_glamm_grandf")
    assert main.title.startswith("Table 1: glamm on grandf") and "synthetic" not in main.title
    fastv = _row(main, "fastv", "57", "0.1")
    # Newest (finished_at 2026-02) wins: base 0.14 -> AP50 0.143 -> "14.3".
    assert (fastv["val METEOR"], fastv["val AP50"], fastv["val Recall"]) == ("14.1", "14.3", "14.5")
    assert fastv["test AP50"] == "12.3" and fastv["FLOPs (prompt)"] == "19.6"
    assert any("kept the newest" in n and "fastv/new" in n and "fastv/old" in n for n in main.notes)
    altp = _row(main, "altp", "57", "0.1")
    assert altp["val CIDEr"] == "20.2" and altp["test CIDEr"] == MISSING
    # Unpruned first, then keep descending, then the paper's method order.
    assert [r[0] for r in main.rows] == ["none", "altp", "fastv", "ddc", "altp"]
    assert [r[2] for r in main.rows] == ["1", "0.25", "0.1", "0.1", "0.1"]
    assert not any("alpha=1.0" in r[0] for r in main.rows)  # the sweep run stays out of Table 1


def test_failed_images_are_named_in_the_footnotes(tmp_path: Path, conf: Path) -> None:
    failed = [f"sa_{i}" for i in range(7)]
    _write(tmp_path, "glamm/none/val", _metrics("glamm", "grandf", "val", "none", 1.0, 0.30, n_failed=7,
                                                failed_images=failed))  # fmt: skip
    main = _table(build_tables(find_runs(tmp_path), pruner_defaults=load_pruner_defaults(conf)),
                  "main_glamm_grandf")  # fmt: skip
    (note,) = [n for n in main.notes if "failed" in n]
    assert "none 576 1 (val): 7 of 10 images failed (sa_0, sa_1, sa_2, sa_3, sa_4 +2 more)" in note
    assert "retries them" in note


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
    ] + ["flops_paper"]
    assert rows[1][:3] == ["none", "576", "1"] and len(rows) == 1 + len(main.rows)
    altp = next(r for r in rows if r[:3] == ["altp", "57", "0.1"])
    assert altp[rows[0].index("val_ap50")] == "20.3" and altp[rows[0].index("test_ap50")] == ""
    md = to_markdown(main).splitlines()
    assert md[0] == f"### {main.title}" and md[2].startswith(
        "| Method | Tokens | keep | val METEOR"
    )
    assert all(line.count("|") == len(main.columns) + 1 for line in md[2 : 4 + len(main.rows)])


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


# --------------------------------------------------------------------------- FLOPs conventions


@pytest.mark.parametrize(
    ("name", "shown", "key"),
    [("prompt", "19.6", "flops_ratio"), ("paper", "20.0", "flops_ratio_paper"),
     ("generation", "61.0", "generation_flops_ratio")],
)  # fmt: skip
def test_flops_column_follows_the_chosen_convention(
    results: Path, conf: Path, name: str, shown: str, key: str
) -> None:
    tables = build_tables(
        find_runs(results), pruner_defaults=load_pruner_defaults(conf), flops=name
    )
    main = _table(tables, "main_glamm_grandf")
    assert _row(main, "fastv", "57", "0.1")[f"FLOPs ({name})"] == shown
    assert _row(main, "none", "576", "1")[f"FLOPs ({name})"] == "100.0"
    assert any(f"metrics.json {key}" in n and f"--flops {name}" in n for n in main.notes)


def test_records_without_the_chosen_flops_key_are_named(results: Path, conf: Path) -> None:
    old = _metrics("glamm", "grandf", "val", "uniform", 0.1, 0.1, **{"pruner.layer": 2})
    del old["flops_ratio_paper"]
    _write(results, "glamm/uniform_old", old)
    main = _table(build_tables(find_runs(results), flops="paper"), "main_glamm_grandf")
    assert _row(main, "uniform", "57", "0.1")["FLOPs (paper)"] == MISSING
    assert any("1 row(s) have no flops_ratio_paper" in n for n in main.notes)
    with pytest.raises(ValueError, match="choose one of: prompt, paper, generation"):
        flops_convention("tokens")


def test_unpruned_copies_of_the_old_layout_are_one_row(tmp_path: Path) -> None:
    """pruner=none once per keep (the old run layout) reads as one row with one note."""
    root = tmp_path / "results"
    for i, keep_dir in enumerate(("keep0.1", "keep0.25", "keep0.5")):
        stamp = f"2026-01-0{i + 1}T00:00:00+00:00"
        _write(root, f"m/d_val/none/{keep_dir}",
               _metrics("glamm", "grandf", "val", "none", 1.0, 0.3 + i / 100, finished_at=stamp))  # fmt: skip
    main = _table(build_tables(find_runs(root)), "main_glamm_grandf")
    assert len(main.rows) == 1 and _row(main, "none", "576", "1")["val AP50"] == "32.3"
    (note,) = [n for n in main.notes if "unpruned" in n]
    assert "3 times" in note and "keep0.5" in note.split("over")[0]
    assert "keep0.1" in note and "keep0.25" in note


# --------------------------------------------------------------------------- the paper's tables

PAPER_HEADER = (
    "table,model,split,method,kept_tokens,keep,superpixels_N,compactness_C,metric,value,note\n"
)


@pytest.fixture
def paper_csv(tmp_path: Path) -> Path:
    path = tmp_path / "paper.csv"
    path.write_text(
        PAPER_HEADER + "1,glamm,val,none,576,1.0,,,ap50,30.8,upper bound\n"
        "1,glamm,val,none,576,1.0,,,flops,100,\n"
        "1,glamm,test,none,576,1.0,,,ap50,29.2,\n"
        "1,glamm,val,fastv,57,0.1,,,ap50,14.0,\n"
        "1,glamm,val,fastv,57,0.1,,,flops,20,\n"
        "1,glamm,test,fastv,57,0.1,,,ap50,13.6,\n"
        "1,glamm,val,pdrop,57,0.1,,,ap50,15.1,\n"
        "1,glamm,val,altp,57,0.1,,,ap50,20.0,\n"
        "2,omg_llava,val,altp,25,0.1,,,ap50,26.2,\n"
        "3,glamm,val,ddc,57,0.1,,,recall,29.1,\n"
        "4,glamm,val,altp,57,0.1,10,5,ap50,20.0,default\n"
        "4,glamm,val,altp,57,0.1,3,5,ap50,17.1,N sweep\n"
        "4,glamm,val,altp,57,0.1,10,3,ap50,20.2,C sweep\n"
    )
    return path


def test_paper_tables_put_ours_under_each_paper_row(
    results: Path, conf: Path, paper_csv: Path
) -> None:
    altp4 = {**ALTP_DEFAULT, "pruner.compactness": 5.0}
    _write(
        results,
        "glamm/altp_n3",
        _metrics("glamm", "grandf", "val", "altp", 0.1, 0.171, **{**altp4, "pruner.n_segments": 3}),
    )
    _write(
        results,
        "glamm/altp_c3",
        _metrics(
            "glamm", "grandf", "val", "altp", 0.1, 0.202, **{**altp4, "pruner.compactness": 3.0}
        ),
    )
    _write(
        results,
        "glamm/altp_c5",  # the default setting as Table 4 names it, newer than glamm/altp
        _metrics(
            "glamm",
            "grandf",
            "val",
            "altp",
            0.1,
            0.21,
            **altp4,
            finished_at="2027-01-01T00:00:00+00:00",
        ),
    )

    tables = paper_tables(find_runs(results), load_paper(paper_csv), pruner_defaults=load_pruner_defaults(conf),
                          flops=flops_convention("paper"), source=paper_csv)  # fmt: skip
    assert [t.slug for t in tables] == [  # glamm_tiny on synthetic is a variant of glamm too
        "paper_table1_glamm_grandf", "paper_table1_glamm_tiny_synthetic", "paper_table2",
        "paper_table3_glamm_grandf", "paper_table3_glamm_tiny_synthetic",
        "paper_table4_glamm_grandf", "paper_table4_glamm_tiny_synthetic",
    ]  # fmt: skip
    t1 = tables[0]
    assert "paper (glamm on GranD-f) vs ours (glamm on grandf)" in t1.title
    assert "SYNTHETIC" not in t1.title
    assert t1.columns == ["Method", "Tokens", "Source", "AP50", "AP50", "FLOPs (paper)"]
    assert t1.rows == [
        ["none", "576", "paper", "30.8", "29.2", "100"],
        ["none", "576", "ours", "30.3", "30.3", "100.0"],
        ["fastv", "57", "paper", "14.0", "13.6", "20"],
        ["fastv", "57", "ours", "14.3", "12.3", "20.0"],  # the newest val run
        ["pdrop", "57", "paper", "15.1", MISSING, MISSING],
        ["pdrop", MISSING, "ours", MISSING, MISSING, MISSING],
        ["altp", "57", "paper", "20.0", MISSING, MISSING],
        # Not the alpha=1.0 run; the newest default-setting run (the compactness=5.0 one).
        ["altp", "57", "ours", "21.3", MISSING, "20.0"],
    ]
    assert any("flops_ratio_paper" in n and "--flops paper" in n for n in t1.notes)
    assert any("not produced by this code" in n for n in t1.notes)
    assert "paper's note: upper bound" in t1.notes

    t2 = tables[2]
    assert "no run of ours with omg_llava yet" in t2.title
    assert t2.rows == [["altp", "25", "paper", "26.2"]]

    t3 = tables[3]
    assert t3.columns == ["Method", "Tokens", "Source", "Recall"]
    assert t3.rows == [["ddc", "57", "paper", "29.1"], ["ddc", "57", "ours", "17.5"]]

    t4 = tables[5]
    assert t4.columns == ["Method", "Tokens", "N", "Regions", "C", "Source", "AP50"]
    assert [r[2:] for r in t4.rows] == [  # these records predate extras.regions
        ["10", MISSING, "5", "paper", "20.0"], ["10", MISSING, "5", "ours", "21.3"],
        ["3", MISSING, "5", "paper", "17.1"], ["3", MISSING, "5", "ours", "17.4"],
        ["10", MISSING, "3", "paper", "20.2"], ["10", MISSING, "3", "ours", "20.5"],
    ]  # fmt: skip


def test_table4_shows_our_realised_regions_next_to_n(
    paper_csv: Path, conf: Path, tmp_path: Path
) -> None:
    """Table 4 only: ours = the val run's extras.regions.mean, paper = — (it reports only N)."""
    root = tmp_path / "runs"
    altp4 = {**ALTP_DEFAULT, "pruner.compactness": 5.0}
    for split, regions in (("val", 8.46), ("test", 3.0)):
        _write(root, f"glamm/altp_{split}", _metrics("glamm", "grandf", split, "altp", 0.1, 0.2,
                                                     **altp4, **{"extras.regions.mean": regions}))  # fmt: skip
    tables = paper_tables(find_runs(root), load_paper(paper_csv), pruner_defaults=load_pruner_defaults(conf),
                          flops=flops_convention("paper"), source=paper_csv)  # fmt: skip
    t4 = _table(tables, "paper_table4_glamm_grandf")
    assert t4.columns == ["Method", "Tokens", "N", "Regions", "C", "Source", "AP50"]
    assert t4.rows[:4] == [
        ["altp", "57", "10", MISSING, "5", "paper", "20.0"],
        ["altp", "57", "10", "8.5", "5", "ours", "20.3"],  # val's count, not test's
        ["altp", "57", "3", MISSING, "5", "paper", "17.1"],
        ["altp", MISSING, "3", MISSING, "5", "ours", MISSING],  # no N = 3 run
    ]
    assert any("extras.regions.mean" in n and "only the target N" in n for n in t4.notes)
    assert all("Regions" not in t.columns for t in tables if t is not t4)


def test_synthetic_runs_sit_beside_the_paper_labelled(paper_csv: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    _write(root, "s/none", _metrics("glamm_shapes", "shapes", "val", "none", 1.0, 0.9))
    tables = paper_tables(find_runs(root), load_paper(paper_csv), pruner_defaults={},
                          flops=flops_convention("prompt"), source=paper_csv)  # fmt: skip
    t1 = next(t for t in tables if t.slug == "paper_table1_glamm_shapes_shapes")
    assert "SYNTHETIC" in t1.title and any("not the values" in n for n in t1.notes)
    assert t1.rows[1] == ["none", "576", "ours", "90.3", MISSING, "100.0"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [(PAPER_HEADER, "no rows"), ("table,model\n1,glamm\n", "lacks column"),
     (PAPER_HEADER + "1,glamm,val,none,576,1.0,,,ap50,high,\n", "line 2")],
)  # fmt: skip
def test_bad_paper_csv_is_named(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=needle):
        load_paper(path)


# --------------------------------------------------------------------------- the committed numbers

PAPER = ROOT / "results" / "paper" / "paper_tables.csv"


def _paper_values() -> dict[tuple, float]:
    return {
        (int(r["table"]), r["split"], r["method"], int(r["kept_tokens"]), r["superpixels_N"],
         r["compactness_C"], r["metric"]): float(r["value"])
        for r in load_paper(PAPER)
    }  # fmt: skip


def test_committed_paper_tables_are_complete() -> None:
    rows = load_paper(PAPER)
    values = _paper_values()
    assert len(values) == len(rows)  # no value listed twice
    by_table = {t: sum(int(r["table"]) == t for r in rows) for t in (1, 2, 3, 4)}
    # Table 1: unpruned (5 metrics per split + one FLOPs) + 3 methods x 3 budgets x
    # (5 metrics per split + FLOPs per split); 2: 5 rows x 3 metrics x 2 splits; 3: 6 x 3 x 2; 4: 6 x 3 x 2.
    assert by_table == {1: 11 + 9 * 12, 2: 30, 3: 36, 4: 36}
    for r in rows:  # keep is the ratio whose floor(keep * V) is the paper's token count
        v = {"glamm": 576, "omg_llava": 256}[r["model"]]
        assert int(float(r["keep"]) * v) == int(r["kept_tokens"]) or r["method"] == "none"
    t4 = {(r["superpixels_N"], r["compactness_C"]) for r in rows if r["table"] == "4"}
    assert t4 == {("3", "5"), ("7", "5"), ("10", "5"), ("15", "5"), ("10", "3"), ("10", "10")}
    assert {r["method"] for r in rows if r["table"] == "3"} == {"ddc", "altp"}


def test_committed_paper_headline_numbers() -> None:
    """Spot values against the headline numbers the project was specified with."""
    v = _paper_values()
    for method, kept, (ap50, miou, recall) in [
        ("none", 576, (30.8, 66.3, 41.8)), ("fastv", 57, (14.0, 48.1, 23.3)),
        ("pdrop", 57, (15.1, 49.7, 25.3)), ("altp", 57, (20.0, 55.5, 30.3)),
    ]:  # fmt: skip
        got = tuple(v[(1, "val", method, kept, "", "", m)] for m in ("ap50", "miou", "recall"))
        assert got == (ap50, miou, recall)
    for kept, flops in ((57, 20), (144, 33), (288, 55)):
        for method in ("fastv", "pdrop", "altp"):
            assert v[(1, "val", method, kept, "", "", "flops")] == flops
    # Table 4's default cell (N=10, C=5) repeats Table 1's ALTP at 57 tokens.
    for split in ("val", "test"):
        for m in ("ap50", "miou", "recall"):
            assert v[(4, split, "altp", 57, "10", "5", m)] == v[(1, split, "altp", 57, "", "", m)]


def test_make_tables_on_the_committed_study(tmp_path: Path) -> None:
    """The committed records (old layout: none once per keep) fill the paper tables' ours rows."""
    tables = write_tables(
        ROOT / "results", tmp_path, conf_dir=ROOT / "conf", paper_csv=PAPER, flops="prompt"
    )
    slugs = [t.slug for t in tables]
    for slug in ("paper_table1_glamm_shapes_shapes", "paper_table2", "paper_table3_glamm_shapes_shapes",
                 "paper_table4_glamm_shapes_shapes"):  # fmt: skip
        assert slug in slugs and (tmp_path / f"{slug}.md").is_file()
    t1 = _table(tables, "paper_table1_glamm_shapes_shapes")
    assert len(t1.rows) == 2 * 10 and all(MISSING not in r for r in t1.rows)
    t4 = _table(tables, "paper_table4_glamm_shapes_shapes")
    assert t4.columns[2:6] == ["N", "Regions", "C", "Source"]
    ours = {(r[2], r[4]): r for r in t4.rows if r[5] == "ours"}
    assert MISSING not in ours[("10", "5")] and ours[("3", "5")][6] == MISSING
    assert 1 <= float(ours[("10", "5")][3]) <= 10  # realised regions of N = 10 (SLIC's target)


def test_a_schedule_that_ignores_keep_shows_its_kept_fractions(conf: Path) -> None:
    from eval.run_records import RunRecord
    from eval.tables import keep_cell

    m = _metrics("glamm", "grandf", "val", "pdrop", 0.1, 0.3, **{"pruner.lambda_": 0.5})
    plain = RunRecord(path=Path("a"), metrics=m, finished=0.0)
    assert keep_cell(plain) == "0.1"
    fixed = RunRecord(path=Path("b"), finished=0.0,
                      metrics={**m, "keep_ignored": True, "kept_fraction_per_stage": [0.5, 0.25, 0.125]})
    assert keep_cell(fixed) == "0.5>0.25>0.125"
    main = _table(build_tables([fixed], flops="paper"), "main_glamm_grandf")
    assert main.rows[0][2] == "0.5>0.25>0.125"


def test_beyond_the_paper_table_holds_the_new_pruners_and_the_llm_input_rows(results: Path, conf: Path) -> None:
    (conf / "pruner/dart.yaml").write_text("_target_: x\nname: dart\nkeep: ${keep}\nlayer: 2\npivot_image: 4\n")
    _write(results, "glamm/dart", _metrics("glamm", "grandf", "val", "dart", 0.1, 0.15,
                                           **{"pruner.layer": 2, "pruner.pivot_image": 4}))  # fmt: skip
    _write(results, "glamm/altp_in", _metrics("glamm", "grandf", "val", "altp", 0.1, 0.16,
                                              **{**ALTP_DEFAULT, "pruner.layer": 0, "pruner.importance": "cls"}))  # fmt: skip
    tables = build_tables(find_runs(results), pruner_defaults=load_pruner_defaults(conf))
    main = [r[0] for r in _table(tables, "main_glamm_grandf").rows]
    assert "dart" not in main and not any("layer=0" in n for n in main)
    beyond = _table(tables, "beyond_glamm_grandf")
    assert "Beyond the paper" in beyond.title
    # The new pruner, ALTP at the input labelled by what differs from its config, and the references.
    assert [r[0] for r in beyond.rows if r[2] == "0.1"] == ["fastv", "dart", "altp", "altp (layer=0)"]
    assert beyond.rows[0][0] == "none"
    assert _row(beyond, "dart")["val AP50"] == "15.3" and _row(beyond, "altp (layer=0)")["val AP50"] == "16.3"
    sweep = _table(tables, "sweep_glamm_grandf")
    assert all("0" != r[1] for r in sweep.rows) and sweep.columns[:2] == ["keep", "alpha"]  # no layer-0 row
