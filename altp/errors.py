"""The project's user-facing error type, at the bottom of the import graph.

:class:`UserError` is raised wherever a config value, input file or run directory is
wrong in a way the user fixes (the runner, the config checks, the fingerprint
guard); :func:`altp.run.cli.one_line_errors` prints it as one line and exits 2.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in the command, config or inputs; printed as one line without a traceback."""
