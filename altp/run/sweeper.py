"""Sweeps that finish their healthy cells: a failed cell is recorded, the others run.

Hydra's basic sweeper stops a ``-m`` sweep at the first failed job (it re-raises the
job's error once its batch ends; a job that exits kills the whole sweep, and under the
joblib launcher the cells running beside it). Here a cell's failure is a value: the job
(:func:`altp.run.app.run_app`) prints its one line and raises :class:`CellFailed`, Hydra
stores it in the job's return, and the :class:`SweepOutcomes` callback (``hydra.callbacks``
in conf/config.yaml), called in the job's own process, records it and marks the job
completed, so the sweeper goes on with every other cell, on any launcher (basic, joblib,
submitit). The outcomes travel through ``sweep_outcomes.jsonl`` in the sweep folder; when
the sweep ends the callback prints which cells failed and why, deletes the file, and
:func:`failed_cells` tells the command to exit 1.

Each failed cell also leaves ``failed.json`` in its run directory (the tables mark it;
:mod:`eval.run_records`), removed when the cell next finishes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

__all__ = ["CellFailed", "SweepOutcomes", "failed_cells"]

OUTCOMES_FILE = "sweep_outcomes.jsonl"
_failed: list[tuple[str, str]] = []  # (cell, why) of the sweep that ended last in this process


class CellFailed(Exception):
    """A sweep cell that failed with a one-line error (already printed), and its exit code."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line, code)
        self.line, self.code = line, code

    def __str__(self) -> str:
        return self.line


def failed_cells() -> list[tuple[str, str]]:
    """``(cell, why)`` for every cell that failed in the last sweep that ended in this process."""
    return list(_failed)


def _outcomes(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)).resolve() / OUTCOMES_FILE


class SweepOutcomes(Callback):
    """Records each cell's outcome; a failed cell no longer stops the sweep (see the module doc)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _failed.clear()
        _outcomes(config).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        out_dir = job_return.cfg.get("out_dir") if isinstance(job_return.cfg, DictConfig) else None
        outcome: dict[str, Any] = {"cell": str(out_dir or " ".join(job_return.overrides or []))}
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the job's exception (reading .return_value re-raises it)
            outcome["error"] = err.line if isinstance(err, CellFailed) else \
                f"{type(err).__name__}: {err}".splitlines()[0]  # fmt: skip
            job_return.status, job_return.return_value = JobStatus.COMPLETED, err  # the sweep goes on
        with open(_outcomes(config), "a", encoding="utf-8") as fh:  # one short line: appended whole
            fh.write(json.dumps(outcome) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = _outcomes(config)
        if not path.is_file():
            return
        outcomes = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        path.unlink()
        _failed[:] = [(o["cell"], o["error"]) for o in outcomes if "error" in o]
        if _failed:
            print(f"sweep: {len(_failed)} of {len(outcomes)} cell(s) FAILED, the others finished; rerun the same "
                  f"command to retry (finished cells are not run again):", file=sys.stderr)
            for cell, why in _failed:
                print(f"  {cell}: {why}", file=sys.stderr)
