"""Configuration: TOML or YAML, interpolated, validated once, frozen.

``load_config(path)`` reads the file, replaces ``${VAR}``, ``${VAR:-default}`` and
``${file:/path}`` (Kubernetes secrets), and validates every section. Each adapter validates its
own section with its ``Options`` model (a subclass of the bases below), so errors always name
the key path: ``destinations.crm_api.retry.attempts: must be >= 1``. Durations ("30s") and
sizes ("4MiB") are strings in files and ``*_s`` floats / ``int`` bytes in code. Relative paths
are relative to the config file. Secrets are ``SecretStr`` (masked in ``repr``) and registered
with the log masker.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .casting import CastType
from .errors import ConfigError
from .log import register_secret
from .ports import LedgerBound
from .registry import adapter_class, ledger_class
from .units import Rate, parse_duration, parse_rate, parse_size

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
    "Size",
    "SourceOptions",
    "TriggerOptions",
    "default_config_path",
    "load_config",
    "mask_url",
]

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
RateLimit = Annotated[Rate, BeforeValidator(parse_rate)]


def _resolve_path(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, str | Path) or "://" in str(value):
        return value
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() or base is None else Path(base) / path)


LocalPath = Annotated[str, BeforeValidator(_resolve_path)]
"""A filesystem path, made absolute against the config file's folder."""


