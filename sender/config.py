"""Configuration: TOML or YAML, interpolated, validated once, frozen.

``load_config(path)`` reads the file, replaces ``${VAR}``, ``${VAR:-default}`` and
``${file:/path}`` (Kubernetes secrets; both in ``sender.config_input``, with the bounds on
what loading reads), and validates every section. Each adapter validates its
own section with its ``Options`` model (a subclass of the bases in ``sender.options``, which
are re-exported here), so errors always name the key path:
``destinations.crm_api.retry.attempts: must be >= 1``. What a section asks of its adapter's
class (a ``format`` it declares, a scheme a source serves) is checked here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .config_input import interpolate, key_path, read_config_file
from .errors import ConfigError
from .options import (
    ChunkConfig,
    CircuitConfig,
    DaemonConfig,
    DestinationOptions,
    Duration,
    LocalPath,
    Options,
    RetryConfig,
    RouteConfig,
    Size,
    SourceOptions,
    TriggerOptions,
    mask_url,
)
from .ports import (
    AdapterFactory,
    Destination,
    DiffStore,
    LedgerBound,
    ServesSchemes,
    Source,
    Trigger,
)
from .registry import adapter_class, by_scheme, ledger_class, url_scheme

__all__ = [
    "AppConfig",
    "ChunkConfig",
    "CircuitConfig",
    "DaemonConfig",
    "DestinationOptions",
    "Duration",
    "LocalPath",
    "Options",
    "RetryConfig",
    "RouteConfig",
    "Section",
    "Size",
    "SourceOptions",
    "TriggerOptions",
    "default_config_path",
    "load_config",
    "mask_url",
    "parse_config",
]

PortT = TypeVar("PortT")
OptionsT = TypeVar("OptionsT", bound=Options)


@dataclass(frozen=True)
class Section(Generic[PortT, OptionsT]):
    """A validated adapter section: its name, type, class and options."""

    name: str
    type: str
    cls: AdapterFactory[PortT, OptionsT]
    options: OptionsT

    def build(self) -> PortT:
        """A new adapter of this section (not yet entered)."""
        return self.cls(self.name, self.options)


SourceSection = Section[Source, SourceOptions]
DestinationSection = Section[Destination, DestinationOptions]
TriggerSection = Section[Trigger, TriggerOptions]


@dataclass(frozen=True)
class AppConfig:
    """The whole validated configuration."""

    path: Path | None
    daemon: DaemonConfig
    trigger: TriggerSection
    sources: dict[str, SourceSection]
    destinations: dict[str, DestinationSection]
    routes: dict[str, RouteConfig]
    dead_letter_default: str = "_dead_letter"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def source_for(self, uri: str) -> SourceSection:
        """The source section for a URI's scheme: a configured one whose class serves it,
        else the registered source that does, with default options."""
        scheme = url_scheme(uri)
        for section in self.sources.values():
            if _serves(section.cls, scheme):
                return section
        type_, _ = by_scheme("source", scheme)
        cls = adapter_class("source", type_)
        return Section(type_, type_, cls, cls.Options(type=type_))

    def routes_for(self, dataset: str, names: tuple[str, ...] | None = None) -> list[str]:
        """The routes a batch of ``dataset`` takes (optionally only ``names``)."""
        matching = [name for name, route in self.routes.items() if dataset in route.datasets]
        if names is not None:
            return [name for name in matching if name in names]
        return matching

    def uri_refusal(self, uri: str, *, remote: bool) -> str | None:
        """Why a trigger may not name ``uri``, or None (``sender.uri_policy``)."""
        from .uri_policy import uri_refusal

        return uri_refusal(self, uri, remote=remote)

    def dead_letter_of(self, route: str) -> str:
        """The destination that holds ``route``'s dead letters."""
        return self.routes[route].dead_letter or self.dead_letter_default


def _serves(cls: object, scheme: str) -> bool:
    return isinstance(cls, ServesSchemes) and scheme in cls.schemes


def default_config_path() -> Path:
    """``$SENDER_CONFIG``, then ``./sender.toml``."""
    return Path(os.environ.get("SENDER_CONFIG") or "sender.toml")


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
}


