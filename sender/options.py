"""The config's option models: the keys every section has, validated once, frozen.

Each adapter validates its own section with its ``Options`` model (a subclass of
``SourceOptions``, ``DestinationOptions`` or ``TriggerOptions``), so errors always name the key
path. Durations ("30s") and sizes ("4MiB") are strings in files and ``*_s`` floats / ``int``
bytes in code; relative paths (``LocalPath``) are relative to the config file; secrets are
``SecretStr`` (masked in ``repr``) and registered with the log masker. Loading and
interpolation are in ``sender.config``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .casting import CastType
from .log import register_secret
from .units import Rate, parse_duration, parse_rate, parse_size

__all__ = [
    "ChunkConfig",
    "CircuitConfig",
    "DaemonConfig",
    "DestinationOptions",
    "DiffConfig",
    "Duration",
    "LocalPath",
    "Options",
    "RateLimit",
    "RetryConfig",
    "RouteConfig",
    "Size",
    "SourceOptions",
    "TriggerOptions",
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
    # a control server listening beyond loopback needs a token, unless this says it may not
    allow_anonymous: bool = False
    # a JSONL line longer than this is a bad record (its first KiB kept); memory stays bounded.
    # At least 1 MiB: lines are checked as they cross the reader's 1 MiB pieces
    max_record_bytes: Size = Field(16 * 1024 * 1024, ge=1024 * 1024)
    # URI prefixes a trigger message may name (None: see ``AppConfig.uri_allowed``)
    allow_uris: list[str] | None = None
    lease_s: Duration = Field(60.0, alias="lease", gt=0)
    # a batch of more objects than this is cut into shards of this many consecutive objects,
    # each delivered by whichever replica is free (sender.shards); 0 sends every batch whole
    shard_objects: int = Field(16, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # None: for people on a terminal, JSON elsewhere (--log-format overrides this)
    log_format: Literal["json", "console"] | None = None
    # destinations that get a CloudEvent per batch outcome (sender.events); a route may narrow
    notify: list[str] = []
    # names the daemon in an event's source (integration-sender/<name>); None: the host name
    name: str | None = Field(None, min_length=1)

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

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty secret file or an empty ${VAR} would otherwise switch authentication off
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: give a token, or leave the key out")
        return value

    @model_validator(mode="after")
    def _closed_beyond_loopback(self) -> DaemonConfig:
        if self.token is None and not self.allow_anonymous and not self.loopback:
            raise ValueError(
                f"listen: {self.listen} is reachable beyond this machine: set daemon.token"
                " (or allow_anonymous = true to let anyone trigger batches and read them)"
            )
        return self

    @property
    def loopback(self) -> bool:
        """The control server listens on this machine only."""
        host = self.host.lower()
        return host in ("localhost", "::1") or host.startswith("127.")

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class DiffConfig(Options):
    """A route's diff sync (``sender.diff``): send only records whose content changed since
    what the route last delivered, keyed by ``key`` (one output field or several)."""

    key: tuple[str, ...] = Field(min_length=1)
    ignore: frozenset[str] = frozenset()
    deletes: bool = False

    @field_validator("key", mode="before")
    @classmethod
    def _one_or_several(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_is_not_ignored(self) -> DiffConfig:
        both = sorted(set(self.key) & self.ignore)
        if both:
            raise ValueError(f"ignore: {both} is part of the key")
        if len(set(self.key)) != len(self.key):
            raise ValueError("key: names a field twice")
        return self


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
    diff: DiffConfig | None = None  # send only what changed since the last delivery
    # destinations told of this route's batches (None: the daemon's notify; see sender.events)
    notify: list[str] | None = None

    @field_validator("fields")
    @classmethod
    def _non_empty_fields(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and not value:
            raise ValueError("must name at least one field (or be left out to pass through)")
        return value

    @model_validator(mode="after")
    def _diff_names_output_fields(self) -> RouteConfig:
        # the key and ignored fields are fields of the *output* record: with a projection,
        # they must be among its outputs (without one, records pass through as they are)
        if self.diff is not None and self.fields:
            unknown = sorted((set(self.diff.key) | self.diff.ignore) - set(self.fields))
            if unknown:
                raise ValueError(f"diff: {unknown} not among the output fields of 'fields'")
        return self
