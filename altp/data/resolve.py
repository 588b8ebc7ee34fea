"""The split a data config names, (re)generated first when the config says how.

Public so that the runner and the tools that read a finished run (figures,
reports) find the very images and GT the run saw, regenerated bit-identically
where needed.
"""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from altp.data.grandf import GrandfSplit
from altp.provenance import write_json_atomic

__all__ = ["resolve_split"]

log = logging.getLogger(__name__)


def resolve_split(data_cfg: DictConfig) -> GrandfSplit:
    """The split a data config names; a generated split (``generate:``) is (re)built first."""
    gt_dir, image_dir = Path(data_cfg.gt_dir), Path(data_cfg.image_dir)
    gen = data_cfg.get("generate")
    if gen is not None:
        # A generated split is rebuilt whenever its generation parameters change, so an
        # old folder can never stand in for the split the config asks for.
        from altp.data.synthetic import GENERATOR_VERSION, write_synthetic_split

        gen_dict = cast("dict[str, Any]", OmegaConf.to_container(gen, resolve=True))  # a DictConfig's is a dict
        params: dict[str, Any] = {k: (list(v) if not isinstance(v, (int, float, str)) else v)
                                  for k, v in gen_dict.items()}
        wanted = {**params, "generator_version": GENERATOR_VERSION}
        root = Path(data_cfg.root)
        root.mkdir(parents=True, exist_ok=True)
        stamp = root / f".{data_cfg.split}_generate.json"
        # Parallel sweep jobs (joblib, SLURM arrays) start together: one generates, the others wait.
        with open(root / f".{data_cfg.split}_generate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            have = (gt_dir / f"{data_cfg.split}_gcg_coco_caption_gt.json").exists()
            if not have or not stamp.exists() or json.loads(stamp.read_text()) != wanted:
                log.info("generating synthetic split %s under %s with %s", data_cfg.split, root, params)
                extra = {k: tuple(params[k]) for k in ("image_size_range", "objects_range") if k in params}
                write_synthetic_split(root, split=data_cfg.split, n_images=int(params["n_images"]),
                                      seed=int(params["seed"]), **extra)
                write_json_atomic(stamp, wanted)
    return GrandfSplit(gt_dir, data_cfg.split, image_dir)
