"""What an HTTP answer (or the lack of one) means for a chunk: the HTTP destination's
classification, as facts the core decides from (STYLE.md #8, #22).

- 2xx: delivered.
- a status in ``retry.on_status`` (default 408, 425, 429, 500, 502, 503, 504): retryable,
  with the ``Retry-After`` the receiver gave (or, for 429, ``RateLimit-Reset``);
  ``push_back`` for 429, 503 and any answer that said when to come back.
- 410 Gone: permanent with ``gone=True``: the core disables the destination.
- any other status: permanent (the reason quotes the status and the start of the body).
- no answer (refused, reset, timeout): retryable with ``status=None``; a timeout pushes back.

Response bodies are read only up to ``MAX_BODY`` bytes: a receiver answering with gigabytes
cannot make the sender hold them (the rest is dropped with the connection).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Collection, Mapping
from email.utils import parsedate_to_datetime

import aiohttp

from sender.errors import PermanentError, RetryableError
from sender.model import Receipt

__all__ = [
    "DEFAULT_ON_STATUS",
    "MAX_BODY",
    "classify_response",
    "client_error",
    "parse_retry_after",
    "read_bounded",
]

DEFAULT_ON_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BODY = 64 * 1024  # of any answer: enough for the reason, bounded whatever is sent
_DRAIN = 1024 * 1024  # read (and drop) this much more so the connection can be reused
_BODY_EXCERPT = 200
# an X-RateLimit-Reset above this is a unix time, not a number of seconds (GitHub's style)
_EPOCH_THRESHOLD = 1_000_000_000


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds (``"120"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``) taken relative to ``now`` (unix seconds, default the
    current time). Never negative; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _rate_limit_reset(headers: Mapping[str, str], now: float) -> float | None:
    for name in ("RateLimit-Reset", "X-RateLimit-Reset"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value.strip())
        except ValueError:
            continue
        if seconds != seconds:  # NaN
            continue
        if seconds > _EPOCH_THRESHOLD:
            seconds -= now
        return max(0.0, seconds)
    return None


def excerpt(body: bytes) -> str:
    """The start of a body, as text, for a reason."""
    return body[: _BODY_EXCERPT * 4].decode("utf-8", "replace").strip()[:_BODY_EXCERPT]


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    url: str,
    on_status: Collection[int] = DEFAULT_ON_STATUS,
    now: float | None = None,
) -> Receipt | RetryableError | PermanentError:
    """What a receiver's answer means: a ``Receipt`` (2xx), a ``RetryableError`` (a status in
    ``on_status``; ``retry_after`` from ``Retry-After``, or for 429 from
    ``RateLimit-Reset``/``X-RateLimit-Reset``) or a ``PermanentError`` (any other status;
    ``gone`` for 410). ``headers`` must be case-insensitive (aiohttp's are). Pure: the caller
    raises."""
    if 200 <= status < 300:
        return Receipt(location=url, status=status)
    text = excerpt(body)
    detail = f"HTTP {status}" + (f": {text}" if text else "")
    if status in on_status:
        current = time.time() if now is None else now
        retry_after = parse_retry_after(headers.get("Retry-After"), now=current)
        if retry_after is None and status == 429:
            retry_after = _rate_limit_reset(headers, current)
        return RetryableError(detail, status=status, retry_after=retry_after)
    if status == 410:
        return PermanentError(
            f"{detail} (gone: the destination is disabled)",
            status=status,
            gone=True,
        )
    if 300 <= status < 400 and headers.get("Location"):
        detail += f" (redirect to {headers['Location']}; not followed)"
    return PermanentError(detail, status=status)


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    """At most ``limit`` bytes of the body. Up to 1 MiB more is read and dropped so the
    connection goes back to the pool clean; past that the connection is closed when the
    response is released, and the rest is never read."""
    kept = bytearray()
    content = response.content
    while len(kept) < limit:
        piece = await content.read(limit - len(kept))
        if not piece:
            return bytes(kept)
        kept += piece
    dropped = 0
    while dropped < _DRAIN:
        piece = await content.read(min(64 * 1024, _DRAIN - dropped))
        if not piece:
            break
        dropped += len(piece)
    return bytes(kept)


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):  # incl. aiohttp's ServerTimeoutError
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate error: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS error: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror) or not os_error.errno:
            reason = os_error.strerror or str(os_error)  # "name or service not known"
        else:
            # asyncio's strerror is "Connect call failed (...)": the errno says why
            reason = os.strerror(os_error.errno)
        return f"cannot connect to {exc.host}:{exc.port}: {reason.lower()}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"broken response: {exc}"
    if isinstance(exc, OSError) and exc.strerror:  # ClientOSError: reset, broken pipe...
        return f"connection error: {exc.strerror.lower()}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def client_error(exc: BaseException, timeout_s: float, *, what: str = "") -> RetryableError:
    """A failure without an answer as a ``RetryableError`` (``status`` None); a timeout
    pushes back (the receiver may be overloaded), a refused or reset connection does not."""
    reason = _describe(exc, timeout_s)
    return RetryableError(
        f"{what}: {reason}" if what else reason,
        status=None,
        push_back=isinstance(exc, TimeoutError),
    )
