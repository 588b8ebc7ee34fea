"""The committed shapes study reproduces: rerun its CI slice and compare with results/.

``results/shapes/ci_slice/`` holds, for one cell per pruner of the committed
sweep (``scripts/publish_study.py``), the per-image predictions and records of
the first images of shapes val exactly as the sweep wrote them. This reruns
those cells on those images through the runner (CPU, fp32) and requires every caption, phrase, mask RLE, kept-token index, stage
count, region budget and token count to be identical. Timings are excluded, and
so are record fields added after the slice was written (each field the committed
records have is compared exactly).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from altp.run.runner import run

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT / "results" / "shapes" / "ci_slice" / "glamm_shapes" / "shapes_val"
CELLS = sorted(p.parent for p in SLICE.glob("*/keep*/records"))


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timings"}


def test_slice_is_present():
    assert len(CELLS) >= 7, f"expected one CI-slice cell per pruner under {SLICE}, found {len(CELLS)}"


@pytest.mark.parametrize("cell", CELLS, ids=[f"{c.parent.name}-{c.name}" for c in CELLS])
def test_rerun_matches_committed(cell: Path, tmp_path: Path):
    pruner, keep = cell.parent.name, float(cell.name.removeprefix("keep"))
    committed = sorted((cell / "records").glob("*.json"))
    n = len(committed)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=glamm_shapes", "data=shapes_val", f"pruner={pruner}", f"keep={keep}",
            f"data.root={tmp_path / 'data'}", f"data.generate.n_images={n}", f"max_images={n}",
            "evaluate=false", f"out_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    run(cfg, choices={"model": "glamm_shapes", "data": "shapes_val", "pruner": pruner})
    for rec_path in committed:
        image_id = rec_path.stem
        new_rec = json.loads((tmp_path / "run" / "records" / rec_path.name).read_text())
        old_rec = _strip(json.loads(rec_path.read_text()))
        assert {k: new_rec.get(k, "<missing>") for k in old_rec} == old_rec, f"{pruner} keep={keep} {image_id}"
        new_pred = json.loads((tmp_path / "run" / "predictions" / rec_path.name).read_text())
        old_pred = json.loads((cell / "predictions" / rec_path.name).read_text())
        assert new_pred == old_pred, f"{pruner} keep={keep} {image_id}: prediction differs from the committed one"


FINGERPRINTS = sorted((ROOT / "results").rglob("fingerprint.json"))


def _targets(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "_target_" and isinstance(v, str)] + [
            t for v in node.values() for t in _targets(v)
        ]
    return []


def test_every_committed_target_imports():
    import importlib

    targets = {t for path in FINGERPRINTS for t in _targets(json.loads(path.read_text()))}
    assert targets, "no _target_ found in the committed fingerprints"
    missing = []
    for target in sorted(targets):
        module, _, attr = target.rpartition(".")
        try:
            getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            missing.append(f"{target}: {err}")
    assert not missing, "committed fingerprints name builders that do not import " \
        "(run scripts/refresh_fingerprints.py):\n" + "\n".join(missing)


def test_committed_slice_fingerprints_are_todays(tmp_path: Path):
    """Resuming a committed cell with today's config is accepted: its fingerprint is today's."""
    import sys

    from altp.run.fingerprint import guard_resume

    sys.path.insert(0, str(ROOT / "scripts"))
    from refresh_fingerprints import current_fingerprint

    for cell in CELLS:
        current = current_fingerprint(cell, tmp_path / "data")
        guard_resume(cell, current)  # raises the one-line refusal a stale fingerprint gets
