"""Errors a user can act on, and the one-line CLI wrapper that reports them.

Anything raised as `UserError` is a problem with the user's input (a config key, a path, a
checkpoint, a store): the command prints it as one line naming the thing and what was expected,
and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


class ConfigError(UserError):
    """A config key is missing, unknown or of the wrong type."""


class ManifestMismatch(UserError):
    """A job would add units made under different must-match fields to a store."""


class StoreError(UserError):
    """A store URL that cannot be reached or read."""


class CheckpointError(UserError):
    """A checkpoint that is missing or does not fit its architecture."""


EXIT_USER_ERROR = 2


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its status; a `UserError` becomes one line on stderr."""
    try:
        status = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(status or 0)
