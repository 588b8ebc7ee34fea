"""Demo: the embedded shapes GLaMM, unpruned and with every pruner at one keep ratio.

Runs ``run.py`` as a Hydra multirun -- the same command a user types -- on the
synthetic shapes val split (generated on first use), then prints one comparison
table built from the runs' ``metrics.json``. ``make demo`` runs it with the
defaults (unpruned + every pruner at keep 0.1 on the first 50 val images).

SYNTHETIC benchmark and a small model trained here (altp/models/assets/shapes):
these numbers say how the pruners compare on that benchmark, not on GranD-f.

Example::

    .venv/bin/python scripts/demo.py --keep 0.25 --max-images 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from altp.configs import config_options
from altp.flops import FLOPS_CONVENTIONS
from altp.pruner_order import in_display_order
from altp.run_dir import default_cell

# The convention make tables shows by default (comparable with the paper's FLOPs column).
FLOPS = FLOPS_CONVENTIONS["paper"]

ROOT = Path(__file__).resolve().parents[1]
_COLUMNS = (  # (metrics.json key, header, format of the shown value)
    ("meteor", "METEOR", "{:.1f}", 100),
    ("cider", "CIDEr", "{:.1f}", 100),
    ("ap50", "AP50", "{:.1f}", 100),
    ("miou", "mIoU", "{:.1f}", 100),
    ("recall", "Recall", "{:.1f}", 100),
    (FLOPS.key, f"FLOPs % ({FLOPS.name})", "{:.1f}", 100),
    ("mean_kept_tokens", "kept tok", "{:.0f}", 1),
    ("time_per_image_s", "s / img", "{:.2f}", 1),
)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per run (metrics x100, FLOPs as the remaining %)."""
    lines = [
        "| pruner | keep | " + " | ".join(name for _, name, _, _ in _COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(_COLUMNS),
    ]
    for m in rows:
        cells = []
        for key, _, fmt, scale in _COLUMNS:
            v = m.get(key)
            cells.append("n/a" if v is None else fmt.format(scale * v))
        keep = "1.0" if m["pruner"] == "none" else f"{m['keep']:g}"
        lines.append(f"| {m['pruner']} | {keep} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="one run directory per pruner and keep (<pruner>/keep<k>; none/keep1.0)")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--pruners", nargs="+", default=in_display_order(config_options("pruner")),
                        help="default: every pruner of conf/pruner/ (the registry), in the tables' order")
    parser.add_argument("--max-images", type=int, default=50, help="first N images of shapes val")
    parser.add_argument("--model", default="glamm_shapes")
    parser.add_argument("--data", default="shapes_val")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (Hydra's joblib launcher)")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    if "'" in str(out):
        parser.error(f"--out {out} contains a quote; Hydra's override grammar cannot take it")
    # The project's run-directory names under --out (altp/run_dir.py): <pruner>/keep<k>, and the
    # unpruned model once in none/keep1.0, so demos at several keeps share its run. The quotes let
    # Hydra's override grammar keep the nested interpolation for OmegaConf.
    cmd = [
        sys.executable, str(ROOT / "run.py"), "-m",
        f"model={args.model}", f"data={args.data}", f"pruner={','.join(args.pruners)}", f"keep={args.keep}",
        f"max_images={args.max_images}", f"out_dir='{out}/${{run_cell:${{pruner}}}}'",
    ]  # fmt: skip
    if args.jobs > 1:  # one thread per job: tiny models gain nothing from more, and 2 jobs fill 2 cores
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    rows = [json.loads((out / default_cell(p, args.keep) / "metrics.json").read_text()) for p in args.pruners]
    print()
    print(f"{args.model} on the first {args.max_images} images of {args.data} -- a SYNTHETIC benchmark and a")
    print("small model trained here (altp/models/assets/shapes/TRAINING.md), not GranD-f:")
    print(format_rows(rows))
    print(f"FLOPs % ({FLOPS.name}) = {FLOPS.description} (metrics.json {FLOPS.key}); each run's own line above "
          "also prints FLOPs%(prompt), the same eq. 5 on its real prompt")
    print(f"\nrun records under {out}; total {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
