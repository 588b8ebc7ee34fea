"""Command-line guards: one-line errors for the mistakes users make most.

Hydra reports an unknown config option or a failed instantiation with a
multi-line trace; a user needs one line that says what to change, and exit
code 2. :func:`check_overrides` checks the command line before Hydra composes
(and creates the run directory); :func:`one_line_errors` converts the errors
raised later.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from altp.configs import conf_dir, config_options
from altp.errors import UserError

__all__ = ["UserError", "check_overrides", "one_line_errors"]


def check_overrides(argv: list[str]) -> None:
    """Validate the command line before Hydra composes and makes the run directory (exit 2 on error).

    Group names first (listing the valid ones), then every value of every sweep
    (``keep=0.1,0.25``), the composed config and out_dir (:mod:`altp.run.config_checks`).
    """
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        values = [v.strip() for v in value.split(",")] if not value.startswith(("[", "range(")) else []
        if key in ("model", "pruner", "data"):
            valid = config_options(key)
            for v in values:
                if v not in valid:
                    _die(f"unknown {key} {v!r}; choose one of: {', '.join(valid)}")
    from altp.run.config_checks import check_command_line

    with one_line_errors():  # every value, the composition, and out_dir, before Hydra makes it
        check_command_line(argv, conf_dir=conf_dir())


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _project_errors() -> tuple[type[BaseException], ...]:
    """The project's own error types: their messages are one line that says what to change."""
    from altp.data.grandf import GrandfFormatError, ImageLoadError
    from altp.data.predictions import PredictionFormatError
    from eval.text_encoders import TextEncoderUnavailable

    return (UserError, FileNotFoundError, GrandfFormatError, ImageLoadError, PredictionFormatError,
            TextEncoderUnavailable)


def _one_line(err: BaseException) -> str:
    """The first line of ``err``, followed by its cause's first line when that adds something."""
    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    override = getattr(err, "override", None)  # OverrideParseException: name the argument
    if override and str(override) not in first:
        first = f"cannot parse override {override!r}: {first}"
    cause = err.__cause__ or err.__context__
    if cause is not None:
        why = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), "")
        if why and why not in first:
            first = f"{first} ({why})"
    return first


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn user-facing errors into one line on stderr and exit 2.

    Covers the project's own error types (bad config values, GT and prediction files,
    missing checkpoints and encoders), failed instantiation of a config's arguments,
    and Hydra's and OmegaConf's composition errors (unknown key, missing config,
    malformed override, bad interpolation). Set ``ALTP_DEBUG=1`` to get the full
    traceback instead.
    """
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("ALTP_DEBUG"):
        yield
        return
    own = _project_errors()
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, TypeError, *own)):
            _die(str(cause).splitlines()[0])
        raise
    except own as err:
        _die(str(err).splitlines()[0])
    except (HydraException, OmegaConfBaseException) as err:
        _die(_one_line(err))