def _describe(error: Mapping[str, Any]) -> str:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx and kind.endswith(("_than_equal", "_than")):
            return f"must be {op} {ctx[bound]}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "too_short":
        return "must not be empty"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = prefix
        for part in error["loc"]:
            if isinstance(part, int):
                loc = f"{loc}[{part}]"
            elif part not in ("function-after[_register_secrets()]",):
                loc = key_path(loc, part)
        problems.append(f"{loc}: {_describe(error)}")
    return problems


def _validate(
    model: type[BaseModel], raw: Any, prefix: str, ctx: dict[str, Any], problems: list[str]
) -> Any:
    try:
        return model.model_validate(raw if raw is not None else {}, context=ctx)
    except ValidationError as exc:
        problems.extend(_problems(exc, prefix))
        return None


def _section(
    port: Literal["source", "trigger", "destination"],
    name: str,
    raw: Any,
    prefix: str,
    ctx: dict[str, Any],
    problems: list[str],
) -> Section[Any, Any] | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: must be a table")
        return None
    type_ = raw.get("type")
    if not isinstance(type_, str):
        problems.append(f"{prefix}.type: required")
        return None
    try:
        cls: AdapterFactory[Any, Any] = adapter_class(port, type_)
    except ConfigError as exc:
        problems.append(f"{prefix}.type: {exc}")
        return None
    options = _validate(cls.Options, raw, prefix, ctx, problems)
    return Section(name, type_, cls, options) if options is not None else None


def _destination(
    name: str, raw: Any, ctx: dict[str, Any], problems: list[str]
) -> DestinationSection | None:
    prefix = f"destinations.{name}"
    section = _section("destination", name, raw, prefix, ctx, problems)
    if section is None:
        return None
    cls = adapter_class("destination", section.type)
    options: DestinationOptions = section.options
    # what the destination takes is declared by its class: a chunk it would refuse on every
    # delivery is a config error now, not a dead letter later
    for key, value, declared in (
        ("format", options.format, cls.formats),
        ("compression", options.compression, cls.codecs),
    ):
        if value not in declared:
            problems.append(
                f"{prefix}.{key}: a {section.type} destination does not take {value!r} "
                f"(it takes {', '.join(sorted(declared))})"
            )
            return None
    return Section(name, section.type, cls, options)


def _default_dead_letter(base_dir: Path, problems: list[str]) -> DestinationSection | None:
    """Routes without a ``dead_letter`` share a folder, ``var/dead-letter``, kept by the
    registered destination that serves ``file://`` (built with its ``path`` option)."""
    try:
        type_, _ = by_scheme("destination", "file")
    except ConfigError as exc:
        problems.append(f"routes: a route without dead_letter needs a folder store: {exc}")
        return None
    cls = adapter_class("destination", type_)
    folder = str(base_dir / "var" / "dead-letter")
    options = cls.Options.model_validate({"type": type_, "path": folder})
    return Section("_dead_letter", type_, cls, options)


def _ledger_problems(
    url: str, trigger: TriggerSection | None, routes: Mapping[str, RouteConfig]
) -> list[str]:
    """``daemon.ledger`` has a registered ledger for its scheme, with every ability the
    trigger and the routes need of it (found on the class: nothing is opened)."""
    try:
        name, ledger = ledger_class(url)
    except ConfigError as exc:
        return [f"daemon.ledger: {exc}"]
    problems = []
    cls: object = trigger.cls if trigger is not None else None
    if isinstance(cls, type) and issubclass(cls, LedgerBound):
        problem = cls.ledger_problem(ledger, name)
        if problem is not None:
            problems.append(f"trigger.type: {problem}")
    if not (isinstance(ledger, type) and issubclass(ledger, DiffStore)):
        problems += [
            f"routes.{route}.diff: diff sync keeps its baseline in the ledger, and ledger"
            f" {name!r} cannot hold one"
            for route, config in routes.items()
            if config.diff is not None
        ]
    return problems


_TOP_LEVEL = {"daemon", "trigger", "sources", "destinations", "routes"}


