"""Sweeps finish their healthy cells: a failed cell is recorded, listed, marked in the tables.

A ``-m`` sweep whose first cell fails (``pruner.layer=40`` on a 32-layer model: a user
error found when the model loads) still runs the healthy cell to the end, on the basic
and the joblib launcher; the sweep lists the failed cell with its one-line reason and
exits 1; the failed cell leaves ``failed.json``, which ``make tables`` reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 3


def _sweep(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", "-m", "model=glamm_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}",
           f"data.generate.n_images={N}", "pruner=fastv", "keep=0.25", "pruner.layer=40,2", "evaluate=false",
           f"out_dir='{tmp_path}/runs/${{run_cell:${{pruner}}}}'", f"hydra.sweep.dir={tmp_path}", *launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _check(tmp_path: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    healthy, failed = tmp_path / "runs/fastv/keep0.25", tmp_path / "runs/fastv/keep0.25_layer40"
    assert len(list((healthy / "predictions").glob("*.json"))) == N and (healthy / "metrics.json").is_file()
    assert not (healthy / "failed.json").exists()
    why = "pruning layer 40 >= num_layers 32"
    assert json.loads((failed / "failed.json").read_text())["error"].endswith(why)
    err = proc.stderr.splitlines()
    assert "Traceback (most recent call last):" not in proc.stderr
    assert any("error: " in ln and why in ln for ln in err)  # when it failed (after another cell's progress bar)
    summary = err.index(next(ln for ln in err if ln.startswith("sweep: 1 of 2 cell(s) FAILED")))
    assert "runs/fastv/keep0.25_layer40: pruner=fastv keep=0.25" in err[summary + 1] and why in err[summary + 1]
    assert not (tmp_path / "sweep_outcomes.jsonl").exists()

    tables = subprocess.run([sys.executable, "scripts/make_tables.py", "--results", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "tables"), "--paper", "none"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert tables.returncode == 0, tables.stderr
    assert "FAILED: glamm_tiny synthetic_val fastv keep=0.25" in tables.stdout and why in tables.stdout
    main = (tmp_path / "tables" / "main_glamm_tiny_synthetic.md").read_text()
    assert "FAILED: glamm_tiny synthetic_val fastv keep=0.25" in main


def test_basic_sweep_runs_the_healthy_cell_after_a_failed_one(tmp_path: Path) -> None:
    _check(tmp_path, _sweep(tmp_path))


@pytest.mark.slow
def test_joblib_sweep_runs_the_healthy_cell_beside_a_failed_one(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    _check(tmp_path, proc)
    assert "leaked semaphore" not in proc.stderr
