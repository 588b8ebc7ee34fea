"""Run directories: one per distinct run, named by what differs from the defaults, and locked.

conf/config.yaml names a run's directory with the ``run_cell`` resolver::

    out_dir: runs/${hydra:runtime.choices.model}/${data.name}/${run_cell:${pruner}}

``${run_cell:${pruner}}`` is ``<pruner>/keep<k>`` followed by ``_<key><value>`` for
every pruner hyper-parameter that differs from the pruner's defaults
(``conf/pruner/<name>.yaml``), keys sorted::

    altp/keep0.1                         the default setting (also Table 4's N=10, C=5 cell)
    altp/keep0.1_compactness3            Table 4's C=3 cell
    altp/keep0.1_alpha0.5_n_segments5    a cell of the alpha sweep
    none/keep1.0                         the unpruned model, whatever keep the sweep passes

so no two cells of a sweep that run different configs share a directory, and cells
that run the same config (``pruner=none`` crossed with every keep) share one. A pruner
whose config has no ``keep`` entry ignores keep: its directory and its records say
keep 1.0 (:func:`effective_keep`).

Two sweep jobs can reach one directory at the same time (joblib runs the unpruned
cells of ``keep=0.1,0.25`` together): :func:`locked` serialises them, so the second
finds every image done and only scores.

The resolver is registered when :mod:`altp` is imported (``run.py``, the tests and
the joblib launcher's workers all import it before Hydra composes).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, OmegaConf

from altp.configs import conf_dir, config_options

__all__ = ["FAILED_FILE", "RESOLVER", "cell_path", "default_cell", "effective_keep", "locked", "register_resolver"]

RESOLVER = "run_cell"
#: Left in a run directory by a run that failed (its one-line error); removed when the run next finishes.
FAILED_FILE = "failed.json"
_NOT_HPARAMS = ("_target_", "name", "keep")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]")  # anything else in a value would be a path or shell hazard
_LOCK_NAME = ".run.lock"

log = logging.getLogger(__name__)


@functools.cache
def _pruner_yaml(name: str) -> dict[str, Any]:
    path = conf_dir() / "pruner" / f"{name}.yaml"
    if not path.is_file():
        valid = config_options("pruner")
        raise ValueError(f"no pruner config {path}; pruner.name must be one of: {', '.join(valid)}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _defaults(name: str) -> dict[str, Any]:
    """The hyper-parameters ``conf/pruner/<name>.yaml`` sets (keep, name and target excluded)."""
    return {k: v for k, v in _pruner_yaml(name).items() if k not in _NOT_HPARAMS}


def _same(a: Any, b: Any) -> bool:
    """Config equality: 5 == 5.0 (a sweep's ``compactness=5`` is the default 5.0), True != 1."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _text(v: Any) -> str:
    """A value as a path-safe word: 3.0 -> 3, [8, 16, 24] -> 8-16-24, True -> true, None -> null."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list | tuple):
        return "-".join(_text(x) for x in v)
    return _UNSAFE.sub("-", str(v))


def _plain(pruner: DictConfig | dict) -> dict[str, Any]:
    return (
        cast("dict[str, Any]", OmegaConf.to_container(pruner, resolve=True))  # a DictConfig's is a dict
        if isinstance(pruner, DictConfig)
        else dict(pruner)
    )


def effective_keep(pruner: DictConfig | dict, keep: float) -> float:
    """``keep`` for a pruner that uses it, 1.0 for one whose config has no ``keep`` (``none``)."""
    return float(keep) if "keep" in pruner else 1.0


def cell_path(pruner: DictConfig | dict) -> str:
    """``<name>/keep<k>[_<key><value>...]`` for a composed pruner config (see the module docstring).

    Args:
        pruner: the ``pruner`` node of a composed config (``name``, ``keep`` when the
            pruner uses it, hyper-parameters); a default key it lacks is named as null.

    Example:
        >>> cell_path({"name": "fastv", "keep": 0.1, "layer": 3})
        'fastv/keep0.1_layer3'
    """
    cfg = _plain(pruner)
    name = cfg.get("name")
    if not name:
        raise ValueError("the pruner config has no name; every conf/pruner/*.yaml sets one")
    defaults = _defaults(str(name))
    keep = cfg["keep"] if "keep" in cfg else 1.0
    parts = [f"keep{keep}"]
    for key in sorted((set(cfg) | set(defaults)) - set(_NOT_HPARAMS)):
        value = cfg.get(key)
        if key not in defaults or not _same(value, defaults[key]):
            parts.append(f"{key}{_text(value)}")
    return f"{name}/{'_'.join(parts)}"


def default_cell(name: str, keep: float) -> str:
    """:func:`cell_path` of pruner ``name`` at its default hyper-parameters and ``keep``.

    Example:
        >>> default_cell("fastv", 0.25), default_cell("none", 0.25)
        ('fastv/keep0.25', 'none/keep1.0')
    """
    cfg = {"name": name, **_defaults(name)}
    if "keep" in _pruner_yaml(name):
        cfg["keep"] = keep
    return cell_path(cfg)


def register_resolver() -> None:
    """Register ``${run_cell:${pruner}}`` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, cell_path)


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (a ``.run.lock`` file inside it) for the block.

    A second process asking for the same directory waits until the first leaves the
    block. ``flock`` locks are released by the kernel when a process dies, so a killed
    run never leaves a stale lock.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / _LOCK_NAME, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s is in use by another job; waiting for it to finish", out_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
