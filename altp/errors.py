"""The project's user-facing error type, at the bottom of the import graph.

:class:`UserError` is raised wherever a config value, input file or run directory is
wrong in a way the user fixes (the runner, the config checks, the fingerprint
guard); :func:`altp.run.cli.one_line_errors` prints it as one line and exits 2.
:class:`RunFailure` is the machine's part (exit 1).
"""

from __future__ import annotations

__all__ = ["RunFailure", "UserError"]


class UserError(Exception):
    """A mistake in the command, config or inputs; printed as one line without a traceback."""


class RunFailure(Exception):
    """The machine stopped a run (a killed input worker, a rank that never came); printed as one
    line naming the cause, exit 1. What was written stays: rerunning the same command resumes."""