def parse_config(raw: Mapping[str, Any], *, path: Path | None = None) -> AppConfig:
    """Validate an already-parsed config mapping; raise ``ConfigError`` listing every problem."""
    base_dir = path.parent if path else Path.cwd()
    problems: list[str] = []
    raw = interpolate(raw, base_dir, problems)
    # a value whose ${...} failed was replaced by "": its validation errors would only echo
    # the real problem ("must not be empty"), so they are left out
    unresolved = {problem.partition(": ")[0] for problem in problems}
    checked_from = len(problems)
    ctx = {"base_dir": base_dir}
    for key in raw:
        if key not in _TOP_LEVEL:
            problems.append(f"{key}: unknown key")

    daemon = _validate(DaemonConfig, raw.get("daemon"), "daemon", ctx, problems)
    trigger: TriggerSection | None = _section(
        "trigger", "trigger", raw.get("trigger") or {"type": "spool"}, "trigger", ctx, problems
    )

    def tables(key: str) -> Mapping[str, Any]:
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            problems.append(f"{key}: must be a table")
            return {}
        return value

    declared = tables("destinations")
    raw_routes = tables("routes")
    sources: dict[str, SourceSection] = {
        name: s
        for name, section in tables("sources").items()
        if (s := _section("source", name, section, f"sources.{name}", ctx, problems))
    }
    for name, section in sources.items():
        if not isinstance(section.cls, ServesSchemes):
            problems.append(f"sources.{name}.type: a {section.type} source declares no schemes")
    destinations: dict[str, DestinationSection] = {
        name: s
        for name, section in declared.items()
        if (s := _destination(name, section, ctx, problems))
    }
    routes: dict[str, RouteConfig] = {}
    for name, section in raw_routes.items():
        route = _validate(RouteConfig, section, f"routes.{name}", ctx, problems)
        if route is not None:
            routes[name] = route
    if daemon is not None:
        problems.extend(_ledger_problems(daemon.ledger, trigger, routes))

    default_dead = "_dead_letter"
    # checked on the raw tables, so that a route with another error still has its references
    # checked: every problem is reported at once
    for name, section in raw_routes.items():
        if not isinstance(section, Mapping):
            continue
        targets = section.get("targets")
        targets = [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []
        for i, target in enumerate(targets):
            if target not in declared:
                problems.append(f"routes.{name}.targets[{i}]: unknown destination {target!r}")
        dead_letter = section.get("dead_letter")
        if isinstance(dead_letter, str) and dead_letter not in declared:
            problems.append(f"routes.{name}.dead_letter: unknown destination {dead_letter!r}")
        if isinstance(dead_letter, str) and dead_letter in targets:
            problems.append(f"routes.{name}.dead_letter: must not also be one of the targets")
        problems.extend(_notify_problems(f"routes.{name}", section, declared))
    if daemon is not None:
        problems.extend(_notify_problems("daemon", {"notify": daemon.notify}, declared))
    if any(route.dead_letter is None for route in routes.values()) and daemon is not None:
        # nothing is ever dropped: routes without a dead_letter share a local folder
        default = _default_dead_letter(base_dir, problems)
        if default is not None:
            destinations[default_dead] = default

    problems[checked_from:] = [
        problem
        for problem in problems[checked_from:]
        if problem.partition(": ")[0] not in unresolved
    ]
    if problems or daemon is None or trigger is None:
        raise ConfigError(problems or ["configuration is invalid"])
    return AppConfig(
        path=path,
        daemon=daemon,
        trigger=trigger,
        sources=sources,
        destinations=destinations,
        routes=routes,
        dead_letter_default=default_dead,
        raw=raw,
    )


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read, interpolate and validate a config file (``.toml``, ``.yaml`` or ``.yml``)."""
    path = Path(path) if path is not None else default_config_path()
    return parse_config(read_config_file(path), path=path.resolve())


def _notify_problems(
    where: str, section: Mapping[str, Any], declared: Mapping[str, Any]
) -> list[str]:
    """``notify`` names declared destinations (completion events, ``sender.events``)."""
    names = section.get("notify")
    if not isinstance(names, list):
        return []
    return [
        f"{where}.notify[{i}]: unknown destination {name!r}"
        for i, name in enumerate(names)
        if isinstance(name, str) and name not in declared
    ]
