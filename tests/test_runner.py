"""End-to-end tests of run.py / altp.runner on the tiny GLaMM and a synthetic split."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.cli import UserError
from altp.configs import config_options
from altp.flops import LLMShape, flops_ratio
from altp.pruning import kept_count
from altp.runner import run

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 4
PRUNERS = config_options("pruner")  # every pruner a run can name (the registry, tests/test_pruner_registry.py)


def _cfg(data_root: Path, out_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                "model=glamm_tiny",
                "data=synthetic",
                f"data.root={data_root}",
                f"data.generate.n_images={N_IMAGES}",
                f"out_dir={out_dir}",
                *overrides,
            ],
        )


def _choices(cfg) -> dict[str, str]:
    return {"model": "glamm_tiny", "data": "synthetic", "pruner": cfg.pruner.name}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_writes_valid_records(pruner: str, data_root: Path, tmp_path: Path) -> None:
    keep = 0.1
    cfg = _cfg(data_root, tmp_path / "run", f"pruner={pruner}", f"keep={keep}", "evaluate=false")
    metrics = run(cfg, choices=_choices(cfg))

    preds = sorted((tmp_path / "run" / "predictions").glob("*.json"))
    assert len(preds) == N_IMAGES
    for p in preds:
        obj = json.loads(p.read_text())
        assert list(obj)[:4] == ["image_id", "caption", "phrases", "pred_masks"]
        assert obj["image_id"] == p.stem
        for rle in obj["pred_masks"]:
            assert isinstance(rle["counts"], str)
        rec = json.loads((tmp_path / "run" / "records" / p.name).read_text())
        assert rec["error"] is None
        if pruner == "pdrop":
            # PDrop's stage s keeps floor(V * lambda^s); keep only sets lambda (equal FLOPs, checked below).
            lam = rec["extras"]["lambda"]
            assert rec["kept_per_stage"] == [kept_count(lam ** (s + 1), 576) for s in range(len(rec["stage_layers"]))]
            expected = rec["kept_per_stage"][0]
        else:
            expected = 576 if pruner == "none" else kept_count(keep, 576)
        assert len(rec["kept_tokens"]) == expected
        assert rec["kept_tokens"] == sorted(set(rec["kept_tokens"]))
        assert all(0 <= i < 576 for i in rec["kept_tokens"])
    assert metrics["n_images"] == N_IMAGES and metrics["n_failed"] == 0
    if pruner != "pdrop":
        assert metrics["mean_kept_tokens"] == (576 if pruner == "none" else 57)
    assert 0 < metrics["flops_ratio"] <= 1.0
    assert (metrics["flops_ratio"] == 1.0) == (pruner == "none")
    # Every FLOPs convention is recorded; pruning lowers each, and the paper's 32 text tokens
    # (fewer than the tiny prompt's) leave a smaller share than the real prompt does.
    for key in ("flops_ratio_paper", "generation_flops_ratio"):
        assert 0 < metrics[key] <= 1.0 and (metrics[key] == 1.0) == (pruner == "none")
    assert metrics["generation_tflops"] > 0
    if pruner != "none" and rec["num_text_tokens"] > 32:
        assert metrics["flops_ratio_paper"] < metrics["flops_ratio"]
    if pruner != "none":
        # Every pruner costs what single-stage pruning to floor(keep * V) at K=2 costs (PDrop up
        # to its integer stage counts), as in the paper's FLOPs column.
        single = flops_ratio(num_text=rec["num_text_tokens"], num_visual=576, visual_kept=[(2, 57)],
                             shape=LLMShape(hidden_size=64, intermediate_size=128, num_layers=32))
        assert metrics["flops_ratio"] == pytest.approx(single, rel=0.02)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["pruner"] == pruner and on_disk["git_sha"]
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["config"]["pruner"]["name"] == pruner
    assert "torch" in run_json["provenance"]["packages"]


def test_scored_run_reports_all_metrics(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "run", "pruner=fastv", "keep=0.25")
    metrics = run(cfg, choices=_choices(cfg))
    for key in ("meteor", "cider", "ap50", "miou", "recall"):
        assert 0.0 <= metrics[key] <= 1.0 or metrics[key] is None
    assert metrics["text_encoder"] == "minilm"
    assert metrics["mean_kept_tokens"] == 144


def test_fastv_per_step_runs_from_the_config_alone(data_root: Path, tmp_path: Path) -> None:
    # One key selects upstream FastV's uncached decoding; the model adapter drops the cache itself.
    cfg = _cfg(data_root, tmp_path / "run", "pruner=fastv", "pruner.reselect=per_step", "keep=0.25",
               "evaluate=false", "max_images=2")  # fmt: skip
    metrics = run(cfg, choices=_choices(cfg))
    assert metrics["pruner.reselect"] == "per_step" and metrics["n_failed"] == 0
    for path in sorted((tmp_path / "run" / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        assert len(rec["kept_tokens"]) == 144
        assert rec["extras"]["reselect_steps"] == rec["new_tokens"]
        assert 1 <= rec["extras"]["reselect_distinct_sets"] <= rec["new_tokens"]
        assert 144 <= rec["extras"]["reselect_union"] <= 576
    # A changed reselect mode is a different config: resuming into that directory is refused.
    other = _cfg(data_root, tmp_path / "run", "pruner=fastv", "keep=0.25", "evaluate=false", "max_images=2")
    with pytest.raises(UserError, match="different config"):
        run(other, choices=_choices(other))


def test_resume_into_other_config_is_refused(data_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(data_root, tmp_path / "run", "pruner=altp", "evaluate=false", "max_images=1")
    run(cfg, choices=_choices(cfg))
    other = _cfg(data_root, tmp_path / "run", "pruner=altp", "pruner.alpha=3.0", "evaluate=false", "max_images=1")
    with pytest.raises(UserError, match="different config"):
        run(other, choices=_choices(other))


def test_corrupt_image_is_a_recorded_failure(data_root: Path, tmp_path: Path) -> None:
    # Copy the split so the shared one stays intact, then break one image.
    root = tmp_path / "data"
    cfg0 = _cfg(data_root, tmp_path / "unused", "evaluate=false", "max_images=1")
    run(cfg0, choices=_choices(cfg0))  # makes sure the split exists
    shutil.copytree(data_root, root)
    images = sorted((root / "images").iterdir())
    images[0].write_bytes(b"not a jpeg")
    cfg = _cfg(root, tmp_path / "run", "pruner=fastv", "evaluate=true")
    metrics = run(cfg, choices=_choices(cfg))
    assert metrics["n_failed"] == 1 and metrics["n_images"] == N_IMAGES
    recs = [json.loads(p.read_text()) for p in (tmp_path / "run" / "records").glob("*.json")]
    failed = [r for r in recs if r["error"]]
    assert len(failed) == 1 and "ImageLoadError" in failed[0]["error"]
    pred = json.loads((tmp_path / "run" / "predictions" / f"{failed[0]['image_id']}.json").read_text())
    assert pred["phrases"] == [] and pred["pred_masks"] == []


def _run_py(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, **kw)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["keep=1.5"], "keep must be in (0, 1]"), (["pruner=nope"], "unknown pruner 'nope'"),
     (["keep=0"], "keep must be in (0, 1]"), (["model=nope"], "unknown model 'nope'")],
)
def test_cli_bad_input_is_one_line(args: list[str], needle: str) -> None:
    proc = _run_py(*args, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    if "pruner" in needle:
        assert "altp" in lines[0] and "fastv" in lines[0]


def test_killed_run_resumes_to_identical_bytes(data_root: Path, tmp_path: Path) -> None:
    n = 6
    common = ["model=glamm_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}",
              f"data.generate.n_images={n}", "pruner=altp", "keep=0.1", "evaluate=false"]
    ref = _run_py(*common, f"out_dir={tmp_path / 'ref'}", timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "run.py", *common, f"out_dir={out}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / "predictions").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "predictions").glob("*.json")))
    assert 2 <= done < n, "the kill should land mid-run"
    again = _run_py(*common, f"out_dir={out}", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for p in sorted((tmp_path / "ref" / "predictions").glob("*.json")):
        assert (out / "predictions" / p.name).read_bytes() == p.read_bytes(), p.name
    assert not list((out / "predictions").glob(".*.tmp")), "no temp files left behind"
