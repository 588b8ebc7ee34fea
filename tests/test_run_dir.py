"""Run directories: every sweep cell of every experiment gets its own, the unpruned run one per split, and a lock."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from altp.run.runner import run
from altp.run_dir import cell_path, effective_keep, locked

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


# --------------------------------------------------------------------------- names


def test_cell_path_names_what_differs_from_the_defaults() -> None:
    altp = {"name": "altp", "keep": 0.1, "layer": 2, "n_segments": 10, "compactness": 5.0,
            "sigma": 1.0, "alpha": 1.5, "importance": "attention", "variance_mode": "channel_mean",
            "enforce_connectivity": False}  # fmt: skip
    assert cell_path(altp) == "altp/keep0.1"  # today's path for the default setting
    assert cell_path({**altp, "enforce_connectivity": True}) == "altp/keep0.1_enforce_connectivitytrue"
    assert cell_path({**altp, "compactness": 5}) == "altp/keep0.1"  # 5 is the default 5.0
    assert cell_path({**altp, "compactness": 3.0}) == "altp/keep0.1_compactness3"
    assert cell_path({**altp, "n_segments": 3, "alpha": 0.5, "keep": 0.25}) == (
        "altp/keep0.25_alpha0.5_n_segments3"
    )
    assert cell_path({**altp, "importance": "random"}) == "altp/keep0.1_importancerandom"
    pdrop = {**yaml.safe_load((CONF / "pruner" / "pdrop.yaml").read_text()), "keep": 0.5}
    assert cell_path({**pdrop, "layers": [8, 16, 24], "lambda_": 0.5}) == (
        "pdrop/keep0.5_lambda_0.5_layers8-16-24"
    )
    # The study's score x renumber ablation: booleans and words spelled out, defaults left out.
    assert cell_path({**pdrop, "layers": [2], "score": "previous", "renumber": False}) == (
        "pdrop/keep0.5_layers2_renumberfalse_scoreprevious"
    )
    assert cell_path({**pdrop, "layers": [2], "score": "own", "renumber": True}) == "pdrop/keep0.5_layers2"
    # A key the pruner's config does not have is named too (+pruner.extra=...).
    fastv = {**yaml.safe_load((CONF / "pruner" / "fastv.yaml").read_text()), "keep": 0.1}
    assert cell_path(fastv) == "fastv/keep0.1"
    assert cell_path({**fastv, "extra": "a/b"}) == "fastv/keep0.1_extraa-b"
    # The unpruned model has no keep: one directory whatever the sweep passes.
    assert cell_path({"name": "none"}) == "none/keep1.0"
    assert effective_keep({"name": "none"}, 0.25) == 1.0
    assert effective_keep({"name": "fastv", "keep": 0.25}, 0.25) == 0.25
    with pytest.raises(ValueError, match="must be one of: altp"):
        cell_path({"name": "nope", "keep": 0.1})


# --------------------------------------------------------------------------- every experiment's sweep


def _compose(overrides: list[str]):
    cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what Hydra does before a job; ${hydra:...} needs it
    return cfg


def _sweep_cells(experiment: str, extra: list[str]) -> list[list[str]]:
    """The override lists Hydra's basic sweeper runs for ``-m experiment=<name> <extra>``."""
    params = _compose([f"experiment={experiment}"]).hydra.sweeper.params or {}
    args = [f"{k}={v}" for k, v in params.items()] + [f"experiment={experiment}", *extra]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return batch


def _what_runs(cfg) -> str:
    """Everything that decides a cell's predictions, with keep as the run uses it."""
    pruner = OmegaConf.to_container(cfg.pruner, resolve=True)
    keep = effective_keep(pruner, cfg.keep)
    pruner.pop("keep", None)
    return json.dumps([cfg.hydra.runtime.choices.model, cfg.data.name, pruner, keep, cfg.seed],
                      sort_keys=True)  # fmt: skip


