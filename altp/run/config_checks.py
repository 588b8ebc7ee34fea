"""Config values checked at the edge: one line naming the key and how to fix it.

Two entry points share the rules of :func:`check_value`:

* :func:`check_config` checks a composed config before a run starts
  (:func:`altp.run.runner.run` calls it, so the Python API is guarded too);
* :func:`check_command_line` checks ``run.py``'s arguments before Hydra
  composes or creates the run directory: every value of every sweep, the
  composition itself, and the run directory's writability.

Each raises :class:`altp.errors.UserError` with one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from altp.pruning.base import validate_keep

__all__ = ["check_command_line", "check_config", "check_out_dir", "check_text_encoder", "check_value"]


def _error(msg: str) -> Exception:
    from altp.errors import UserError

    return UserError(msg)


def _int_at_least(low: int, *, null_ok: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value is None and null_ok:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            null = " or null" if null_ok else ""
            raise _error(f"{key} must be an integer >= {low}{null}, got {value!r}")

    return check


def _keep(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _error(f"{key} must be a number in (0, 1] (the fraction of visual tokens kept), got {value!r}")
    try:
        validate_keep(value)
    except ValueError as err:
        raise _error(str(err)) from None


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _error(f"{key} must be a number > 0, got {value!r}")


def _threads(key: str, value: Any) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _error(f"{key} must be auto or an integer >= 1, got {value!r}")


def _one_of(*allowed: str) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value not in allowed:
            raise _error(f"{key} must be one of {', '.join(allowed)}, got {value!r}")

    return check


def _bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _error(f"{key} must be true or false, got {value!r}")


def _text(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise _error(f"{key} must be a non-empty string, got {value!r}")


#: The top-level keys of conf/config.yaml (and the loop's counts, where a config has them).
RULES: dict[str, Callable[[str, Any], None]] = {
    "keep": _keep,
    "seed": _int_at_least(0),
    "max_images": _int_at_least(1, null_ok=True),
    "continue_on_error": _bool,
    "evaluate": _bool,
    "text_encoder": _text,
    "out_dir": _text,
    "batch_size": _int_at_least(1),
    "batching": _one_of("continuous", "static"),
    "num_workers": _int_at_least(0),
    "rendezvous_timeout_min": _positive,
    "threads": _threads,
}


def check_value(key: str, value: Any) -> None:
    """Check one top-level config value against its rule (unknown keys pass)."""
    rule = RULES.get(key)
    if rule is not None:
        rule(key, value)


def check_text_encoder(name: str) -> None:
    """The recall metric's text encoder exists here (before any inference is spent)."""
    from eval.text_encoders import TextEncoderUnavailable, resolve_text_encoder

    try:
        source = resolve_text_encoder(name)
    except TextEncoderUnavailable as err:
        raise _error(f"text_encoder: {err}") from None
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise _error(f"text_encoder={name}: {source} has no config.json; pass a Hugging Face model folder")


def check_out_dir(out_dir: str | Path) -> None:
    """``out_dir`` can be created (or is a folder) and written to.

    Raises one line when the path or one of its parents is a regular file, or the
    nearest existing folder is not writable.
    """
    path = Path(out_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == path else f"lies below {probe}, which is"
        raise _error(f"out_dir={out_dir} {where} a file, not a folder; choose another out_dir")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise _error(f"out_dir={out_dir}: cannot write in {probe}; choose another out_dir")


def check_config(cfg: DictConfig) -> None:
    """Check every top-level value of a composed config, the text encoder and the run directory.

    Every interpolation is resolved once here, so a bad ``${...}`` fails before any work.
    """
    for key in cfg:
        if key != "hydra":
            node = cfg[key]  # resolves a scalar's interpolation
            if isinstance(node, DictConfig | ListConfig):
                OmegaConf.to_container(node, resolve=True)
    for key in RULES:
        if key in cfg:
            check_value(key, cfg.get(key))
    if cfg.get("evaluate", True):
        check_text_encoder(cfg.text_encoder)
    check_out_dir(cfg.out_dir)


def _sweep_values(override: Any) -> list[Any]:
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def check_command_line(argv: Sequence[str], *, conf_dir: Path) -> None:
    """Check ``run.py``'s overrides, compose them, and check the result (see the module doc).

    Every value of a sweep (``keep=0.1,0.25``, and an experiment's ``hydra.sweeper.params``)
    is checked; the config is composed with each sweep's first value, which surfaces
    Hydra's composition errors (an unknown key, a missing config) before any job starts.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return  # Hydra's own flags (--cfg, --info, -cn, ...): nothing is run, Hydra checks them
    args = [a for a in argv if not a.startswith("-")]
    parser = OverridesParser.create()
    overrides = parser.parse_overrides(args)  # OverrideParseException: a malformed override
    multirun = any(a in ("-m", "--multirun") for a in argv)
    single: list[str] = []
    for arg, ov in zip(args, overrides, strict=True):
        if ov.is_delete() or ov.is_hydra_override():
            single.append(arg)
            continue
        for value in _sweep_values(ov):
            check_value(ov.key_or_group, value)
        if ov.is_sweep_override():
            if not multirun:
                raise _error(f"{arg} lists several values: add -m (--multirun) to sweep over them")
            prefix = arg.split("=", 1)[0]
            single.append(f"{prefix}={next(iter(ov.sweep_string_iterator()))}")
        else:
            single.append(arg)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=single, return_hydra_config=True)
    for key, value in (cfg.hydra.sweeper.get("params") or {}).items():
        (ov,) = parser.parse_overrides([f"{key}={value}"])
        for v in _sweep_values(ov):
            check_value(str(key), v)
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} in out_dir resolves as inside a job
    try:
        check_config(cfg)
    finally:
        HydraConfig.instance().cfg = before  # the job Hydra starts next sets its own
