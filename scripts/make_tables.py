"""Build the paper-shaped tables (Markdown, LaTeX, CSV) from run records under results/.

Example (what ``make tables`` runs)::

    .venv/bin/python scripts/make_tables.py --results results --out results/tables

Our tables, then the paper's Tables 1-4 (``--paper``) with our runs beside them.
``--flops`` picks the FLOPs column's convention (eq. 5 in the paper's convention by
default, so it compares with the paper's column; see altp/flops.py):

    --flops paper       eq. 5, prefill, the paper's fixed 32 text tokens (metrics.json flops_ratio_paper)
    --flops prompt      eq. 5, prefill, each run's own prompt (flops_ratio)
    --flops generation  prefill + every KV-cached decoding step (generation_flops_ratio)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from altp.configs import conf_dir
from altp.flops import FLOPS_CONVENTIONS
from eval.run_records import find_failed
from eval.table_format import to_markdown
from eval.tables import DEFAULT_FLOPS, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="searched for metrics.json"
    )
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument(
        "--conf",
        type=Path,
        default=None,
        help="Hydra config root; pruner/*.yaml give the default hyper-parameters "
        "(default: the package's conf/)",
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=Path("results/paper/paper_tables.csv"),
        help="the paper's reported numbers ('none' to skip the paper's tables)",
    )
    parser.add_argument(
        "--flops",
        choices=list(FLOPS_CONVENTIONS),
        default=DEFAULT_FLOPS,
        help=f"FLOPs convention of the FLOPs column (default {DEFAULT_FLOPS})",
    )
    args = parser.parse_args(argv)
    paper = None if str(args.paper) == "none" else args.paper
    if paper is not None and not paper.is_file():
        parser.error(f"--paper {paper} does not exist; pass --paper none to skip the comparison")
    try:
        tables = write_tables(
            args.results, args.out, conf_dir=args.conf or conf_dir(), paper_csv=paper, flops=args.flops
        )
    except (OSError, ValueError) as err:  # a missing folder, a torn metrics.json: each names its file
        print(f"error: {err}", file=sys.stderr)
        return 2
    for table in tables:
        print(to_markdown(table))
    for failed in find_failed(args.results):  # cells whose last run failed: no numbers, said so
        print(failed.line)
    n_main = sum(t.slug.startswith("main_") for t in tables)
    print(f"FLOPs column: {FLOPS_CONVENTIONS[args.flops].description} (--flops {args.flops})")
    print(
        f"wrote {len(tables)} table(s) ({n_main} model/data set(s)) to {args.out} as .md, .tex and .csv"
    )
    if n_main == 0:
        print(f"no run records under {args.results}: run experiments first (python run.py ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
