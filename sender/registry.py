"""Adapters by ``type``: one entry-point group per port, loaded lazily (like fsspec).

Built-in adapters register in ``pyproject.toml`` exactly as a third-party package would, so
``pip install acme-sender-kafka`` adds ``type = "kafka"`` with no change here.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError
from .ledger_ports import LedgerType

__all__ = ["GROUPS", "adapter_class", "by_scheme", "known_types", "ledger_class", "url_scheme"]

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
        raise ConfigError(_needs_extra(port, type_, exc)) from exc


def _needs_extra(port: str, type_: str, exc: ImportError) -> str:
    extra = _EXTRAS.get(type_, type_)
    return (
        f"{port} type {type_!r} needs an optional dependency ({exc.name or exc}): "
        f"pip install 'integration-sender[{extra}]'"
    )


def url_scheme(url: str) -> str:
    """``postgresql`` for ``postgresql://...``; ``""`` for a plain path (no ``scheme://``)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def by_scheme(port: str, scheme: str) -> tuple[str, Any]:
    """The type name and class of the adapter under ``port`` whose ``schemes`` (a class
    attribute) include ``scheme``. ``ConfigError`` when none does, naming the schemes that are
    served and the ``pip install`` for any adapter whose dependencies are missing (it might
    have been the one)."""
    served: list[str] = []
    unloadable: list[str] = []
    for ep in sorted(entry_points(group=GROUPS[port]), key=lambda ep: ep.name):
        try:
            cls = ep.load()
        except ImportError as exc:
            unloadable.append(_needs_extra(port, ep.name, exc))
            continue
        schemes: tuple[str, ...] = cls.schemes
        if scheme in schemes:
            return ep.name, cls
        served.extend(f"{s}://" if s else "a plain path" for s in schemes)
    shown = f"{scheme}://" if scheme else "a plain path"
    problem = f"no {port} type takes {shown} (known: {', '.join(served) or 'none installed'})"
    raise ConfigError("; ".join([problem, *unloadable]))


def ledger_class(url: str) -> tuple[str, LedgerType]:
    """The registered ledger class that serves ``url`` (``daemon.ledger``) by its scheme,
    with its type name; ``ConfigError`` when none does. Nothing is opened or imported
    beyond the ledger modules."""
    name, cls = by_scheme("ledger", url_scheme(url))
    return name, cls
