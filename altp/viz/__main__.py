"""``python -m altp.viz {tokens,figures} ...``: see :mod:`altp.viz`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from altp.configs import conf_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m altp.viz", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="command", required=True)
    tok = sub.add_parser("tokens", help="token-retention figure of one image, one row per run directory")
    tok.add_argument("run_dirs", nargs="+", type=Path, help="run directories (with records/ and predictions/)")
    tok.add_argument("--image", required=True, help="image id (a records/<id>.json stem)")
    tok.add_argument("--out", type=Path, required=True, help="output file (.png, .pdf, .svg)")
    tok.add_argument("--dpi", type=int, default=110, help="resolution of a PNG (default 110)")
    fig = sub.add_parser("figures", help="study figures from the metrics.json files under RESULTS_DIR")
    fig.add_argument("results", type=Path, help="searched for metrics.json (paper/ and tables/ skipped)")
    fig.add_argument("--out", type=Path, default=Path("results/figures"))
    fig.add_argument("--conf", type=Path, default=None,
                     help="Hydra config root (pruner defaults); default: the package's conf/")
    args = ap.parse_args(argv)
    try:
        if args.command == "tokens":
            from altp.viz.rundir import load_run_dir
            from altp.viz.tokens import write_token_figure

            runs = [load_run_dir(d) for d in args.run_dirs]
            print(f"wrote {write_token_figure(runs, args.image, args.out, dpi=args.dpi)}")
        else:
            from altp.viz.study import write_study_figures

            paths = write_study_figures(args.results, args.out, conf_dir=args.conf or conf_dir())
            print(f"wrote {len(paths)} figure file(s) to {args.out}")
            if not paths:
                print(f"no run records under {args.results}: run experiments first (python run.py ...)")
    except (OSError, KeyError, ValueError) as err:  # each names the file it could not read
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