def mask_url(url: str) -> str:
    """``amqp://guest:secret@host/`` → ``amqp://guest:***@host/``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Options(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def __repr_args__(self) -> Any:
        # SecretStr masks itself, but a password inside a plain URL string (a postgresql://
        # ledger, an amqp:// broker) would otherwise show in repr(config) and in tracebacks
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) and "://" in value else value

    @field_validator("*", mode="after")
    @classmethod
    def _register_secrets(cls, value: Any) -> Any:
        for item in value.values() if isinstance(value, Mapping) else [value]:
            if isinstance(item, SecretStr):
                register_secret(item.get_secret_value())
            elif isinstance(item, str) and "://" in item:
                register_secret(urlsplit(item).password)
        return value


class RetryConfig(Options):
    """Per target: exponential backoff with full jitter, capped; stops at ``attempts`` or when
    the next wait would pass ``budget``. ``Retry-After`` replaces the backoff when given."""

    attempts: int = Field(5, ge=1)
    initial_s: Duration = Field(0.5, alias="initial", gt=0)
    max_s: Duration = Field(60.0, alias="max", gt=0)
    budget_s: Duration = Field(600.0, alias="budget", gt=0)
    # the HTTP statuses worth another attempt; any other non-2xx answer is permanent
    on_status: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})

    @field_validator("on_status")
    @classmethod
    def _error_statuses(cls, value: frozenset[int]) -> frozenset[int]:
        for status in sorted(value):
            if not 300 <= status <= 599:
                raise ValueError(f"{status} is not an HTTP error status (300-599)")
        return value


class CircuitConfig(Options):
    """Per destination, shared by all batches: open after ``failures`` consecutive failed
    deliveries (or a failure ``ratio`` over ``window`` deliveries), probe after ``reset``."""

    failures: int = Field(5, ge=1)
    reset_s: Duration = Field(60.0, alias="reset", gt=0)
    ratio: float | None = Field(None, gt=0, le=1)
    window: int = Field(20, ge=2)


class ChunkConfig(Options):
    """Chunk caps; bytes count the NDJSON form of the records, before compression."""

    records: int = Field(5000, ge=1)
    bytes: Size = Field(4 * 1024 * 1024, ge=1024)


class DestinationOptions(Options):
    """Keys every destination has; an adapter's ``Options`` subclasses this one."""

    type: str
    format: Literal["ndjson", "json", "csv"] = "ndjson"
    compression: Literal["none", "gzip", "zstd"] = "gzip"
    compression_level: int | None = Field(None, ge=1, le=19)
    concurrency: int | Literal["adaptive"] = 4
    max_concurrency: int = Field(32, ge=1)
    rate_limit: RateLimit | None = None
    timeout_s: Duration = Field(30.0, alias="timeout", gt=0)
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()

    @model_validator(mode="before")
    @classmethod
    def _compression_table(cls, data: Any) -> Any:
        # `compression = { codec = "gzip", level = 1 }` is the same as `compression = "gzip"`
        # plus `compression_level = 1`
        if not isinstance(data, Mapping) or not isinstance(data.get("compression"), Mapping):
            return data
        table = dict(data["compression"])
        unknown = sorted(set(table) - {"codec", "level"})
        if unknown:
            raise ValueError(f"compression: unknown keys {unknown} (codec, level)")
        if "codec" not in table:
            raise ValueError("compression: needs a codec (none, gzip, zstd)")
        if "level" in table and data.get("compression_level") is not None:
            raise ValueError("compression.level and compression_level: give one of them")
        flat = {**data, "compression": table["codec"]}
        if "level" in table:
            flat["compression_level"] = table["level"]
        return flat

    @field_validator("compression_level")
    @classmethod
    def _level_fits_codec(cls, value: int | None, info: ValidationInfo) -> int | None:
        # zlib only knows levels 1-9: a higher one would pass here and fail every chunk later
        if value is not None and value > 9 and info.data.get("compression") == "gzip":
            raise ValueError("must be <= 9 for gzip (zstd takes up to 19)")
        return value

    @field_validator("concurrency")
    @classmethod
    def _positive_concurrency(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be >= 1 or 'adaptive'")
        return value

    @property
    def max_in_flight(self) -> int:
        """The most requests this destination may have at once: ``concurrency``, or the
        ceiling ``max_concurrency`` when adaptive (what connection pools are sized to)."""
        return self.max_concurrency if self.concurrency == "adaptive" else int(self.concurrency)


class SourceOptions(Options):
    """Keys every source has; an adapter's ``Options`` subclasses this one."""

    type: str
    require_success: bool = True  # a folder batch needs Spark's _SUCCESS marker
    read_size: Size = Field(1024 * 1024, ge=4096)  # bytes per read from storage


class TriggerOptions(Options):
    """Keys every trigger has; an adapter's ``Options`` subclasses this one."""

    type: str


class DaemonConfig(Options):
    # a SQLite file, or postgresql://user@host:5432/db; the default is validated too, so that
    # it also lands next to the config file rather than in the working directory
    ledger: str = Field("var/ledger.db", validate_default=True)
    listen: str = "127.0.0.1:8080"
    max_batches: int = Field(2, ge=1)
    shutdown_grace_s: Duration = Field(30.0, alias="shutdown_grace")
    token: SecretStr | None = None  # bearer token for the control server's /v1 routes
    lease_s: Duration = Field(60.0, alias="lease", gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # None: for people on a terminal, JSON elsewhere (--log-format overrides this)
    log_format: Literal["json", "console"] | None = None

    @field_validator("ledger", mode="before")
    @classmethod
    def _ledger_path(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and "://" not in value:
            return _resolve_path(value, info)
        return value

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be host:port, e.g. '127.0.0.1:8080'")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class RouteConfig(Options):
    datasets: list[str] = Field(min_length=1)
    # output name = input name (dotted paths reach into nested objects)
    fields: dict[str, str] | None = None
    # CSV input fields cast before projection: {input field: "str"|"int"|"float"|"bool"|"json"}
    types: dict[str, CastType] | None = None
    chunk: ChunkConfig = ChunkConfig()
    targets: list[str] = Field(min_length=1)
    dead_letter: str | None = None
    on_bad_record: Literal["skip", "dead_letter", "fail"] = "dead_letter"
    split_on_reject: bool = True  # isolate records a receiver rejects by halving the chunk

    @field_validator("fields")
    @classmethod
    def _non_empty_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one field (or be left out to pass through)")
        return value


@dataclass(frozen=True)
class Section:
    """A validated adapter section: its type, class and options."""

    name: str
    type: str
    cls: Any
    options: Any


@dataclass(frozen=True)
class AppConfig:
    """The whole validated configuration."""

    path: Path | None
    daemon: DaemonConfig
    trigger: Section
    sources: dict[str, Section]
    destinations: dict[str, Section]
    routes: dict[str, RouteConfig]
    dead_letter_default: str = "_dead_letter"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def source_for(self, uri: str) -> Section:
        """The source section for a URI's scheme; defaults when the file has none."""
        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        type_ = {"file": "local", "s3": "s3", "gs": "gcs"}.get(scheme)
        if type_ is None:
            raise ConfigError(f"no source handles {scheme}:// URIs (file://, s3://, gs://)")
        for section in self.sources.values():
            if section.type == type_:
                return section
        cls = adapter_class("source", type_)
        return Section(type_, type_, cls, cls.Options(type=type_))

    def routes_for(self, dataset: str, names: tuple[str, ...] | None = None) -> list[str]:
        """The routes a batch of ``dataset`` takes (optionally only ``names``)."""
        matching = [name for name, route in self.routes.items() if dataset in route.datasets]
        if names is not None:
            return [name for name in matching if name in names]
        return matching


def default_config_path() -> Path:
    """``$SENDER_CONFIG``, then ``./sender.toml``."""
    return Path(os.environ.get("SENDER_CONFIG") or "sender.toml")


_VAR = re.compile(r"\$\{([^}]+)\}")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSWORD|API_?KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)


def _interpolate(value: Any, path: str, base_dir: Path, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(path, k), base_dir, problems) for k, v in value.items()}
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
                secret = file.read_text().rstrip("\r\n")
            except OSError as exc:
                problems.append(f"{path}: cannot read {file}: {exc.strerror}")
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


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


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
                loc = _join(loc, part)
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
    port: str, name: str, raw: Any, prefix: str, ctx: dict[str, Any], problems: list[str]
) -> Section | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: must be a table")
        return None
    type_ = raw.get("type")
    if not isinstance(type_, str):
        problems.append(f"{prefix}.type: required")
        return None
    try:
        cls = adapter_class(port, type_)
    except ConfigError as exc:
        problems.append(f"{prefix}.type: {exc}")
        return None
    options = _validate(cls.Options, raw, prefix, ctx, problems)
    return Section(name, type_, cls, options) if options is not None else None


