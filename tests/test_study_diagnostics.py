"""study_diagnostics: the border ring and kept shares by hand, and a run's table against its metrics.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.run.runner import run
from scripts.study_diagnostics import border_ring, kept_share, main

ROOT = Path(__file__).resolve().parents[1]


def test_border_ring_by_hand():
    # 4x4, width 1: everything but the inner 2x2 (5, 6, 9, 10).
    assert border_ring((4, 4), 1).tolist() == [0, 1, 2, 3, 4, 7, 8, 11, 12, 13, 14, 15]
    assert border_ring((24, 24), 2).size == 576 - 20 * 20  # GLaMM's 2-patch ring: 176 tokens, 30.6 %
    assert border_ring((4, 4), 2).size == 16


def test_kept_share_by_hand():
    assert kept_share([0, 5, 6, 15], border_ring((4, 4), 1)) == 0.5
    assert kept_share([5, 6], border_ring((4, 4), 1)) == 0.0


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diag")
    for pruner, keep in (("none", 1.0), ("pdrop", 0.5)):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "model=glamm_tiny", "model.max_new_tokens=4", "data=synthetic", f"data.root={root / 'data'}",
                "data.generate.n_images=2", "evaluate=false", f"pruner={pruner}", f"keep={keep}",
                f"out_dir={root / 'runs' / 'synthetic_val' / pruner}",
            ])  # fmt: skip
        run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": pruner})
    return root


def test_table_agrees_with_the_runs_metrics(study: Path, monkeypatch):
    monkeypatch.chdir(study)  # run.json's data paths are as the run saw them
    main(["--runs", str(study / "runs"), "--out", str(study / "diag")])
    rows = list(csv.DictReader((study / "diag.csv").open()))
    pdrop = [r for r in rows if r["cell"] == "pdrop"]
    m = json.loads((study / "runs" / "synthetic_val" / "pdrop" / "metrics.json").read_text())
    (sched,) = m["stage_schedules"]
    assert [int(r["stage"]) for r in pdrop] == list(range(1, len(sched["stage_layers"]) + 1))
    assert [r["layer"] for r in pdrop] == [str(x) for x in sched["stage_layers"]]
    assert [float(r["kept"]) for r in pdrop] == sched["kept_per_stage"]
    got = [float(r["coverage"]) for r in pdrop]
    assert got == pytest.approx(m["object_coverage_per_stage"], abs=1e-12)
    (unpruned,) = [r for r in rows if r["cell"] == "none"]
    assert (unpruned["stage"], float(unpruned["coverage"]), float(unpruned["kept"])) == ("0", 1.0, 576.0)
    assert "object patches" in (study / "diag.md").read_text()


def test_a_record_whose_coverage_disagrees_stops_the_script(study: Path, monkeypatch):
    monkeypatch.chdir(study)
    rec_path = sorted((study / "runs" / "synthetic_val" / "pdrop" / "records").glob("*.json"))[0]
    rec = json.loads(rec_path.read_text())
    rec["object_coverage"] = [c + 0.01 for c in rec["object_coverage"]]
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="object_coverage"):
        main(["--runs", str(study / "runs"), "--out", str(study / "diag2")])
