"""Structured logs: stable event names with fields, secrets masked; for people on a terminal
(structlog's console renderer), JSON lines anywhere else.

The format is chosen, first to last: ``--log-format``, ``[daemon] log_format``, the
``SENDER_LOG_FORMAT`` environment variable, then whether stderr is a terminal.

Library logs (asyncpg, asyncio) go through the same renderer once ``configure_logging`` ran:
a traceback never breaks the one-JSON-object-a-line stream.

Every secret the config loads (``${file:...}`` values, tokens, header values, passwords in
URLs) is registered here, and a processor replaces it in every log line, whatever field or
exception text carries it. ``mask`` also hides the value of every credential-looking query
parameter (``?api_key=``, ``&token=``, ``sig=``...) in any URL inside the text: it is the one
function every error, location and status line passes through before it is stored (ledger,
dead-letter metadata) or shown (status, API, page, logs).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "LOG_FORMATS",
    "configure_logging",
    "forget_secret",
    "get_logger",
    "mask",
    "mask_optional",
    "mask_values",
    "register_secret",
]

LOG_FORMATS = ("json", "console")

_secrets: set[str] = set()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Never print ``value``. Short values are skipped: masking "a" would mask every "a"."""
    if value and len(value) >= 4:
        _secrets.add(value)


def forget_secret(value: str | None) -> None:
    """Stop masking ``value``: for short-lived secrets (OAuth2 access tokens) once replaced,
    so that the masker does not grow with every token a long-running daemon fetched."""
    _secrets.discard(value or "")


# query parameters whose value is a credential, wherever a URL shows up in a text (presigned
# S3 and GCS URLs included); the names match whole and case-insensitively
_CREDENTIAL_PARAMS = (
    "api_key|apikey|key|token|access_token|secret|signature|sig|password"
    "|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential"
)
_CREDENTIAL_QUERY = re.compile(rf"([?&;](?:{_CREDENTIAL_PARAMS})=)[^&;#\s\"'<>]+", re.IGNORECASE)


def mask(text: str) -> str:
    """``text`` with every registered secret and every credential query value as ``***``."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    if "=" in text:
        text = _CREDENTIAL_QUERY.sub(rf"\g<1>{MASK}", text)
    return text


def mask_optional(text: str | None) -> str | None:
    """``mask`` for a value that may be absent (a chunk's location, a batch's error)."""
    return None if text is None else mask(text)


def mask_values(value: Any) -> Any:
    """``value`` with ``mask`` applied to every string inside it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_values(v) for v in value)
    return value


def _mask_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    return {key: mask_values(value) for key, value in event_dict.items()}


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is now (not the one at configure time), so test
    capture and redirection keep working."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger()


class _StdlibHandler(logging.Handler):
    """Library logs (asyncpg, asyncio, aiohttp) through the same renderer: one JSON object a
    line, tracebacks inside it, secrets masked, written to whatever ``sys.stderr`` is now."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def _route_stdlib(renderer: Any, level: int) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)  # configured again (tests, sender demo): one handler
    handler = _StdlibHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))  # libraries' info and debug are noise here


def configure_logging(
    level: str | None = None, *, json: bool | None = None, log_format: str | None = None
) -> None:
    """Route structlog to stderr: JSON lines, or lines for people (``log_format`` "console").

    ``log_format`` ("json" or "console", from ``--log-format`` or ``[daemon] log_format``)
    or ``json`` force one; otherwise ``$SENDER_LOG_FORMAT``, otherwise console on a
    terminal and JSON anywhere else."""
    level_name = (level or os.environ.get("SENDER_LOG_LEVEL") or "info").upper()
    if json is None:
        chosen = log_format or os.environ.get("SENDER_LOG_FORMAT", "").strip().lower()
        json = chosen == "json" if chosen in LOG_FORMATS else not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(renderer, logging.getLevelNamesMapping().get(level_name, logging.INFO))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
