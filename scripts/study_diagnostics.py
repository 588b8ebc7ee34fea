"""Where each pruner of a finished study keeps its tokens: on object patches, on the border ring, coverage.

For every run directory under ``--runs`` (``records/`` + ``run.json``, as
:func:`altp.run.runner.run` writes them) and every pruning stage, the mean over the
split's images of

* ``kept``: visual tokens kept after the stage (``kept_per_stage``);
* ``on_object``: the share of those tokens whose patch is an object patch, i.e.
  lies in the union of the image's in-view GT objects' patches
  (:func:`altp.coverage.object_patches`, through the model's own
  ``token_grid_fraction``);
* ``border``: the share of them in the outer ring of the token grid, ``--ring``
  patches wide (2 on GLaMM's 24x24 grid: 176 of 576 tokens, 30.6 %);
* ``coverage``: the record's ``object_coverage`` of the stage (mean over
  in-view objects of the share of their patches kept), recomputed here from the
  same patches as a check (a mismatch stops the script).

The base rates (an unpruned model, or a pruner that kept tokens blindly) are the
shares of all V tokens: they head the table. The run's metrics (AP50, mIoU,
recall, CIDEr) come from its ``metrics.json``. Per-image records are not
committed (except the CI slice), so this reads ``runs/``; its output is.

Example::

    .venv/bin/python scripts/study_diagnostics.py --runs runs/glamm_shapes \\
        --out results/shapes/token_diagnostics
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from altp.coverage import decode_gt_masks, object_patches, stage_coverage
from altp.viz.rundir import kept_per_stage_lists, load_split

COLUMNS = ("data", "cell", "stage", "layer", "kept", "coverage", "on_object", "border",
           "ap50", "miou", "recall", "cider", "n_images")  # fmt: skip


def border_ring(grid: tuple[int, int], width: int) -> np.ndarray:
    """Flat row-major indices of the tokens within ``width`` patches of the grid's edge, ascending."""
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    ring = (r < width) | (r >= rows - width) | (c < width) | (c >= cols - width)
    return np.flatnonzero(ring)


def kept_share(kept: list[int], region: np.ndarray) -> float:
    """Fraction of ``kept`` (original visual indices) that lies in ``region``."""
    return float(np.isin(np.asarray(kept, dtype=np.int64), region).mean()) if kept else math.nan


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(xs)) if xs else None


