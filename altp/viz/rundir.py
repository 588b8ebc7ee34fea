"""Read a run directory (what :func:`altp.run.runner.run` wrote) for drawing, no model loaded.

A run directory holds ``records/<image_id>.json`` and ``predictions/<image_id>.json``
and the config that made it: ``run.json`` (resolved config) or, in a published CI
slice, ``fingerprint.json`` (model, pruner, keep, seed, data name and split, ...; the
data paths then come from ``conf/data/<name>.yaml``).

Record fields read here (older records lack the newer ones; each has a fallback):

* ``kept_tokens_per_stage``: one sorted list of original visual indices per
  stage; else ``[kept_tokens]`` (the first stage); else every token (unpruned).
* ``kept_per_stage``, ``stage_layers``, ``num_visual``.
* ``extras``: ALTP/DDC ``region_ids``, ``region_sizes``, ``budgets`` (and ALTP
  ``densities``, ``weights``); PDrop ``lambda``.
* ``object_coverage``: one float per stage, when present.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from altp.configs import conf_dir
from altp.data.grandf import GrandfSplit
from altp.data.predictions import read_prediction
from altp.pruner_order import pruner_rank

__all__ = ["RunDir", "find_run_dirs", "kept_per_stage_lists", "load_run_dir", "load_split"]



@dataclass(frozen=True)
class RunDir:
    """One run directory and the config that made it.

    Attributes:
        path: the directory.
        model: model config (``_target_`` and arguments).
        pruner: pruner config (``name`` and hyper-parameters); ``name`` is ``"none"`` unpruned.
        data: data config with ``name``, ``split``, ``gt_dir``, ``image_dir`` (and ``generate``).
        keep: the config's keep (1.0 for an unpruned run).
        text_encoder: the run's recall text encoder, when recorded.
    """

    path: Path
    model: dict[str, Any]
    pruner: dict[str, Any]
    data: dict[str, Any]
    keep: float
    text_encoder: str | None = None

    @property
    def pruner_name(self) -> str:
        return str(self.pruner.get("name") or "none")

    @property
    def model_name(self) -> str:
        """The model's registry name: its builder's name without ``build_``.

        ``glamm_shapes`` for ``altp.models.glamm_build.build_glamm_shapes`` and for
        ``altp.models.glamm_shapes.build_glamm_shapes`` (the builder's module in older runs).
        """
        return str(self.model.get("_target_", "model")).rsplit(".", 1)[-1].removeprefix("build_")

    @property
    def label(self) -> str:
        return "none (unpruned)" if self.pruner_name == "none" else f"{self.pruner_name} keep={self.keep:g}"

    @property
    def sort_key(self) -> tuple:
        name = self.pruner_name
        return (name != "none", -self.keep, pruner_rank(name), name, str(self.path))

    @cached_property
    def image_ids(self) -> list[str]:
        """Images with both a record and a prediction, sorted."""
        recs = {p.stem for p in (self.path / "records").glob("*.json")}
        return sorted(p.stem for p in (self.path / "predictions").glob("*.json") if p.stem in recs)

    def record(self, image_id: str) -> dict[str, Any]:
        return _read(self.path / "records" / f"{image_id}.json")

    def prediction(self, image_id: str) -> dict[str, Any]:
        """``caption``, ``phrases``, ``pred_masks`` (GLaMM's format, read by :func:`altp.data.predictions.read_prediction`)."""
        return read_prediction(self.path / "predictions" / f"{image_id}.json")


def kept_per_stage_lists(record: dict[str, Any], num_visual: int) -> list[list[int]]:
    """Original visual indices kept after each stage (all tokens for an unpruned run)."""
    per_stage = record.get("kept_tokens_per_stage")
    if per_stage:
        return [list(map(int, s)) for s in per_stage]
    if record.get("kept_tokens") is not None:
        return [list(map(int, record["kept_tokens"]))]
    return [list(range(num_visual))]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {path.parent.parent} a run directory of altp.run.runner?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from None


def _load(path: Path) -> RunDir:
    if (path / "run.json").is_file():
        run = _read(path / "run.json")
        cfg = run["config"]
        return RunDir(path=path, model=dict(cfg["model"]), pruner=dict(cfg.get("pruner") or {}),
                      data=dict(cfg["data"]), keep=_keep(cfg), text_encoder=cfg.get("text_encoder"))
    if (path / "fingerprint.json").is_file():
        fp = _read(path / "fingerprint.json")
        data_yaml = conf_dir() / "data" / f"{fp['data']['name']}.yaml"
        if not data_yaml.is_file():
            raise FileNotFoundError(f"{path}/fingerprint.json names data {fp['data']['name']!r} but {data_yaml} does not exist")
        data = cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.load(data_yaml), resolve=True))  # a mapping file
        return RunDir(path=path, model=dict(fp["model"]), pruner=dict(fp.get("pruner") or {}),
                      data=dict(data), keep=_keep(fp))
    raise FileNotFoundError(f"{path} has neither run.json nor fingerprint.json; cannot tell which model and data made it")


def _keep(cfg: dict[str, Any]) -> float:
    return 1.0 if str((cfg.get("pruner") or {}).get("name") or "none") == "none" else float(cfg["keep"])


def find_run_dirs(root: Path) -> list[RunDir]:
    """Every directory under ``root`` (``root`` included) with ``records/`` and ``predictions/``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no directory {root}")
    dirs = sorted({p.parent for p in root.rglob("records") if p.is_dir() and (p.parent / "predictions").is_dir()})
    return sorted((_load(d) for d in dirs), key=lambda r: r.sort_key)


def load_run_dir(path: Path) -> RunDir:
    """One run directory; raises FileNotFoundError (with what is missing) if it is not one."""
    path = Path(path)
    if not (path / "records").is_dir() or not (path / "predictions").is_dir():
        raise FileNotFoundError(f"{path} has no records/ and predictions/: not a run directory of altp.run.runner")
    return _load(path)


_SPLITS: dict[str, GrandfSplit] = {}


def load_split(data: dict[str, Any]) -> GrandfSplit:
    """The run's split (a generated one, such as shapes, is rebuilt bit-identically first)."""
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _SPLITS:
        from altp.data.resolve import resolve_split

        _SPLITS[key] = resolve_split(OmegaConf.create(data))
    return _SPLITS[key]
