"""Command-line guards: one-line errors for the mistakes users make most.

Hydra reports an unknown config option or a failed instantiation with a
multi-line trace; a user needs one line that says what to change, and exit
code 2. :func:`check_overrides` checks the command line before Hydra composes
(and creates the run directory); :func:`one_line_errors` converts the errors
raised later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Iterator

from altp.configs import conf_dir, config_options
from altp.errors import RunFailure, UserError

__all__ = ["OneLineExit", "UserError", "check_overrides", "machine_error_line", "one_line_errors"]

#: Errors of the machine, not of the run: what each needs before the same command resumes.
_MACHINE_ERRNOS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota exceeded)",
    errno.EROFS: "make it writable again",
    errno.EACCES: "make it writable again",
    errno.EPERM: "make it writable again",
    errno.EIO: "check the disk",
}


class OneLineExit(SystemExit):
    """The exit of a run that failed with a one-line message (``line``, already printed to stderr)."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(code)
        self.line = line


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


def _die(msg: str, code: int = 2) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise OneLineExit(code, msg)


def machine_error_line(err: BaseException) -> str | None:
    """One line for an error of the machine (a full or read-only disk, a killed input worker), else None.

    The line names the cause and the path, and says that rerunning the same command resumes:
    every image written before the error is kept (records and predictions are written atomically).
    """
    resume = "then rerun the same command: it resumes, the images already written are kept"
    if isinstance(err, RunFailure):
        return str(err).splitlines()[0]
    if isinstance(err, OSError) and err.errno in _MACHINE_ERRNOS:
        where = f"cannot write {err.filename}" if err.filename else "a write failed"
        return f"{where}: {err.strerror} [Errno {err.errno}]; {_MACHINE_ERRNOS[err.errno]}, {resume}"
    if isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker (pid"):
        return (f"an input-pipeline worker died: {str(err).splitlines()[0]} (the out-of-memory killer, or a signal "
                f"sent to it); {resume} (num_workers=0 runs without workers)")
    return None


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
    """Turn user-facing errors into one line on stderr and exit 2, the machine's into one line and exit 1.

    Exit 2 covers the project's own error types (bad config values, GT and prediction files,
    missing checkpoints and encoders), failed instantiation of a config's arguments,
    and Hydra's and OmegaConf's composition errors (unknown key, missing config,
    malformed override, bad interpolation). Exit 1 covers a full or read-only disk and a
    killed input worker (:func:`machine_error_line`). The exception raised is
    :class:`OneLineExit`. Set ``ALTP_DEBUG=1`` to get the full traceback instead.
    """
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("ALTP_DEBUG"):
        yield
        return
    own = _project_errors()
    # A full disk also fails every write of the log file: one line from us, not a trace per record.
    raise_before, logging.raiseExceptions = logging.raiseExceptions, False
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
    except (OSError, RuntimeError, RunFailure) as err:
        line = machine_error_line(err)
        if line is None:
            raise
        _die(line, code=1)
    finally:
        logging.raiseExceptions = raise_before
