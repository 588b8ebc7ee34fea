"""Generated splits under parallel sweep jobs: exactly one job writes, the others wait for it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

import altp.data.synthetic as synthetic
from altp.run import runner


def test_concurrent_jobs_generate_a_split_once(tmp_path: Path, monkeypatch):
    calls = []
    real = synthetic.write_synthetic_split

    def slow_write(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other job to arrive while the files are half-written
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_synthetic_split", slow_write)
    cfg = OmegaConf.create({
        "name": "synthetic_val", "split": "val", "root": str(tmp_path),
        "gt_dir": str(tmp_path / "annotations"), "image_dir": str(tmp_path / "images"),
        "generate": {"n_images": 2, "seed": 0, "image_size_range": [64, 96], "objects_range": [1, 2]},
    })  # fmt: skip
    results, errors = [], []

    def job():
        try:
            results.append(len(list(runner.resolve_split(cfg))))
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert calls == [1], "the split was generated more than once"
    assert results == [2, 2, 2]


def test_split_from_an_older_generator_is_rebuilt(tmp_path: Path, monkeypatch):
    calls = []
    real = synthetic.write_synthetic_split
    monkeypatch.setattr(synthetic, "write_synthetic_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = OmegaConf.create({
        "name": "synthetic_val", "split": "val", "root": str(tmp_path),
        "gt_dir": str(tmp_path / "annotations"), "image_dir": str(tmp_path / "images"),
        "generate": {"n_images": 1, "seed": 0, "image_size_range": [64, 96], "objects_range": [1, 2]},
    })  # fmt: skip
    runner.resolve_split(cfg)
    runner.resolve_split(cfg)
    assert calls == [1]  # same parameters and generator: reused
    stamp = tmp_path / ".val_generate.json"
    old = json.loads(stamp.read_text())
    assert old["generator_version"] == synthetic.GENERATOR_VERSION
    stamp.write_text(json.dumps({**old, "generator_version": synthetic.GENERATOR_VERSION - 1}))
    runner.resolve_split(cfg)
    assert calls == [1, 1]  # written by an older generator: rebuilt