class _Objects:
    """In-view object patches per image of a split, through one model's token geometry (cached)."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._patches: dict[tuple[str, str, str], list[np.ndarray]] = {}

    def patches(self, model_cfg: dict, data: dict, image_id: str) -> list[np.ndarray]:
        mkey, dkey = json.dumps(model_cfg, sort_keys=True), json.dumps(data, sort_keys=True, default=str)
        key = (mkey, dkey, image_id)
        if key not in self._patches:
            if mkey not in self._models:
                self._models[mkey] = instantiate(OmegaConf.create(model_cfg))
            model = self._models[mkey]
            masks = decode_gt_masks(load_split(data).annotations.masks[image_id])
            found = [object_patches(model.token_grid_fraction(m)) for m in masks]
            self._patches[key] = [p for p in found if p is not None]
        return self._patches[key]


def run_rows(run_dir: Path, root: Path, objects: _Objects, ring: int) -> tuple[list[dict], dict]:
    """Rows (one per stage; one row for an unpruned run) of one run directory, and its base rates."""
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))]
    records = [r for r in records if r.get("error") is None]
    grid = (int(math.isqrt(records[0]["num_visual"])),) * 2  # square grids (GLaMM 24x24, OMG 16x16)
    nv = grid[0] * grid[1]
    edge = border_ring(grid, ring)
    per_stage: dict[int, dict[str, list]] = {}
    base_obj = []
    for rec in records:
        pats = objects.patches(cfg["model"], cfg["data"], rec["image_id"])
        union = np.unique(np.concatenate(pats)) if pats else np.zeros(0, np.int64)
        base_obj.append(union.size / nv)
        kept = kept_per_stage_lists(rec, nv)
        cov = stage_coverage(pats, kept) if rec.get("kept_tokens_per_stage") else [1.0 if pats else None]
        got = rec.get("object_coverage") or [1.0 if pats else None]
        if any((a is None) != (b is None) or (a is not None and abs(a - b) > 1e-9)
               for a, b in zip(cov, got, strict=True)):  # fmt: skip
            raise SystemExit(f"{run_dir}/records/{rec['image_id']}.json: object_coverage {got} != recomputed {cov}")
        layers = rec.get("stage_layers") or [None]
        for s, ks in enumerate(kept):
            d = per_stage.setdefault(s, {"layer": [], "kept": [], "cov": [], "obj": [], "edge": []})
            d["layer"].append(layers[s])
            d["kept"].append(len(ks))
            d["cov"].append(cov[s])
            d["obj"].append(kept_share(ks, union))
            d["edge"].append(kept_share(ks, edge))
    parts = run_dir.relative_to(root).parts  # <data>/<pruner>/<keep...> under runs/<model>
    cell = "/".join(parts[1:] if parts[0] == cfg["data"]["name"] and len(parts) > 1 else parts)
    rows = []
    for s, d in sorted(per_stage.items()):
        layers = sorted({x for x in d["layer"] if x is not None})
        rows.append({
            "data": cfg["data"]["name"], "cell": cell,
            "stage": s + 1 if layers else 0, "layer": "/".join(map(str, layers)) or "-",
            "kept": _mean(d["kept"]), "coverage": _mean(d["cov"]), "on_object": _mean(d["obj"]),
            "border": _mean(d["edge"]), "ap50": metrics.get("ap50"), "miou": metrics.get("miou"),
            "recall": metrics.get("recall"), "cider": metrics.get("cider"), "n_images": len(records),
        })  # fmt: skip
    base = {"data": cfg["data"]["name"], "on_object": _mean(base_obj), "border": edge.size / nv,
            "n_images": len(records), "ring": ring}  # fmt: skip
    return rows, base


def _fmt(v: Any, key: str) -> str:
    if v is None:
        return "—"
    if key in ("coverage", "on_object", "border", "ap50", "miou", "recall", "cider"):
        return f"{100 * v:.1f}"
    if key == "kept":
        return f"{v:.1f}" if not float(v).is_integer() else str(int(v))
    return str(v)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="root of the study's run directories (runs/<model>)")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.md and .csv written)")
    ap.add_argument("--ring", type=int, default=2, help="width in patches of the border ring")
    args = ap.parse_args(argv)
    dirs = sorted(p.parent for p in args.runs.rglob("metrics.json") if (p.parent / "records").is_dir())
    if not dirs:
        raise SystemExit(f"no finished run directory (metrics.json + records/) under {args.runs}")
    objects, rows, bases = _Objects(), [], {}
    for d in dirs:
        r, base = run_rows(d, args.runs, objects, args.ring)
        rows += r
        bases.setdefault(base["data"], base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    cmd = f".venv/bin/python scripts/study_diagnostics.py --runs {args.runs} --out {args.out} --ring {args.ring}"
    lines = [
        f"# Where the kept tokens lie ({args.runs}; SYNTHETIC benchmark / small model)", "",
        f"Generated by `{cmd}`; do not edit. Values x100 except kept and stage. Mean over each split's images, "
        "per pruning stage (stage 0: unpruned). `on_object`: share of the kept tokens on GT object patches; "
        f"`border`: share in the outer {args.ring}-patch ring of the grid; `coverage`: object coverage after the "
        "stage (records' `object_coverage`, recomputed here); metrics: the run's metrics.json.", "",
        "Base rates (share of all tokens):", "",
    ]  # fmt: skip
    for name, b in sorted(bases.items()):
        lines.append(f"- {name}: object patches {100 * b['on_object']:.1f} %, border ring {100 * b['border']:.1f} % "
                     f"({b['n_images']} images)")  # fmt: skip
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[k], k) for k in COLUMNS) + " |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} row(s) from {len(dirs)} run(s) to {args.out}.md and .csv")


if __name__ == "__main__":
    main()
