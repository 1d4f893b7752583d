"""The mistakes a user can fix, raised by the library and turned into one line by the command line."""

from __future__ import annotations


class UsageError(ValueError):
    """A setting that cannot work, said with the option it came from (a usage error: exit 2)."""

    def __init__(self, message: str, option: str | None = None) -> None:
        """Say what is wrong; option names the command-line option it came from, if one did."""
        super().__init__(message)
        self.option = option


class SetupError(Exception):
    """What stops a program before or while it runs and the user must fix: credentials, a queue, a port."""
