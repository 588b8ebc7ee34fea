"""Run records: the flat ``metrics.json`` files under ``results/``, newest-wins per cell.

A run record is a directory with a flat ``metrics.json`` (written by
:func:`altp.run.runner.run`): ``model``, ``pruner``, ``keep``, ``data``, ``split``,
the five metrics as fractions, ``flops_ratio`` (remaining fraction),
``mean_kept_tokens``, ``pruner.<hparam>`` keys and provenance. A *cell* is one
(model, data, split, pruner, keep, hyper-parameters); when several records fill
one cell the newest wins, by ``finished_at`` (ISO time in metrics.json) when
present, else the file's modification time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from altp.run_dir import FAILED_FILE

__all__ = [
    "REGIONS_KEY",
    "FailedRun",
    "RunRecord",
    "find_failed",
    "find_runs",
    "is_default",
    "load_pruner_defaults",
    "newest_per_cell",
    "sortable",
]

#: metrics.json key of the mean realised region count (DDC / ALTP; altp.run.summary)
REGIONS_KEY = "extras.regions.mean"
_SKIP_DIRS = {"paper", "tables"}  # results/paper: the paper's numbers; results/tables: our output


@dataclass(frozen=True)
class RunRecord:
    """One run directory's flat metrics and when it finished (for newest-wins)."""

    path: Path
    metrics: dict[str, Any]
    finished: float  # POSIX seconds

    @property
    def family(self) -> str:
        data, split = str(self.metrics.get("data", "")), str(self.metrics.get("split", ""))
        return data.removesuffix(f"_{split}") if split else data

    @property
    def hparams(self) -> tuple[tuple[str, Any], ...]:
        """The ``pruner.<key>`` values (the pruner config group's), sorted by key."""
        hp = {k[len("pruner.") :]: v for k, v in self.metrics.items() if k.startswith("pruner.")}
        return tuple(sorted((k, _hashable(v)) for k, v in _config_hparams(hp).items()))

    @property
    def cell(self) -> tuple:
        m = self.metrics
        return (
            m.get("model"),
            m.get("data"),
            m.get("split"),
            m.get("pruner"),
            float(m.get("keep", 1.0)),
            self.hparams,
        )


# Before metrics.json took hyper-parameters from the config, PDrop wrote its constructor's
# `layers` as `layers_arg` and its last image's solved values next to them.
_LEGACY_PDROP_SOLVED = ("lambda", "layers", "kept_per_stage", "lambda_solved")


def _config_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """``hp`` as the config names it, also for records written by older versions (same cell)."""
    if "layers_arg" not in hp:
        return hp
    old = {k: v for k, v in hp.items() if k not in _LEGACY_PDROP_SOLVED}
    old["layers"] = old.pop("layers_arg")
    return old


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def find_runs(results: Path) -> list[RunRecord]:
    """Every ``metrics.json`` under ``results`` except ``results/paper`` and ``results/tables``.

    Raises:
        FileNotFoundError: ``results`` does not exist.
        ValueError: a metrics.json is not JSON (torn, corrupt), or not a flat dict with model, pruner,
            keep, data and split; the message names the file.
    """
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(
            f"no results directory {results}; run experiments first (python run.py ...)"
        )
    runs = []
    for path in sorted(results.rglob("metrics.json")):
        if path.relative_to(results).parts[0] in _SKIP_DIRS:
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not readable JSON ({err}); rerun its run to rewrite it, "
                             f"or delete that folder") from None
        required = ("model", "pruner", "keep", "data", "split")
        missing = (
            [k for k in required if k not in metrics] if isinstance(metrics, dict) else required
        )
        if missing:
            raise ValueError(f"{path} lacks {missing}: not a run record written by altp.run.runner.run")
        finished = metrics.get("finished_at")
        when = datetime.fromisoformat(finished).timestamp() if finished else os.stat(path).st_mtime
        runs.append(RunRecord(path=path, metrics=metrics, finished=when))
    return runs


@dataclass(frozen=True)
class FailedRun:
    """A run directory whose last run failed (its ``failed.json``: model, data, split, pruner, keep, error)."""

    path: Path
    info: dict[str, Any]

    @property
    def line(self) -> str:
        m = self.info
        return (f"FAILED: {m.get('model')} {m.get('data')} {m.get('pruner')} keep={m.get('keep')} "
                f"({self.path.parent}): {m.get('error')}")


def find_failed(results: Path) -> list[FailedRun]:
    """Every run directory under ``results`` whose last run failed (``failed.json``, written by run.py)."""
    out = []
    for path in sorted(Path(results).rglob(FAILED_FILE)):
        if path.relative_to(results).parts[0] in _SKIP_DIRS:
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            info = {}
        out.append(FailedRun(path=path, info=info if isinstance(info, dict) else {}))
    return out


def newest_per_cell(
    runs: Iterable[RunRecord],
) -> tuple[list[RunRecord], list[tuple[RunRecord, RunRecord]]]:
    """Keep the newest record of each cell.

    Returns:
        (kept records, [(set-aside record, the newer record that replaced it)]).
        Equal times are ordered by path, so the result never depends on listing order.
    """
    best: dict[tuple, RunRecord] = {}
    dropped: list[tuple[RunRecord, RunRecord]] = []
    for run in sorted(runs, key=lambda r: (r.finished, str(r.path))):
        if run.cell in best:
            dropped.append((best[run.cell], run))
        best[run.cell] = run
    return list(best.values()), dropped


def load_pruner_defaults(conf_dir: Path) -> dict[str, dict[str, Any]]:
    """Default hyper-parameters per pruner from ``conf_dir/pruner/*.yaml`` (interpolations skipped).

    A null default (PDrop's ``lambda_: null``) is a setting like any other: a run
    that sets it is not at the default.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((Path(conf_dir) / "pruner").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[path.stem] = {
            k: _hashable(v)
            for k, v in cfg.items()
            if not k.startswith("_")
            and k not in ("name", "keep")
            and not (isinstance(v, str) and "${" in v)
        }
    return out


def is_default(run: RunRecord, defaults: dict[str, dict[str, Any]]) -> bool:
    """True when every hyper-parameter the pruner's config fixes has its config value in ``run``."""
    want = defaults.get(str(run.metrics.get("pruner")), {})
    got = dict(run.hparams)
    return all(
        k not in got or got[k] == v or (_num(got[k]) and _num(v) and math.isclose(got[k], v))
        for k, v in want.items()
    )


def sortable(v: Any) -> tuple[int, float, str]:
    """Numbers in numeric order (5 before 10), then anything else by its repr."""
    return (0, float(v), "") if _num(v) else (1, 0.0, repr(v))


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
