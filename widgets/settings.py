"""How a settings dataclass declares its command-line options, once, on its fields (no click here).

    workers: int = setting(10, "Requests handled at once.", limits=(1, 256))

widgets/cli.py turns each such field into an option (--workers, an IntRange, its default and
help); a field declared with a plain default is a setting without an option.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlparse

from widgets.errors import UsageError


def setting(
    default: Any,
    help: str,
    *,
    limits: tuple[float, float] | None = None,
    choices: tuple[str, ...] | None = None,
    envvar: str | None = None,
) -> Any:
    """Declare a settings field that is also a command-line option: its default, help, range or choices."""
    metadata = {"help": help, "limits": limits, "choices": choices, "envvar": envvar}
    return dataclasses.field(default=default, metadata=metadata)


def check_http_url(url: str, option: str) -> str:
    """Return url if it is an http(s) URL with a host, else raise UsageError naming option."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL", option)
    return url
