"""Build the paper-shaped tables (Markdown, LaTeX, CSV) from run records under results/.

Example (what ``make tables`` runs)::

    .venv/bin/python scripts/make_tables.py --results results --out results/tables
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.table_format import to_markdown
from eval.tables import write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=Path("results"), help="searched for metrics.json"
    )
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument(
        "--conf",
        type=Path,
        default=Path("conf"),
        help="Hydra config root; pruner/*.yaml give the default hyper-parameters",
    )
    parser.add_argument(
        "--paper",
        type=Path,
        default=Path("results/paper/glamm_grandf.csv"),
        help="the paper's reported numbers ('none' to skip the side-by-side)",
    )
    args = parser.parse_args(argv)
    paper = None if str(args.paper) == "none" else args.paper
    if paper is not None and not paper.is_file():
        parser.error(f"--paper {paper} does not exist; pass --paper none to skip the comparison")
    tables = write_tables(args.results, args.out, conf_dir=args.conf, paper_csv=paper)
    for table in tables:
        print(to_markdown(table))
    n_main = sum(t.slug.startswith("main_") for t in tables)
    print(
        f"wrote {len(tables)} table(s) ({n_main} model/data set(s)) to {args.out} as .md, .tex and .csv"
    )
    if n_main == 0:
        print(f"no run records under {args.results}: run experiments first (python run.py ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
