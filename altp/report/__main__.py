"""``python -m altp.report RESULTS_DIR --out DIR``: see :mod:`altp.report.build`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from altp.configs import conf_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m altp.report", description="Build a study's static HTML report.")
    ap.add_argument("results", type=Path, help="folder with metrics.json files and/or run directories")
    ap.add_argument("--out", type=Path, required=True, help="report folder (index.html goes there)")
    ap.add_argument("--conf", type=Path, default=None,
                    help="Hydra config root (pruner defaults); default: the package's conf/")
    ap.add_argument("--text-encoder", default="auto",
                    help="per-image recall encoder: auto (the runs' own), minilm, bert-base-uncased, a folder, or none")
    ap.add_argument("--max-images", type=int, default=50, help="gallery images per model and data (0: all)")
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: no directory {args.results}; pass a results folder (e.g. results/shapes) or runs/",
              file=sys.stderr)
        return 2
    from altp.report.build import build_report

    try:
        index = build_report(args.results, args.out, conf_dir=args.conf or conf_dir(),
                             text_encoder=None if args.text_encoder == "none" else args.text_encoder,
                             max_images=args.max_images or None)
    except (OSError, KeyError, ValueError) as err:  # each names the file it could not read
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2
    print(f"wrote {index} (open it in a browser; all files are relative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