def _ledger_problems(url: str, trigger: Section | None) -> list[str]:
    """``daemon.ledger`` has a registered ledger for its scheme, with every ability the
    trigger needs of it (found on the class: nothing is opened)."""
    try:
        name, ledger = ledger_class(url)
    except ConfigError as exc:
        return [f"daemon.ledger: {exc}"]
    if trigger is not None and issubclass(trigger.cls, LedgerBound):
        problem = trigger.cls.ledger_problem(ledger, name)
        if problem is not None:
            return [f"trigger.type: {problem}"]
    return []


_TOP_LEVEL = {"daemon", "trigger", "sources", "destinations", "routes"}


def parse_config(raw: Mapping[str, Any], *, path: Path | None = None) -> AppConfig:
    """Validate an already-parsed config mapping; raise ``ConfigError`` listing every problem."""
    base_dir = path.parent if path else Path.cwd()
    problems: list[str] = []
    raw = _interpolate(dict(raw), "", base_dir, problems)
    # a value whose ${...} failed was replaced by "": its validation errors would only echo
    # the real problem ("must not be empty"), so they are left out
    unresolved = {problem.partition(": ")[0] for problem in problems}
    checked_from = len(problems)
    ctx = {"base_dir": base_dir}
    for key in raw:
        if key not in _TOP_LEVEL:
            problems.append(f"{key}: unknown key")

    daemon = _validate(DaemonConfig, raw.get("daemon"), "daemon", ctx, problems)
    trigger = _section(
        "trigger", "trigger", raw.get("trigger") or {"type": "spool"}, "trigger", ctx, problems
    )

    if daemon is not None:
        problems.extend(_ledger_problems(daemon.ledger, trigger))

    def tables(key: str) -> Mapping[str, Any]:
        value = raw.get(key) or {}
        if not isinstance(value, Mapping):
            problems.append(f"{key}: must be a table")
            return {}
        return value

    declared = tables("destinations")
    raw_routes = tables("routes")
    sources = {
        name: s
        for name, section in tables("sources").items()
        if (s := _section("source", name, section, f"sources.{name}", ctx, problems))
    }
    destinations = {
        name: s
        for name, section in declared.items()
        if (s := _section("destination", name, section, f"destinations.{name}", ctx, problems))
    }
    routes: dict[str, RouteConfig] = {}
    for name, section in raw_routes.items():
        route = _validate(RouteConfig, section, f"routes.{name}", ctx, problems)
        if route is not None:
            routes[name] = route

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
    if any(route.dead_letter is None for route in routes.values()) and daemon is not None:
        # nothing is ever dropped: routes without a dead_letter share a local folder
        cls = adapter_class("destination", "local")
        destinations[default_dead] = Section(
            default_dead,
            "local",
            cls,
            cls.Options(type="local", path=str(base_dir / "var" / "dead-letter")),
        )

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
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text) or {}
        else:
            raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the top level must be a table")
    return parse_config(raw, path=path.resolve())
