"""publish_study: records copied as laid out, and a CI slice of one directory per cell in either run layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.publish_study import publish


def _run_dir(root: Path, rel: str, pruner: str, keep: float, config_keep: float) -> None:
    d = root / rel
    for sub in ("predictions", "records"):
        (d / sub).mkdir(parents=True)
        for image_id in ("a", "b"):
            (d / sub / f"{image_id}.json").write_text(
                json.dumps({"image_id": image_id, "dir": rel})
            )
    (d / "metrics.json").write_text(
        json.dumps({"data": "shapes_val", "pruner": pruner, "keep": keep})
    )
    run = {"config": {"keep": config_keep}, "per_image": [{"image_id": "a"}, {"image_id": "b"}]}
    (d / "run.json").write_text(json.dumps(run))
    (d / "fingerprint.json").write_text("{}")


@pytest.mark.parametrize(
    ("layout", "unpruned_dirs", "sliced"),
    [
        # The layout the committed study was made with: the unpruned model once per keep.
        ("old", ["none/keep0.1", "none/keep0.25", "none/keep0.5"], "none/keep0.1"),
        # Today's: once per split, in none/keep1.0 (whatever keep the sweep passed).
        ("new", ["none/keep1.0"], "none/keep1.0"),
    ],
)
def test_publish_reads_both_layouts(
    tmp_path: Path, layout: str, unpruned_dirs: list[str], sliced: str
) -> None:
    runs, out = tmp_path / "runs", tmp_path / "results" / "glamm_shapes"
    for rel, keep in zip(unpruned_dirs, (0.1, 0.25, 0.5), strict=False):
        _run_dir(runs, f"shapes_val/{rel}", "none", 1.0, keep)
    _run_dir(runs, "shapes_val/fastv/keep0.1", "fastv", 0.1, 0.1)
    _run_dir(runs, "shapes_val/fastv/keep0.25", "fastv", 0.25, 0.25)
    done = publish(
        runs, out, slice_cells=["none:1.0", "fastv:0.1"], slice_images=1, slice_data=["shapes_val"]
    )
    assert sorted(str(p.relative_to(out)) for p in done) == sorted(
        [f"shapes_val/{r}" for r in unpruned_dirs]
        + ["shapes_val/fastv/keep0.1", "shapes_val/fastv/keep0.25"]
    )
    for p in done:
        assert sorted(f.name for f in p.iterdir()) == [
            "fingerprint.json",
            "metrics.json",
            "run.json",
        ]
    ci = tmp_path / "results" / "ci_slice" / "glamm_shapes" / "shapes_val"
    assert sorted(str(p.parent.relative_to(ci)) for p in ci.glob("*/*/records")) == [
        "fastv/keep0.1", sliced
    ]  # fmt: skip
    assert [p.name for p in (ci / sliced / "predictions").iterdir()] == ["a.json"]
