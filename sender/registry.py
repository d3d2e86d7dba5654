"""Adapters by ``type``: one entry-point group per port, loaded lazily (like fsspec).

Built-in adapters register in ``pyproject.toml`` exactly as a third-party package would, so
``pip install acme-sender-kafka`` adds ``type = "kafka"`` with no change here.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

__all__ = ["GROUPS", "adapter_class", "known_types"]

GROUPS = {
    "source": "sender.sources",
    "trigger": "sender.triggers",
    "destination": "sender.destinations",
    "ledger": "sender.ledgers",
}

# which extra brings the SDK a built-in adapter imports
_EXTRAS = {"s3": "s3", "sqs": "sqs", "gcs": "gcs", "amqp": "amqp", "postgresql": "postgres"}


def known_types(port: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUPS[port])})


@cache
def adapter_class(port: str, type_: str) -> Any:
    """The adapter class registered for ``type_`` under ``port``; ``ConfigError`` if unknown or
    if its optional dependencies are missing (with the ``pip install`` that fixes it)."""
    matches = [ep for ep in entry_points(group=GROUPS[port]) if ep.name == type_]
    if not matches:
        known = ", ".join(known_types(port)) or "none installed"
        raise ConfigError(f"unknown {port} type {type_!r} (known: {known})")
    try:
        return matches[0].load()
    except ImportError as exc:
        extra = _EXTRAS.get(type_, type_)
        raise ConfigError(
            f"{port} type {type_!r} needs an optional dependency ({exc.name or exc}): "
            f"pip install 'integration-sender[{extra}]'"
        ) from exc
