"""batch_size, num_workers and the number of ranks change how fast a run goes, never what it writes.

The oracle is a one-process, batch-1, in-process run of the same config: predictions must be
byte-identical and records equal with their timings left out, for every pruner. The
distributed runs go through ``torchrun`` (gloo on the CPU) in one launch, a Hydra ``-m`` sweep
over every pruner, so process start-up is paid once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from altp.configs import config_options
from altp.run.distributed import World, env_from_slurm, first_slurm_host, rank_share
from altp.run.runner import run
from altp.run_dir import default_cell

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 5
KEEP = 0.25
PRUNERS = config_options("pruner")  # every registered pruner and none


def _cfg(data_root: Path, out_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[
            "model=glamm_tiny", "data=synthetic", f"data.root={data_root}", f"data.generate.n_images={N_IMAGES}",
            f"keep={KEEP}", "evaluate=false", f"out_dir={out_dir}", *overrides,
        ])  # fmt: skip


def _run(data_root: Path, out_dir: Path, *overrides: str) -> dict:
    cfg = _cfg(data_root, out_dir, *overrides)
    return run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": cfg.pruner.name})


def _outputs(run_dir: Path) -> tuple[dict[str, bytes], dict[str, dict]]:
    """(prediction bytes, records without timings) by file name."""
    preds = {p.name: p.read_bytes() for p in sorted((run_dir / "predictions").glob("*.json"))}
    recs = {p.name: {**json.loads(p.read_text()), "timings": None} for p in sorted((run_dir / "records").glob("*.json"))}
    return preds, recs


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def reference(data_root: Path, tmp_path_factory) -> Path:
    """One-process, batch-1, in-process runs of every pruner, under their run cells."""
    root = tmp_path_factory.mktemp("reference")
    for pruner in PRUNERS:
        _run(data_root, root / default_cell(pruner, KEEP), f"pruner={pruner}", "batch_size=1", "num_workers=0")
    return root


def _same_as_reference(run_dir: Path, reference: Path, pruner: str) -> None:
    want = _outputs(reference / default_cell(pruner, KEEP))
    got = _outputs(run_dir)
    assert len(want[0]) == N_IMAGES
    assert got[0] == want[0], f"{pruner}: predictions differ"
    assert got[1] == want[1], f"{pruner}: records differ"


@pytest.mark.parametrize("pruner", PRUNERS)
def test_batch_8_writes_what_batch_1_writes(pruner: str, data_root: Path, reference: Path, tmp_path: Path) -> None:
    metrics = _run(data_root, tmp_path / "run", f"pruner={pruner}", "batch_size=8", "num_workers=1")
    assert metrics["n_failed"] == 0
    _same_as_reference(tmp_path / "run", reference, pruner)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["throughput"] == {"batch_size": 8, "batching": "continuous", "num_workers": 1, "world_size": 1,
                                  "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    assert all(r["input_wait_ms"] >= 0 and r["wall_ms"] > 0 for r in info["per_image"])


@pytest.mark.parametrize("pruner", ["fastv", "pdrop"])
def test_static_batches_write_what_batch_1_writes(pruner: str, data_root: Path, reference: Path, tmp_path: Path) -> None:
    _run(data_root, tmp_path / "run", f"pruner={pruner}", "batch_size=4", "batching=static")
    _same_as_reference(tmp_path / "run", reference, pruner)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["throughput"]["batching"] == "static"


def test_several_batches_and_workers_write_what_one_process_writes(data_root, reference, tmp_path) -> None:
    # batch 2 over 5 images: two full batches and a partial one; two workers interleave the images.
    _run(data_root, tmp_path / "run", "pruner=altp", "batch_size=2", "num_workers=2")
    _same_as_reference(tmp_path / "run", reference, "altp")


def test_num_workers_2_equals_num_workers_0(data_root: Path, tmp_path: Path) -> None:
    _run(data_root, tmp_path / "w0", "pruner=altp", "num_workers=0", "max_images=3")
    _run(data_root, tmp_path / "w2", "pruner=altp", "num_workers=2", "max_images=3")
    assert _outputs(tmp_path / "w2") == _outputs(tmp_path / "w0")


def test_resume_with_another_batch_size_and_worker_count_is_accepted(data_root, reference, tmp_path) -> None:
    _run(data_root, tmp_path / "run", "pruner=fastv", "max_images=2", "batch_size=1", "num_workers=0")
    _run(data_root, tmp_path / "run", "pruner=fastv", "batch_size=4", "num_workers=2")  # not a different config
    _same_as_reference(tmp_path / "run", reference, "fastv")


# --------------------------------------------------------------------------- several ranks


def _torchrun(cwd: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(ROOT / "run.py"),
           *args]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _common(data_root: Path) -> list[str]:
    return ["model=glamm_tiny", "data=synthetic", f"data.root={data_root}", f"data.generate.n_images={N_IMAGES}",
            f"keep={KEEP}", "evaluate=false"]  # fmt: skip


# In the default suite: the data-parallel guarantee for every pruner. One torchrun launch, every
# pruner in one -m sweep (about 40 s on 2 cores).
def test_two_ranks_write_what_one_process_writes_for_every_pruner(data_root, reference, tmp_path) -> None:
    out = tmp_path / "ranks"
    proc = _torchrun(tmp_path, "-m", *_common(data_root), f"pruner={','.join(PRUNERS)}", "batch_size=2",
                     f"out_dir='{out}/${{run_cell:${{pruner}}}}'")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for pruner in PRUNERS:
        _same_as_reference(out / default_cell(pruner, KEEP), reference, pruner)
        info = json.loads((out / default_cell(pruner, KEEP) / "run.json").read_text())
        assert info["throughput"]["world_size"] == 2
        assert (out / default_cell(pruner, KEEP) / ".hydra" / "config.yaml").is_file()
    # Rank 0 alone scored and printed its metrics.
    assert sum("(kept " in line for line in proc.stdout.splitlines()) == len(PRUNERS)


@pytest.mark.slow
def test_killed_two_rank_run_resumes_with_one_process(data_root, reference, tmp_path) -> None:
    out = tmp_path / "killed"
    args = [*_common(data_root), "pruner=altp", f"out_dir={out}"]
    killed = _torchrun(tmp_path, *args, env_extra={"ALTP_TEST_FAULT": "kill@1"})  # each rank, at its 2nd image
    assert killed.returncode != 0
    assert len(list((out / "predictions").glob("*.json"))) < N_IMAGES
    again = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    _same_as_reference(out, reference, "altp")
    assert not list(out.rglob(".*.tmp"))


# --------------------------------------------------------------------------- shares and the SLURM mapping


def test_rank_shares_partition_the_todo_list() -> None:
    items = list(range(11))
    for size in (1, 2, 3, 4):
        shares = [rank_share(items, World(rank=r, size=size)) for r in range(size)]
        assert sorted(x for s in shares for x in s) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_slurm_variables_map_onto_torchrun_names() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[007-010],cpu1"}  # fmt: skip
    env_from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("5", "8", "1", "gpu007")
    assert 20000 <= int(env["MASTER_PORT"]) < 40000
    again = {k: v for k, v in env.items() if not k.startswith(("RANK", "WORLD", "LOCAL", "MASTER"))}
    env_from_slurm(again)
    assert again["MASTER_PORT"] == env["MASTER_PORT"]  # every task of the job derives the same port
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    env_from_slurm(single)
    assert "RANK" not in single  # one task: a plain run
    under_torchrun = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "RANK": "3"}
    env_from_slurm(under_torchrun)
    assert under_torchrun["RANK"] == "3"


@pytest.mark.parametrize(("nodelist", "first"), [("node5", "node5"), ("a[1-3]", "a1"), ("gpu[007,009]", "gpu007"),
                                                 ("x1,y[2-4]", "x1"), ("n[10-11]-ib", "n10-ib")])  # fmt: skip
def test_first_slurm_host(nodelist: str, first: str) -> None:
    assert first_slurm_host(nodelist) == first


def test_slurm_launcher_runs_one_task_per_gpu() -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_SETPIPE_SZ is Linux's")
def test_worker_result_pipes_are_widened_to_the_system_maximum() -> None:
    # A worker's result must cross in one write, not 64 KiB chunks (see altp.run.pipeline._WidePipeFork).
    import fcntl

    from altp.run.pipeline import _pipe_max_size, _WidePipeFork

    queue = _WidePipeFork().Queue()
    try:
        size = fcntl.fcntl(queue._reader.fileno(), 1032)  # F_GETPIPE_SZ
        assert size == _pipe_max_size() > 0  # 1 MiB unless the system says otherwise
        queue.put(b"x" * 700_000)
        assert queue.get(timeout=10) == b"x" * 700_000
    finally:
        queue.close()
