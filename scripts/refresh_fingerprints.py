"""Rewrite the committed run directories' ``fingerprint.json`` as today's code computes it.

A committed run directory (``results/shapes/...``) carries the fingerprint of the config
that made it, so that rerunning its command into a copy of it resumes instead of starting
over. When the code moves (a builder's ``_target_`` path) or the fingerprint's format
changes, the old fingerprint no longer matches and a resume is refused. This script
recomputes each one from the cell's recorded config, composed again with today's
``conf/``: the same config groups (``run.json``'s ``choices``), ``keep``, ``seed`` and every
hyper-parameter the cell recorded, today's ``_target_`` paths and today's defaults for
keys added since. The data part is computed from the split regenerated bit-identically
from its recorded generation parameters (into a temporary folder), the weights part from
the shipped files. A CI-slice cell (``results/shapes/ci_slice/<model>/<data>/<pruner>/<cell>``)
takes the config of the full cell it was cut from (the same path without ``ci_slice/``).

Only a cell whose predictions today's code still reproduces should be refreshed:
``tests/test_committed_study.py`` checks that for the CI slice.

    .venv/bin/python scripts/refresh_fingerprints.py            # every fingerprint under results/
    .venv/bin/python scripts/refresh_fingerprints.py --check    # exit 1 if any is stale
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp.configs import conf_dir  # noqa: E402
from altp.data.resolve import resolve_split  # noqa: E402
from altp.provenance import write_json_atomic  # noqa: E402
from altp.run.fingerprint import FINGERPRINT_FILE, fingerprint  # noqa: E402


def _source_run_json(cell: Path) -> Path:
    """The run.json recording the config of ``cell`` (a CI-slice cell's is its full cell's)."""
    parts = cell.parts
    if "ci_slice" in parts:
        i = parts.index("ci_slice")
        cell = Path(*parts[:i], *parts[i + 1 :])
    path = cell / "run.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing, so the config of {cell} is unknown")
    return path


def _overrides(run: dict[str, Any], data_root: Path) -> list[str]:
    cfg, choices = run["config"], run["choices"]
    out = [f"model={choices['model']}", f"data={choices['data']}", f"pruner={choices['pruner']}",
           f"keep={cfg['keep']}", f"seed={cfg['seed']}", f"data.root={data_root / choices['data']}"]
    for group in ("model", "pruner"):
        for key, value in cfg[group].items():
            if key != "_target_":
                out.append(f"++{group}.{key}={json.dumps(value)}")
    gen = cfg["data"].get("generate")
    if gen is not None:
        out += [f"data.generate.{key}={json.dumps(value)}" for key, value in gen.items()]
    return out


def current_fingerprint(cell: Path, data_root: Path) -> dict[str, Any]:
    """Today's fingerprint of the config that made ``cell`` (its split generated under ``data_root``)."""
    run = json.loads(_source_run_json(cell).read_text(encoding="utf-8"))
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=_overrides(run, data_root))
    return fingerprint(cfg, resolve_split(cfg.data))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--check", action="store_true", help="only report stale fingerprints (exit 1 if any)")
    args = ap.parse_args(argv)
    stale = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(args.results.rglob(FINGERPRINT_FILE)):
            new = current_fingerprint(path.parent, Path(tmp))
            old = json.loads(path.read_text(encoding="utf-8"))
            if old == new:
                continue
            stale += 1
            if args.check:
                print(f"stale: {path}")
            else:
                write_json_atomic(path, new)
                print(f"refreshed: {path}")
    print(f"{stale} fingerprint(s) {'stale' if args.check else 'refreshed'}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
