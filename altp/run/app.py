"""The run command: ``python run.py ...`` in a checkout, ``altp-run ...`` once installed.

Thin on purpose: Hydra composes the config from :func:`altp.configs.conf_dir` (the
checkout's ``conf/``, or its copy inside an installed wheel), :func:`altp.run.runner.run`
does the work and returns the flat metrics. Sweeps: ``altp-run -m pruner=fastv,altp
keep=0.1,0.25``. Data parallel: ``torchrun --nproc-per-node=N run.py ...`` (:mod:`altp.run.distributed`). ``run.py`` at the repository root calls :func:`main`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from altp.configs import conf_dir
from altp.run.cli import check_overrides, one_line_errors
from altp.run.distributed import main_process

__all__ = ["main", "run_app"]


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def run_app(cfg: DictConfig) -> dict:
    """One composed config -> one run (under ``-m``, one call per cell); returns its metrics."""
    from hydra.core.hydra_config import HydraConfig

    from altp.run.runner import print_metrics, run

    with one_line_errors():
        metrics = run(cfg, choices=dict(HydraConfig.get().runtime.choices))
    if main_process():
        print_metrics(metrics)
    return metrics


def main() -> None:
    """Command-line entry point: check the overrides a user types most (one-line errors), then run.

    Under ``torchrun`` (or one SLURM task per GPU) every rank runs this; ranks other than 0
    log to the console only, so the run directory's ``run.log`` is rank 0's.
    """
    check_overrides(sys.argv[1:])
    if not main_process() and not any(a.startswith("hydra/job_logging=") for a in sys.argv[1:]):
        sys.argv.append("hydra/job_logging=stdout")
    run_app()
