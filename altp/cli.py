"""Command-line guards: one-line errors for the mistakes users make most.

Hydra reports an unknown config option or a failed instantiation with a
multi-line trace; for the cases below a user needs one line that says what to
change, and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from altp.configs import config_options
from altp.pruning.base import validate_keep

__all__ = ["UserError", "check_overrides", "one_line_errors"]

class UserError(Exception):
    """A mistake in the command, config or inputs; printed as one line without a traceback."""


def check_overrides(argv: list[str]) -> None:
    """Validate ``group=value`` and ``keep=`` overrides before Hydra composes (exit 2 on error).

    Sweep lists (``keep=0.1,0.25``) are checked value by value.
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
        elif key == "keep":
            for v in values:
                try:
                    validate_keep(float(v))
                except ValueError as err:
                    _die(str(err))


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn user-facing errors (bad keep, missing files, bad data) into one line and exit 2.

    Set ``ALTP_DEBUG=1`` to get the full traceback instead.
    """
    from hydra.errors import InstantiationException

    if os.environ.get("ALTP_DEBUG"):
        yield
        return
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, (ValueError, FileNotFoundError, UserError)):
            _die(str(cause).splitlines()[0])
        raise
    except (UserError, FileNotFoundError) as err:
        _die(str(err).splitlines()[0])
