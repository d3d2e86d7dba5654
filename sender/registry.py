"""Adapters by ``type``: one entry-point group per port, loaded lazily (like fsspec).

Built-in adapters register in ``pyproject.toml`` exactly as a third-party package would, so
``pip install acme-sender-kafka`` adds ``type = "kafka"`` with no change here. An entry point
that needs an optional dependency names its extra (``s3 = "pkg.mod:Cls [s3]"``): a failed
import then becomes the ``pip install`` that fixes it. Sources and ledgers are also found by
the URI schemes their classes declare (``ServesSchemes``).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Literal, overload

from .errors import ConfigError
from .ledger_ports import LedgerType
from .ports import DestinationFactory, ServesSchemes, SourceFactory, TriggerFactory

__all__ = [
    "GROUPS",
    "Port",
    "adapter_class",
    "by_scheme",
    "known_types",
    "ledger_class",
    "url_scheme",
]

Port = Literal["source", "trigger", "destination", "ledger"]

GROUPS: dict[Port, str] = {
    "source": "sender.sources",
    "trigger": "sender.triggers",
    "destination": "sender.destinations",
    "ledger": "sender.ledgers",
}

_Factory = SourceFactory | TriggerFactory | DestinationFactory | LedgerType


def _entry_points(port: Port) -> list[EntryPoint]:
    return sorted(entry_points(group=GROUPS[port]), key=lambda ep: ep.name)


def known_types(port: Port) -> list[str]:
    return sorted({ep.name for ep in _entry_points(port)})


@overload
def adapter_class(port: Literal["source"], type_: str) -> SourceFactory: ...
@overload
def adapter_class(port: Literal["trigger"], type_: str) -> TriggerFactory: ...
@overload
def adapter_class(port: Literal["destination"], type_: str) -> DestinationFactory: ...
@overload
def adapter_class(port: Literal["ledger"], type_: str) -> LedgerType: ...
@overload
def adapter_class(
    port: Literal["source", "trigger", "destination"], type_: str
) -> SourceFactory | TriggerFactory | DestinationFactory: ...


def adapter_class(port: Port, type_: str) -> _Factory:
    """The adapter class registered for ``type_`` under ``port``; ``ConfigError`` if unknown or
    if its optional dependencies are missing (with the ``pip install`` that fixes it)."""
    return _load(port, type_)


@cache
def _load(port: Port, type_: str) -> _Factory:
    matches = [ep for ep in _entry_points(port) if ep.name == type_]
    if not matches:
        known = ", ".join(known_types(port)) or "none installed"
        raise ConfigError(f"unknown {port} type {type_!r} (known: {known})")
    entry = matches[0]
    try:
        # the entry point is the contract: what it names is the port's factory
        loaded: _Factory = entry.load()
    except ImportError as exc:
        raise ConfigError(
            f"{port} type {type_!r} needs an optional dependency ({exc.name or exc}): "
            f"pip install {_requirement(entry)!r}"
        ) from exc
    return loaded


def _requirement(entry: EntryPoint) -> str:
    dist = entry.dist.name if entry.dist is not None else entry.module.partition(".")[0]
    return f"{dist}[{','.join(entry.extras)}]" if entry.extras else dist


def url_scheme(url: str) -> str:
    """``postgresql`` for ``postgresql://...``; ``""`` for a plain path (no ``scheme://``)."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def by_scheme(port: Port, scheme: str) -> tuple[str, _Factory]:
    """The type name and class of the adapter under ``port`` whose ``schemes`` include
    ``scheme``. ``ConfigError`` when none does, naming the schemes that are served and the
    ``pip install`` for any adapter whose dependencies are missing (it might have been it).

    Classes are loaded to read their ``schemes``, cheapest first, and no further than the first
    that serves it: the entry point named like the scheme, then those that need no optional
    dependency, then the rest, so that a local path never imports a cloud SDK."""
    candidates = _entry_points(port)
    candidates.sort(key=lambda ep: (ep.name != scheme, bool(ep.extras)))
    served: list[str] = []
    unloadable: list[str] = []
    for entry in candidates:
        try:
            cls = _load(port, entry.name)
        except ConfigError as exc:
            unloadable.append(str(exc))
            continue
        if isinstance(cls, ServesSchemes):
            if scheme in cls.schemes:
                return entry.name, cls
            served.extend(f"{s}://" if s else "a plain path" for s in cls.schemes)
    shown = f"{scheme}://" if scheme else "a plain path"
    problem = f"no {port} type takes {shown} (known: {', '.join(served) or 'none installed'})"
    raise ConfigError("; ".join([problem, *unloadable]))


def ledger_class(url: str) -> tuple[str, LedgerType]:
    """The registered ledger class that serves ``url`` (``daemon.ledger``) by its scheme,
    with its type name; ``ConfigError`` when none does. Nothing is opened or imported
    beyond the ledger modules."""
    name, _ = by_scheme("ledger", url_scheme(url))
    return name, adapter_class("ledger", name)
