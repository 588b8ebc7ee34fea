"""The run command: ``python run.py ...`` in a checkout, ``altp-run ...`` once installed.

Thin on purpose: Hydra composes the config from :func:`altp.configs.conf_dir` (the
checkout's ``conf/``, or its copy inside an installed wheel), :func:`altp.run.runner.run`
does the work and returns the flat metrics. Sweeps: ``altp-run -m pruner=fastv,altp
keep=0.1,0.25``. Data parallel: ``torchrun --nproc-per-node=N run.py ...`` (:mod:`altp.run.distributed`). ``run.py`` at the repository root calls :func:`main`.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from altp.run.threads import passive_openmp

passive_openmp()  # before torch (imported below) loads OpenMP: idle threads sleep instead of spinning

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from altp.configs import conf_dir  # noqa: E402
from altp.run.cli import OneLineExit, check_overrides, one_line_errors  # noqa: E402
from altp.run.distributed import main_process  # noqa: E402
from altp.run.sweeper import CellFailed, failed_cells  # noqa: E402

__all__ = ["main", "run_app"]


def _record_failure(cfg: DictConfig, choices: dict[str, str], line: str, *, sweep: bool) -> None:
    """``failed.json`` in the run directory, if it can be written (the tables mark the cell).

    A single run writes it only into a folder that still exists: an error found before the first
    image removes the empty run folder (:func:`altp.run.runner.run`), and a lone ``failed.json``
    would be that skeleton again. A sweep's cell always gets one, so the failure shows up beside
    the healthy cells' records.
    """
    from altp.provenance import write_json_atomic
    from altp.run_dir import FAILED_FILE, effective_keep

    if not main_process():
        return
    with contextlib.suppress(Exception):  # a full or read-only disk: the sweep's summary still says it
        out_dir = Path(cfg.out_dir)
        if sweep:
            out_dir.mkdir(parents=True, exist_ok=True)
        if out_dir.is_dir():
            write_json_atomic(out_dir / FAILED_FILE, {
                "model": choices.get("model"), "pruner": choices.get("pruner"), "data": cfg.data.name,
                "split": cfg.data.split, "keep": effective_keep(cfg.pruner, cfg.keep), "error": line,
                "failed_at": datetime.now(UTC).isoformat(timespec="seconds")})


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def run_app(cfg: DictConfig) -> dict:
    """One composed config -> one run (under ``-m``, one call per cell); returns its metrics.

    A failed run prints one line and leaves ``failed.json`` in its run directory; in a sweep
    it raises :class:`altp.run.sweeper.CellFailed` instead of exiting, so the other cells run.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from altp.run.runner import print_metrics, run

    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        with one_line_errors():
            metrics = run(cfg, choices=choices)
    except OneLineExit as err:
        _record_failure(cfg, choices, err.line, sweep=sweep)
        if not sweep:
            raise
        raise CellFailed(err.line, int(err.code or 1)) from None
    except Exception as err:
        _record_failure(cfg, choices, f"{type(err).__name__}: {err}".splitlines()[0], sweep=sweep)
        if sweep:  # the sweep goes on: the stack is printed here, not lost
            traceback.print_exc()
        raise
    if main_process():
        print_metrics(metrics)
    return metrics


def main() -> None:
    """Command-line entry point: check the overrides a user types most (one-line errors), then run.

    Under ``torchrun`` (or one SLURM task per GPU) every rank runs this; ranks other than 0
    log to the console only, so the run directory's ``run.log`` is rank 0's. A sweep with a
    failed cell exits 1 once the other cells have run.
    """
    check_overrides(sys.argv[1:])
    if not main_process() and not any(a.startswith("hydra/job_logging=") for a in sys.argv[1:]):
        sys.argv.append("hydra/job_logging=stdout")
    run_app()
    if failed_cells():  # a sweep whose every other cell ran (altp.run.sweeper printed which failed)
        raise SystemExit(1)