def test_every_experiment_cell_has_its_own_run_directory() -> None:
    """Across all experiments: one directory per distinct run, one distinct run per directory."""
    cells: dict[str, list[tuple[str, str]]] = {}  # experiment -> [(out_dir, what runs)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        runs = [(e, o) for e in EXPERIMENTS for o in _sweep_cells(e, [])]
        # The command of the README on the embedded model: CLI data= replaces the sweep's list.
        runs += [
            ("table4_shapes", o)
            for o in _sweep_cells("table4_glamm", ["model=glamm_shapes", "data=shapes_val"])
        ]
        for experiment, overrides in runs:
            cfg = _compose(overrides)
            cells.setdefault(experiment, []).append((str(cfg.out_dir), _what_runs(cfg)))
    assert all(len(c) > 1 for c in cells.values()), "an experiment sweeps nothing"
    dirs: dict[str, set[str]] = {}
    for out_dir, what in (c for exp in cells.values() for c in exp):
        dirs.setdefault(out_dir, set()).add(what)
    shared = {d: w for d, w in dirs.items() if len(w) > 1}
    assert not shared, f"run directories shared by different configs: {shared}"
    assert len({w for ws in dirs.values() for w in ws}) == len(dirs)

    # The paper's Table 4: N and C sweeps in six distinct directories per split, the
    # default cell (N=10, C=5) in the same directory as Table 1's ALTP at keep 0.1.
    suffixes = (
        "",
        "_compactness10",
        "_compactness3",
        "_n_segments15",
        "_n_segments3",
        "_n_segments7",
    )
    t4 = sorted({d for d, _ in cells["table4_glamm"]})
    assert t4 == sorted(
        f"runs/glamm/grandf_{s}/altp/keep0.1{x}" for s in ("val", "test") for x in suffixes
    )
    shapes = sorted(d for d, _ in cells["table4_shapes"])
    assert shapes == sorted(f"runs/glamm_shapes/shapes_val/altp/keep0.1{x}" for x in suffixes)
    t1 = {d for d, _ in cells["table1_glamm"]}
    assert (
        "runs/glamm/grandf_val/altp/keep0.1" in t1 and "runs/glamm/grandf_val/fastv/keep0.25" in t1
    )
    # Table 1 crosses none with three keeps: one unpruned run per split.
    assert {d for d in t1 if "/none/" in d} == {
        "runs/glamm/grandf_val/none/keep1.0", "runs/glamm/grandf_test/none/keep1.0"
    }  # fmt: skip
    assert len(t1) == 2 * (1 + 4 * 3)


# --------------------------------------------------------------------------- the lock


def _try_lock(path: Path) -> str:
    """Ask for the run directory's lock from another process without waiting."""
    code = (
        "import fcntl, sys\n"
        "fh = open(sys.argv[1], 'w')\n"
        "try:\n    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('got')\n"
        "except BlockingIOError:\n    print('busy')\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def test_lock_excludes_another_process_and_is_released(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with locked(out):
        assert _try_lock(out / ".run.lock") == "busy"
    assert _try_lock(out / ".run.lock") == "got"
    # Reentrant use from one process after release works too.
    with locked(out):
        fh = open(out / ".run.lock")
        with pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.close()


def test_unpruned_run_at_two_keeps_is_one_run(tmp_path: Path, monkeypatch) -> None:
    """pruner=none keep=0.1 then keep=0.25: same directory, no refusal, the second only scores."""
    monkeypatch.chdir(tmp_path)
    base = ["model=glamm_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}",
            "data.generate.n_images=2", "pruner=none", "evaluate=false"]  # fmt: skip
    metrics, written = [], []
    out = tmp_path / "runs/glamm_tiny/synthetic_val/none/keep1.0"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for keep in ("0.1", "0.25"):
            cfg = _compose([*base, f"keep={keep}"])
            assert cfg.out_dir == "runs/glamm_tiny/synthetic_val/none/keep1.0"
            with open_dict(cfg):
                del cfg["hydra"]  # as inside a Hydra job: ${hydra:...} resolves from HydraConfig
            metrics.append(
                run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": "none"})
            )
            written.append({p.name: p.stat().st_mtime_ns for p in (out / "predictions").iterdir()})
    assert written[0] == written[1]  # the second run found every image done
    assert [m["keep"] for m in metrics] == [1.0, 1.0]
    assert json.loads((out / "fingerprint.json").read_text())["keep"] == 1.0
    assert len(list((out / "predictions").glob("*.json"))) == 2
    assert sorted(p.name for p in (tmp_path / "runs/glamm_tiny/synthetic_val/none").iterdir()) == [
        "keep1.0"
    ]


@pytest.mark.slow
def test_joblib_sweep_runs_the_unpruned_cell_once(tmp_path: Path) -> None:
    """pruner=none keep=0.1,0.25 as two parallel joblib jobs: one directory, one inference."""
    cmd = [sys.executable, "run.py", "-m", "model=glamm_tiny", "data=synthetic",
           f"data.root={tmp_path / 'data'}", "data.generate.n_images=2", "pruner=none", "keep=0.1,0.25",
           "evaluate=false", f"out_dir='{tmp_path}/runs/${{run_cell:${{pruner}}}}'",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs" / "none").iterdir()] == ["keep1.0"]
    log = (tmp_path / "runs/none/keep1.0/run.log").read_text()
    # Whichever job got the lock first ran both images; the other found them done.
    assert "2 images, 0 already done" in log and "2 images, 2 already done" in log
    assert json.loads((tmp_path / "runs/none/keep1.0/metrics.json").read_text())["keep"] == 1.0
