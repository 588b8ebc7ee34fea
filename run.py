"""Entry point: ``python run.py model=glamm pruner=altp keep=0.1 data=grandf_val``.

Thin on purpose: Hydra composes the config, :func:`altp.runner.run` does the work
and returns the flat metrics. Sweeps: ``python run.py -m pruner=fastv,altp keep=0.1,0.25``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from altp.cli import check_overrides, one_line_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from altp.runner import print_metrics, run

    with one_line_errors():
        metrics = run(cfg, choices=dict(HydraConfig.get().runtime.choices))
    print_metrics(metrics)
    return metrics


if __name__ == "__main__":
    check_overrides(sys.argv[1:])
    main()
