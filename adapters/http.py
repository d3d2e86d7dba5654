"""The HTTP destination: one request per chunk to another team's API.

Each chunk is sent as the body of one ``POST`` (or ``PUT``) with headers that describe it
(DESIGN.md, "HTTP destination requests")::

    Content-Type       application/x-ndjson | application/json | text/csv; charset=utf-8
    Content-Encoding   gzip | zstd (absent for "none")
    Idempotency-Key    stable per (batch, route, chunk): a resend carries the same key
    X-Sender-Batch, X-Sender-Chunk, X-Sender-Route, X-Sender-Dataset, X-Sender-Records
    User-Agent         integration-sender/<version>
    webhook-id, webhook-timestamp, webhook-signature   with ``signing_secret`` (Standard Webhooks)

plus the configured ``headers`` (values may be secrets). The receiver's answer is classified by
``classify_response``: 2xx is delivered; 408, 425, 429 and 5xx are retryable (with the
``Retry-After`` the receiver gave); other 3xx/4xx are permanent. Connection errors and timeouts
are retryable. aiohttp exceptions never leave this module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import os
import re
import socket
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, urlsplit

import aiohttp
from multidict import CIMultiDict
from pydantic import SecretStr, field_validator

from sender import __version__
from sender.config import DestinationOptions, mask_url
from sender.errors import DeliveryError, PermanentError, RetryableError
from sender.model import EncodedChunk, Receipt
from sender.ports import Resource

__all__ = [
    "CONTENT_TYPES",
    "HttpDestination",
    "classify_response",
    "parse_retry_after",
    "sign",
]

CONTENT_TYPES = {
    "ndjson": "application/x-ndjson",
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
}
_CONTENT_ENCODINGS = {"none": None, "gzip": "gzip", "zstd": "zstd"}

# headers that describe the body or the chunk: a configured header must not change them
_RESERVED = frozenset(
    name.lower()
    for name in (
        "Content-Encoding",
        "Content-Length",
        "Transfer-Encoding",
        "Host",
        "Idempotency-Key",
        "X-Sender-Batch",
        "X-Sender-Chunk",
        "X-Sender-Route",
        "X-Sender-Dataset",
        "X-Sender-Records",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    )
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 header field name

_RETRYABLE_STATUSES = frozenset({408, 425, 429})
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


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text[:_BODY_EXCERPT]


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    url: str,
    now: float | None = None,
) -> Receipt | RetryableError | PermanentError:
    """What a receiver's answer means for the chunk: a ``Receipt`` (2xx), a ``RetryableError``
    (408, 425, 429, 5xx; ``retry_after`` from ``Retry-After``, or for 429 from
    ``RateLimit-Reset``/``X-RateLimit-Reset``) or a ``PermanentError`` (any other status; the
    reason quotes the status and the start of the body). ``headers`` must be case-insensitive
    (aiohttp's are). Pure: the caller raises."""
    if 200 <= status < 300:
        return Receipt(location=url, status=status)
    excerpt = _excerpt(body)
    detail = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in _RETRYABLE_STATUSES or 500 <= status < 600:
        current = time.time() if now is None else now
        retry_after = parse_retry_after(headers.get("Retry-After"), now=current)
        if retry_after is None and status == 429:
            retry_after = _rate_limit_reset(headers, current)
        return RetryableError(detail, status=status, retry_after=retry_after)
    if 300 <= status < 400:
        location = headers.get("Location")
        if location:
            detail += f" (redirect to {location}; redirects are not followed)"
    return PermanentError(detail, status=status)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value: ``v1,<base64 HMAC-SHA256>`` over
    ``f"{msg_id}.{timestamp}."`` + body. A ``whsec_``-prefixed secret is base64 (the part after
    the prefix); any other secret is used as its UTF-8 bytes."""
    key: bytes
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("a whsec_ signing secret must be base64 after the prefix") from exc
    else:
        key = secret.encode()
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _header_value(value: str) -> str:
    # ids and names come from trigger messages: keep headers valid ASCII without CR/LF
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))


def _describe_client_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):  # incl. aiohttp's ServerTimeoutError
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate error: {exc.certificate_error}"
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


class HttpDestination(Resource):
    """Delivers each chunk as one HTTP request to ``options.url``.

    One pooled ``aiohttp.ClientSession`` per destination, created on the first ``deliver``
    inside the running loop; at most ``concurrency`` requests are in flight (``max_concurrency``
    when concurrency is ``"adaptive"``: the core's limiter then decides below that). Redirects
    are not followed. Use as an async context manager or call ``aclose()`` (idempotent);
    ``deliver`` after close raises ``RuntimeError``.
    """

    class Options(DestinationOptions):
        """``[destinations.<name>]`` with ``type = "http"``.

        ``headers`` are sent with every request (values may be ``${file:...}`` secrets); they
        may replace ``User-Agent`` or ``Content-Type`` (a vendor media type) but not the headers
        that describe the body or the chunk. ``signing_secret`` turns on Standard Webhooks
        signatures (``whsec_<base64>`` or any other string, used as its UTF-8 bytes).
        """

        type: str = "http"
        url: str
        method: Literal["POST", "PUT"] = "POST"
        headers: dict[str, SecretStr] = {}
        signing_secret: SecretStr | None = None

        @field_validator("url")
        @classmethod
        def _http_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
            return value

        @field_validator("headers")
        @classmethod
        def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
            for name, secret in value.items():
                if not _TOKEN.match(name):
                    raise ValueError(f"{name!r} is not a valid header name")
                if name.lower() in _RESERVED:
                    raise ValueError(f"{name!r} is set by the sender and cannot be configured")
                if any(c in secret.get_secret_value() for c in "\r\n\x00"):
                    raise ValueError(f"the value of {name!r} must not contain line breaks")
            return value

        @field_validator("signing_secret")
        @classmethod
        def _valid_secret(cls, value: SecretStr | None) -> SecretStr | None:
            if value is not None:
                secret = value.get_secret_value()
                if not secret:
                    raise ValueError("must not be empty")
                if secret.startswith("whsec_"):
                    try:
                        base64.b64decode(secret.removeprefix("whsec_"), validate=True)
                    except binascii.Error:
                        raise ValueError("must be base64 after the whsec_ prefix") from None
            return value

    formats = frozenset(CONTENT_TYPES)
    codecs = frozenset(_CONTENT_ENCODINGS)

    def __init__(self, name: str, options: HttpDestination.Options) -> None:
        self.name = name
        self.options = options
        self.limit = options.max_in_flight
        self._session: aiohttp.ClientSession | None = None
        # waiting for a slot happens here, outside the request timeout (aiohttp's total
        # timeout would otherwise count the wait for a pooled connection)
        self._slots = asyncio.Semaphore(self.limit)
        self._closed = False
        # a configured User-Agent or Content-Type replaces ours (names are case-insensitive)
        self._static_headers: CIMultiDict[str] = CIMultiDict(
            {"User-Agent": f"integration-sender/{__version__}"}
        )
        for key, value in options.headers.items():
            self._static_headers[key] = value.get_secret_value()
        self._location = mask_url(options.url)  # what receipts and logs show

    def __repr__(self) -> str:
        return f"HttpDestination({self.name!r}, url={self._location!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit),
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s),
            )
        return self._session

    def headers_for(self, chunk: EncodedChunk, *, timestamp: int | None = None) -> CIMultiDict[str]:
        """The request headers for ``chunk`` (signed over its payload when configured)."""
        content_type = CONTENT_TYPES.get(chunk.format)
        if content_type is None or chunk.codec not in _CONTENT_ENCODINGS:
            raise PermanentError(
                f"{self.name} cannot send format {chunk.format!r} with codec {chunk.codec!r}"
            )
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        headers.update(self._static_headers)
        encoding = _CONTENT_ENCODINGS[chunk.codec]
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        headers.update(
            {
                "Idempotency-Key": chunk.idempotency_key,
                "X-Sender-Batch": _header_value(chunk.batch_id),
                "X-Sender-Chunk": chunk.chunk_id,
                "X-Sender-Route": _header_value(chunk.route),
                "X-Sender-Dataset": _header_value(chunk.dataset),
                "X-Sender-Records": str(chunk.records),
            }
        )
        if self.options.signing_secret is not None:
            ts = int(time.time()) if timestamp is None else timestamp
            headers["webhook-id"] = chunk.idempotency_key
            headers["webhook-timestamp"] = str(ts)
            headers["webhook-signature"] = sign(
                self.options.signing_secret.get_secret_value(),
                chunk.idempotency_key,
                ts,
                chunk.payload,
            )
        return headers

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        """Send ``chunk`` in one request. Returns a ``Receipt`` (the URL and status) on 2xx;
        raises ``RetryableError`` (connection errors, timeouts, 408/425/429/5xx, with
        ``retry_after`` when the receiver gave one) or ``PermanentError`` (other answers)."""
        if self._closed:
            raise RuntimeError("destination closed")
        headers = self.headers_for(chunk)
        url = self.options.url
        async with self._slots:
            if self._closed:  # closed while this chunk waited for a slot
                raise RuntimeError("destination closed")
            session = self._client()
            try:
                async with session.request(
                    self.options.method,
                    url,
                    # a BytesIO (which shares the bytes, no copy) is written in pieces that
                    # yield to the loop; raw bytes over 1 MiB make aiohttp warn for that reason
                    data=io.BytesIO(chunk.payload),
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    # read the whole answer so the connection goes back to the pool clean
                    body = await response.read()
                    outcome = classify_response(
                        response.status, response.headers, body, url=self._location
                    )
            except aiohttp.InvalidURL as exc:  # retrying cannot fix the address
                raise PermanentError(f"invalid URL {self._location}") from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # a receiver too slow to answer in time is pushing back as surely as a 429
                raise RetryableError(
                    _describe_client_error(exc, self.options.timeout_s),
                    push_back=isinstance(exc, TimeoutError),
                ) from exc
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; the destination refuses work afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
