"""Copy a finished sweep's run records into results/ (and a CI slice of its per-image outputs).

For every run directory under ``--runs`` (one per cell, holding ``metrics.json``)
this copies ``metrics.json``, ``run.json`` and ``fingerprint.json`` -- the
numbers with the config and version that made them -- to the same relative path
under ``--out`` (``<data>/<pruner>/keep<k>``; the unpruned model once, in
``none/keep1.0``; runs made before that layout hold it once per keep, and are
published as they are). Per-image predictions and records stay in ``runs/`` (tens of MB)
except a *CI slice*: the first ``--slice-images`` images of the cells named by
``--slice`` (``pruner:keep`` as metrics.json records it) go to ``ci_slice/<name of --out>/<same path>/`` beside ``--out``
(``results/shapes/ci_slice/glamm_shapes/...`` for the example below), with the cell's
``fingerprint.json`` (model, pruner, keep, seed, data: what the report's gallery and the
token figures need to redraw an image without the full ``run.json``);
``tests/test_committed_study.py`` reruns exactly those and fails on any difference.

Example (after ``python run.py -m model=glamm_shapes data=shapes_val pruner=... keep=...``)::

    .venv/bin/python scripts/publish_study.py --runs runs/glamm_shapes --out results/shapes/glamm_shapes
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

# pruner:keep as recorded in metrics.json (the unpruned model records keep 1.0).
DEFAULT_SLICE = ("none:1.0", "fastv:0.1", "pdrop:0.25", "ddc:0.5", "altp:0.1", "random:0.25", "uniform:0.5",
                 "visionzip:0.25", "divprune:0.1", "dart:0.5")


def publish(runs: Path, out: Path, *, slice_cells: list[str], slice_images: int,
            slice_data: list[str]) -> list[Path]:
    """Copy the run records; returns the published run directories (under ``out``)."""
    published, sliced = [], set()
    wanted = {(c.split(":")[0], float(c.split(":")[1])) for c in slice_cells}
    for metrics_path in sorted(runs.rglob("metrics.json")):
        run_dir = metrics_path.parent
        rel = run_dir.relative_to(runs)
        dest = out / rel
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "run.json", "fingerprint.json"):
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
        published.append(dest)
        metrics = json.loads(metrics_path.read_text())
        run = json.loads((run_dir / "run.json").read_text())
        cell = (metrics["data"], metrics["pruner"], float(metrics["keep"]))
        # Runs made before pruner=none had one directory hold it once per keep (none/keep0.1,
        # none/keep0.25, ...): the first in path order stands for the cell.
        if metrics["data"] not in slice_data or cell[1:] not in wanted or cell in sliced:
            continue
        sliced.add(cell)
        ids = [r["image_id"] for r in run["per_image"]][:slice_images]
        sl = out.parent / "ci_slice" / out.name / rel
        for sub in ("predictions", "records"):
            (sl / sub).mkdir(parents=True, exist_ok=True)
            for image_id in ids:
                shutil.copy2(run_dir / sub / f"{image_id}.json", sl / sub / f"{image_id}.json")
        # Not metrics.json: the tables would count the slice as a second run of the cell.
        shutil.copy2(run_dir / "fingerprint.json", sl / "fingerprint.json")
    return published


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="root of the sweep's run directories")
    ap.add_argument("--out", type=Path, required=True, help="where the records go (under results/)")
    ap.add_argument("--slice", nargs="*", default=list(DEFAULT_SLICE), help="pruner:keep cells of the CI slice")
    ap.add_argument("--slice-images", type=int, default=3)
    ap.add_argument("--slice-data", nargs="*", default=["shapes_val"], help="data names the slice is taken from")
    args = ap.parse_args(argv)
    done = publish(args.runs, args.out, slice_cells=args.slice, slice_images=args.slice_images,
                   slice_data=args.slice_data)
    print(f"published {len(done)} run record(s) under {args.out}")


if __name__ == "__main__":
    main()
