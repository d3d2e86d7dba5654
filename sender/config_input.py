"""Bounds on what loading a config reads: YAML aliases expanded and ``${file:...}`` values.

A few lines of YAML can expand into billions of values (an alias bomb) or into a cycle (an
alias inside itself); interpolation and validation walk the expanded tree, so the tree is
counted first, iteratively and only up to the bound. A ``${file:}`` value is a secret file,
so at most 1 MiB of it is read (``${file:/dev/zero}`` is a clear config error, not a
``MemoryError``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "MAX_CONFIG_VALUES",
    "MAX_FILE_SECRET_BYTES",
    "check_expanded_size",
    "read_secret_file",
]

MAX_CONFIG_VALUES = 100_000
"""How many values (tables, lists, scalars) a config may hold once YAML aliases are expanded:
an alias bomb (a few lines, billions of values) or a self-referencing alias is a config error,
not a hang (interpolation and validation walk the expanded tree)."""

MAX_FILE_SECRET_BYTES = 1024 * 1024
"""The most a ``${file:...}`` value may read (a secret file, not ``/dev/zero``)."""


def check_expanded_size(raw: Any, path: Path) -> None:
    count, stack = 0, [raw]
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{path}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded "
                "(an alias bomb, or an alias that contains itself)"
            )
        if isinstance(value, Mapping):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def read_secret_file(file: Path) -> str:
    """At most ``MAX_FILE_SECRET_BYTES`` of ``file``, as text; ``ValueError`` past that."""
    with open(file, "rb") as handle:
        data = handle.read(MAX_FILE_SECRET_BYTES + 1)
    if len(data) > MAX_FILE_SECRET_BYTES:
        raise ValueError(f"is larger than {MAX_FILE_SECRET_BYTES // 1024} KiB: not a secret file")
    return data.decode("utf-8", errors="replace")
