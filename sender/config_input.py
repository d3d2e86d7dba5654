"""Reading a config file and its ``${...}`` values, within bounds.

``read_config_file`` parses TOML or YAML; ``interpolate`` replaces ``${VAR}``,
``${VAR:-default}`` and ``${file:/path}`` (Kubernetes secrets) and registers secret values
for masking. ``sender.config`` assembles and validates the sections from the result.

Bounds: YAML aliases expanded and ``${file:...}`` values.

A few lines of YAML can expand into billions of values (an alias bomb) or into a cycle (an
alias inside itself); interpolation and validation walk the expanded tree, so the tree is
counted first, iteratively and only up to the bound. A ``${file:}`` value is a secret file,
so at most 1 MiB of it is read (``${file:/dev/zero}`` is a clear config error, not a
``MemoryError``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .log import register_secret

__all__ = [
    "MAX_CONFIG_VALUES",
    "MAX_FILE_SECRET_BYTES",
    "check_expanded_size",
    "interpolate",
    "key_path",
    "read_config_file",
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


def read_config_file(path: Path) -> Mapping[str, Any]:
    """The top-level table of a ``.toml``, ``.yaml`` or ``.yml`` file, not yet interpolated;
    ``ConfigError`` for a missing, unreadable, unparsable or oversized file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
            check_expanded_size(raw, path)
        else:
            raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the top level must be a table")
    return raw


_VAR = re.compile(r"\$\{([^}]+)\}")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSWORD|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


def interpolate(raw: Mapping[str, Any], base_dir: Path, problems: list[str]) -> dict[str, Any]:
    """``raw`` with every ``${...}`` replaced; a reference that cannot be resolved appends
    ``"<key path>: <why>"`` to ``problems`` and becomes ``""``. Relative ``${file:}`` paths
    are read from ``base_dir``."""
    result: dict[str, Any] = _interpolate(dict(raw), "", base_dir, problems)
    return result


def _interpolate(value: Any, path: str, base_dir: Path, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, key_path(path, k), base_dir, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", base_dir, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        expr = match.group(1)
        if expr.startswith("file:"):
            file = Path(expr[5:]).expanduser()
            file = file if file.is_absolute() else base_dir / file
            try:
                secret = read_secret_file(file).rstrip("\r\n")
            except OSError as exc:
                problems.append(f"{path}: cannot read {file}: {exc.strerror}")
                return ""
            except ValueError as exc:
                problems.append(f"{path}: {file} {exc}")
                return ""
            register_secret(secret)
            return secret
        name, sep, default = expr.partition(":-")
        if name in os.environ:
            if _SECRET_NAME.search(name):
                register_secret(os.environ[name])  # mask the bare value too, not only the field
            return os.environ[name]
        if sep:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(replace, value)


def key_path(path: str, key: Any) -> str:
    """``path.key``, or ``key`` at the top level: how errors name a value."""
    return f"{path}.{key}" if path else str(key)
