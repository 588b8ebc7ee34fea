"""End-to-end tests of run.py / altp.run.runner on the tiny GLaMM and a synthetic split."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.configs import config_options
from altp.flops import LLMShape, flops_ratio
from altp.pruning import kept_count
from altp.run.cli import UserError
from altp.run.runner import InjectedFault, run
from eval.gcg import METRICS, evaluate

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
        merged = rec.get("merged_tokens_per_stage", [[]])[0]  # VisionZip's contextual tokens, each absorbing some
        assert len(rec["kept_tokens"]) + len(merged) == expected
        absorbed = [j for group in merged for j in group]
        assert sorted(absorbed + rec["kept_tokens"]) == (list(range(576)) if merged else rec["kept_tokens"])
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
        # Every pruner costs what single-stage pruning to floor(keep * V) at its layer costs (K=2: the
        # paper's FLOPs column; PDrop up to its integer stage counts; the LLM-input pruners K=0), plus
        # the selection work a method adds (added_flops), the same for each image except DART's.
        k = rec["stage_layers"][0] if pruner != "pdrop" else 2
        added = [json.loads(q.read_text())["extras"].get("added_flops", 0.0)
                 for q in sorted((tmp_path / "run" / "records").glob("*.json"))]  # fmt: skip
        shape = LLMShape(hidden_size=64, intermediate_size=128, num_layers=32)
        single = sum(flops_ratio(num_text=rec["num_text_tokens"], num_visual=576, visual_kept=[(k, 57)],
                                 shape=shape, added=a) for a in added) / len(added)  # fmt: skip
        assert metrics["flops_ratio"] == pytest.approx(single, rel=0.02)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["pruner"] == pruner and on_disk["git_sha"]
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["config"]["pruner"]["name"] == pruner
    assert "torch" in run_json["provenance"]["packages"]


def test_scored_run_reports_all_metrics(data_root: Path, tmp_path: Path, meteor, minilm_encoder) -> None:
    cfg = _cfg(data_root, tmp_path / "run", "pruner=fastv", "keep=0.25")
    metrics = run(cfg, choices=_choices(cfg))
    for key in ("meteor", "ap50", "miou", "recall"):
        assert metrics[key] is not None and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["cider"] is not None and 0.0 <= metrics["cider"] <= 10.0  # CIDEr-D is not a fraction
    # The very numbers eval.gcg gives for the run's folder and images: the runner scored what it wrote.
    direct = evaluate(pred_dir=tmp_path / "run" / "predictions", gt_dir=Path(cfg.data.gt_dir), split="val",
                      text_encoder=minilm_encoder, meteor=meteor)  # fmt: skip
    assert {k: metrics[k] for k in direct if k in METRICS} == {k: direct[k] for k in METRICS}
    assert metrics["text_encoder"] == "minilm"
    assert metrics["mean_kept_tokens"] == kept_count(0.25, 576)


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


def test_fixing_image_dir_reruns_exactly_the_failed_images(data_root: Path, tmp_path: Path) -> None:
    cfg0 = _cfg(data_root, tmp_path / "unused", "evaluate=false", "max_images=1")
    run(cfg0, choices=_choices(cfg0))  # makes sure the split exists
    partial = tmp_path / "partial"
    shutil.copytree(data_root / "images", partial)
    gone = sorted(partial.iterdir())[1:3]
    for p in gone:
        p.unlink()
    missing = sorted(p.stem for p in gone)
    bad = _cfg(data_root, tmp_path / "run", "pruner=fastv", "evaluate=false", f"data.image_dir={partial}")
    first = run(bad, choices=_choices(bad))
    assert first["n_failed"] == 2 and sorted(first["failed_images"]) == missing
    preds = tmp_path / "run" / "predictions"
    before = {p.stem: (p.read_bytes(), p.stat().st_mtime_ns) for p in preds.glob("*.json")}
    fixed = _cfg(data_root, tmp_path / "run", "pruner=fastv", "evaluate=false")
    second = run(fixed, choices=_choices(fixed))
    assert second["n_failed"] == 0 and second["failed_images"] == []
    after = {p.stem: (p.read_bytes(), p.stat().st_mtime_ns) for p in preds.glob("*.json")}
    rerun = sorted(i for i in after if after[i] != before[i])
    assert rerun == missing  # the others were not touched
    for i in missing:
        assert json.loads((tmp_path / "run" / "records" / f"{i}.json").read_text())["error"] is None


def _run_py(*args: str, env_extra: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", **(env_extra or {})}
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, **kw)


@pytest.mark.slow  # through run.py in subprocesses; tests/test_bad_inputs.py checks the same in-process
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


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


@pytest.mark.parametrize("batch", ["batch_size=1", "batch_size=4"])  # 4: continuous, images written as they finish
@pytest.mark.parametrize("fault", ["raise@2", "raise-torn@1"])
def test_interrupted_run_resumes_to_identical_bytes(fault: str, batch: str, data_root: Path, tmp_path: Path,
                                                    monkeypatch) -> None:  # fmt: skip
    # A fault injected at an exact image (the runner's test-only ALTP_TEST_FAULT), not a timed kill.
    args = ("pruner=altp", "keep=0.1", "evaluate=false")
    ref = _cfg(data_root, tmp_path / "ref", *args)
    run(ref, choices=_choices(ref))
    cfg = _cfg(data_root, tmp_path / "cut", *args, batch)
    monkeypatch.setenv("ALTP_TEST_FAULT", fault)
    with pytest.raises(InjectedFault):
        run(cfg, choices=_choices(cfg))
    done = 2 if fault == "raise@2" else 1
    assert len(_bytes(tmp_path / "cut" / "predictions")) == done
    assert len(_bytes(tmp_path / "cut" / "records")) == 2  # torn: image 1's record without its prediction
    monkeypatch.delenv("ALTP_TEST_FAULT")
    run(cfg, choices=_choices(cfg))
    assert _bytes(tmp_path / "cut" / "predictions") == _bytes(tmp_path / "ref" / "predictions")
    strip = lambda d: {k: {**json.loads(v), "timings": None} for k, v in _bytes(d).items()}  # noqa: E731
    assert strip(tmp_path / "cut" / "records") == strip(tmp_path / "ref" / "records")


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["batch_size=1", "batch_size=4"])  # 4: continuous, written as they finish
@pytest.mark.parametrize("fault", ["kill@2", "kill-torn@3"])
def test_killed_process_resumes_to_identical_bytes(fault: str, batch: str, tmp_path: Path) -> None:
    """A real SIGKILL at an exact image, through run.py in subprocesses."""
    n = 5
    common = ["model=glamm_tiny", "data=synthetic", f"data.root={tmp_path / 'data'}",
              f"data.generate.n_images={n}", "pruner=altp", "keep=0.1", "evaluate=false"]  # fmt: skip
    ref = _run_py(*common, f"out_dir={tmp_path / 'ref'}", timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    killed = _run_py(*common, batch, f"out_dir={out}", timeout=600, env_extra={"ALTP_TEST_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL
    assert len(_bytes(out / "predictions")) == int(fault[-1])
    again = _run_py(*common, f"out_dir={out}", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _bytes(out / "predictions") == _bytes(tmp_path / "ref" / "predictions")
    assert not list(out.rglob(".*.tmp")), "no temp files left behind"


def test_progress_bar_names_what_runs():
    from omegaconf import OmegaConf

    from altp.pruners import build_pruner
    from altp.run.runner import _progress_label

    cfg = OmegaConf.create({"keep": 0.1})
    assert _progress_label(None, cfg, {"pruner": "none"}) == "none (unpruned)"
    assert _progress_label(build_pruner("fastv", keep=0.1), cfg, {"pruner": "fastv"}) == "fastv keep=0.1"
    fixed = build_pruner("pdrop", keep=0.1, lambda_=0.5)
    assert _progress_label(fixed, cfg, {"pruner": "pdrop"}) == "pdrop (own schedule; keep=0.1 unused)"
