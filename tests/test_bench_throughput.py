"""scripts/bench_throughput.py runs the runner's own loop on the CPU with a tiny model (the path
scripts/gpu_check.sh takes on a GPU with the full-size random GLaMM)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "scripts" / "bench_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_fastv(tmp_path: Path, *options: str) -> list[dict]:
    """bench_throughput's rows for FastV at keep 0.25 on glamm_tiny over generated images."""
    return _bench().main(["--model", "glamm_tiny", "--data", "synthetic", "--data-root", str(tmp_path / "data"),
                          "--pruners", "fastv", "--keeps", "0.25", "--workers", "0", *options])  # fmt: skip


def test_bench_rows_cover_every_configuration_and_stage(tmp_path: Path, capsys) -> None:
    bench = _bench()
    out = tmp_path / "bench.json"
    rows = bench.main(["--model", "glamm_tiny", "--data", "synthetic", "--data-root", str(tmp_path / "data"),
                       "--images", "2", "--pruners", "none,altp", "--keeps", "0.25", "--batch-sizes", "1,2",
                       "--workers", "1", "--json", str(out)])  # fmt: skip
    assert [(r["pruner"], r["batch_size"], r["workers"]) for r in rows] == [
        (p, b, w) for p in ("none", "altp") for b in (1, 2) for w in (1,)]
    for row in rows:
        assert row["images"] == 2 and row["images_per_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["warmup_images"] == row["batch_size"]  # one warm-up batch of other images, not timed
        assert all(row[k] >= 0 for k in bench.STAGES)
        assert row["vision_ms"] > 0 and row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0
        assert (row["prep_ms"] > 0) == (row["pruner"] == "altp")  # SLIC ran in the pipeline
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["device"] == "cpu"
    assert any("batch 2 continuous / batch 1" in line for line in saved["ratios"])
    printed = capsys.readouterr().out
    assert "img/s" in printed and "altp" in printed


def test_repeats_report_the_median_run_of_each_configuration(tmp_path: Path) -> None:
    rows = _tiny_fastv(tmp_path, "--images", "2", "--batch-sizes", "1,2", "--repeats", "3")
    assert [r["batch_size"] for r in rows] == [1, 2]
    for row in rows:
        runs = row["images_per_s_runs"]
        assert len(runs) == 3 and row["images_per_s"] == sorted(runs)[1]


def test_ranks_rows_come_from_torchrun_launches(tmp_path: Path) -> None:
    # --ranks 1,2: one torchrun launch per world size; each rank its share of the warm-up and timed
    # images, images/s over the slowest rank (all_gather across the gloo group).
    rows = _tiny_fastv(tmp_path, "--images", "4", "--batch-sizes", "2", "--ranks", "1,2")
    assert [r["ranks"] for r in rows] == [1, 2]
    for row in rows:
        assert row["images"] == 4 and row["images_per_s"] > 0
        assert row["warmup_images"] == 2 * row["ranks"]  # one batch of 2 per rank
        assert row["images_per_s"] == row["images"] / row["seconds"]


def test_static_and_continuous_rows_report_slot_utilisation_and_answer_lengths(tmp_path: Path) -> None:
    rows = _tiny_fastv(tmp_path, "--images", "4", "--batch-sizes", "1,2", "--batching", "static,continuous")
    assert [(r["batch_size"], r["batching"]) for r in rows] == [(1, "-"), (2, "static"), (2, "continuous")]
    for row in rows:
        a = row["answer_tokens"]
        assert 1 <= a["min"] <= a["median"] <= a["p90"] <= a["max"] <= 12  # glamm_tiny's max_new_tokens
        assert 0 < row["slot_utilisation"] <= 1 and row["decode_steps"] > 0
    assert any("continuous / static" in line for line in _bench().ratios(rows))
