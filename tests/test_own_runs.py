"""Tables, figures and the report of one's own sweep under runs/ (README "Your own runs")."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]


def test_tables_figures_and_report_of_a_fresh_sweep_under_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for pruner, keep in (("none", 1.0), ("fastv", 0.25), ("altp", 0.25)):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "model=glamm_tiny", "model.max_new_tokens=6", "data=synthetic", "data.generate.n_images=2",
                f"data.root={tmp_path / 'data'}", f"pruner={pruner}", f"keep={keep}", "text_encoder=minilm",
                f"out_dir=runs/glamm_tiny/synthetic/{pruner}/keep{keep}",  # the default, without Hydra's app
            ])  # fmt: skip
        run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": pruner})
    assert len(list(Path("runs").rglob("metrics.json"))) == 3  

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tables import main as make_tables

    from altp.report.__main__ import main as report
    from altp.viz.__main__ import main as viz

    assert make_tables(["--results", "runs", "--out", "runs/tables", "--paper", "none"]) == 0
    main_table = (Path("runs/tables") / "main_glamm_tiny_synthetic.md").read_text()
    assert "| fastv |" in main_table and "| altp |" in main_table and "FLOPs (paper)" in main_table
    assert viz(["figures", "runs", "--out", "runs/figures"]) == 0
    assert [p.name for p in Path("runs/figures").glob("glamm_tiny_*_metrics.png")]
    assert report(["runs", "--out", "runs/report", "--text-encoder", "minilm"]) == 0
    page = (Path("runs/report") / "index.html").read_text()
    assert "altp" in page and "fastv" in page
