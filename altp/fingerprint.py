"""A run directory's fingerprint: the config that determines its predictions.

``fingerprint.json`` is written when a run directory is first used; a later run
into the same directory must have the same fingerprint, or it is refused
(:func:`guard_resume`). Scoring options (text encoder, ``evaluate``) and
``max_images`` are not part of it: they change what is scored, not what is
predicted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from altp.provenance import write_json_atomic
from altp.run_dir import effective_keep

__all__ = ["FINGERPRINT_FILE", "fingerprint", "guard_resume"]

FINGERPRINT_FILE = "fingerprint.json"
_KEYS = ("model", "pruner", "keep", "seed")


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """The config that determines predictions (scoring options excluded)."""
    fp = {k: OmegaConf.to_container(cfg, resolve=True).get(k) for k in _KEYS}
    fp["keep"] = effective_keep(cfg.pruner, cfg.keep)  # pruner=none at any keep is one run
    fp["data"] = {"name": cfg.data.name, "split": cfg.data.split}
    return fp


def guard_resume(out_dir: Path, cfg: DictConfig) -> None:
    """Refuse to resume into a run directory made by a different config.

    Without this, a changed hyper-parameter with the same out_dir would skip every
    image and silently report the old predictions under the new settings.
    """
    from altp.cli import UserError

    path = out_dir / FINGERPRINT_FILE
    current = json.loads(json.dumps(fingerprint(cfg)))
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != current:
            diff = [k for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]
            raise UserError(
                f"{out_dir} holds a run made with a different config ({', '.join(diff)} differ); "
                "pass another out_dir=... or delete that folder"
            )
    else:
        write_json_atomic(path, current)
