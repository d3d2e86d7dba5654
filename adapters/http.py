"""The HTTP destination: one request per chunk to another team's API.

Each chunk is sent as the body of one ``POST`` (or ``PUT``) with headers that describe it
(DESIGN.md, "HTTP destination requests")::

    Content-Type       application/x-ndjson | application/json | text/csv; charset=utf-8
    Content-Encoding   gzip | zstd (absent for "none")
    Idempotency-Key    stable per (batch, route, chunk): a resend carries the same key
    X-Sender-Batch, X-Sender-Chunk, X-Sender-Route, X-Sender-Dataset, X-Sender-Records
    User-Agent         integration-sender/<version>
    Authorization      with ``auth`` (oauth2 client credentials, basic, bearer): http_auth
    webhook-id, webhook-timestamp, webhook-signature   with ``signing_secret``: http_signing

plus the configured ``headers`` (values may be secrets). ``url`` and header values may hold
``{dataset}``, ``{batch_id}``, ``{route}``, ``{chunk}`` (http_templates); ``tls`` sets a
private CA and a client certificate (http_tls). The answer is classified by
``classify_response`` (http_response) under ``retry.on_status``. Redirects (301, 302, 307,
308) are followed with the same request only to the same scheme, host and port: credentials
and signatures never go to another origin, and a redirect elsewhere is a permanent error
naming the location. aiohttp exceptions never leave these modules.
"""

from __future__ import annotations

import asyncio
import io
import time
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from sender import __version__
from sender.config import mask_url
from sender.errors import AdapterClosed, DeliveryError, PermanentError
from sender.log import register_secret
from sender.model import EncodedChunk, Receipt
from sender.ports import Resource
from sender_adapters.http_auth import Authenticator, authenticator
from sender_adapters.http_options import CONTENT_TYPES, HttpOptions
from sender_adapters.http_response import (
    classify_response,
    client_error,
    parse_retry_after,
    read_bounded,
)
from sender_adapters.http_signing import Signer, sign
from sender_adapters.http_templates import Template, header_value

__all__ = [
    "CONTENT_TYPES",
    "HttpDestination",
    "classify_response",
    "parse_retry_after",
    "sign",
]

_CONTENT_ENCODINGS = {"none": None, "gzip": "gzip", "zstd": "zstd"}
_FOLLOWED = frozenset({301, 302, 307, 308})  # redirects that keep the method and the body
_MAX_HOPS = 5
# signing a chunk larger than this (decompress + HMAC) runs in a worker thread, off the loop
_SIGN_INLINE_BYTES = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


class HttpDestination(Resource):
    """Delivers each chunk as one HTTP request to ``options.url``.

    One pooled ``aiohttp.ClientSession`` per destination, created on the first ``deliver``
    inside the running loop; at most ``concurrency`` requests are in flight (``max_concurrency``
    when concurrency is ``"adaptive"``: the core's limiter then decides below that). Use as
    an async context manager or call ``aclose()`` (idempotent); ``deliver`` after close raises
    ``AdapterClosed``.
    """

    Options = HttpOptions

    formats = frozenset(CONTENT_TYPES)
    codecs = frozenset(_CONTENT_ENCODINGS)

    def __init__(self, name: str, options: HttpOptions) -> None:
        self.name = name
        self.options = options
        self.limit = options.max_in_flight
        self._session: aiohttp.ClientSession | None = None
        # waiting for a slot happens here, outside the request timeout (aiohttp's total
        # timeout would otherwise count the wait for a pooled connection)
        self._slots = asyncio.Semaphore(self.limit)
        self._closed = False
        self._url = Template(options.url, for_url=True)
        self._static_headers: CIMultiDict[str] = CIMultiDict(
            {"User-Agent": f"integration-sender/{__version__}"}
        )
        self._header_templates: list[tuple[str, Template]] = []
        for key, value in options.headers.items():
            template = Template(value.get_secret_value(), for_url=False)
            if template.static:
                # a configured User-Agent or Content-Type replaces ours (case-insensitive)
                self._static_headers[key] = template.plain
            else:
                self._header_templates.append((key, template))
        secrets = options.signing_secrets
        for secret in secrets:
            register_secret(secret)
        self._signer = Signer(secrets) if secrets else None
        self.auth: Authenticator | None = authenticator(options.auth, timeout_s=options.timeout_s)
        self._ssl = options.tls.context() if options.tls is not None else True
        self._location = mask_url(options.url)  # what logs show

    def __repr__(self) -> str:
        return f"HttpDestination({self.name!r}, url={self._location!r})"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.options.timeout_s),
                # deliveries are stateless: no cookie is kept, so none can travel anywhere
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def url_for(self, chunk: EncodedChunk) -> str:
        """The request URL for ``chunk`` (placeholders filled in)."""
        return self._url.render(chunk)

    def _unsigned_headers(self, chunk: EncodedChunk) -> CIMultiDict[str]:
        content_type = chunk.content_type or CONTENT_TYPES.get(chunk.format)
        if content_type is None or chunk.codec not in _CONTENT_ENCODINGS:
            raise PermanentError(
                f"{self.name} cannot send format {chunk.format!r} with codec {chunk.codec!r}"
            )
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
        headers.update(self._static_headers)
        if chunk.content_type:
            headers["Content-Type"] = chunk.content_type  # the chunk's own type wins
        for key, template in self._header_templates:
            headers[key] = template.render(chunk)
        encoding = _CONTENT_ENCODINGS[chunk.codec]
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        headers.update(
            {
                "Idempotency-Key": chunk.idempotency_key,
                "X-Sender-Batch": header_value(chunk.batch_id),
                "X-Sender-Chunk": chunk.chunk_id,
                "X-Sender-Route": header_value(chunk.route),
                "X-Sender-Dataset": header_value(chunk.dataset),
                "X-Sender-Records": str(chunk.records),
            }
        )
        return headers

    def _signed(self, headers: CIMultiDict[str], chunk: EncodedChunk, ts: int, sig: str) -> None:
        headers["webhook-id"] = chunk.idempotency_key
        headers["webhook-timestamp"] = str(ts)
        headers["webhook-signature"] = sig

    def headers_for(self, chunk: EncodedChunk, *, timestamp: int | None = None) -> CIMultiDict[str]:
        """The request headers for ``chunk``, signed over its uncompressed payload when a
        ``signing_secret`` is configured (``Authorization`` is added per request)."""
        headers = self._unsigned_headers(chunk)
        if self._signer is not None:
            ts = int(time.time()) if timestamp is None else timestamp
            signature = self._signer.signature(
                chunk.idempotency_key, ts, chunk.payload, chunk.codec
            )
            self._signed(headers, chunk, ts, signature)
        return headers

    async def _headers(self, chunk: EncodedChunk) -> CIMultiDict[str]:
        if self._signer is None or chunk.raw_size <= _SIGN_INLINE_BYTES:
            return self.headers_for(chunk)
        headers = self._unsigned_headers(chunk)
        ts = int(time.time())
        signature = await asyncio.to_thread(
            self._signer.signature, chunk.idempotency_key, ts, chunk.payload, chunk.codec
        )
        self._signed(headers, chunk, ts, signature)
        return headers

    async def deliver(self, chunk: EncodedChunk) -> Receipt:
        """Send ``chunk`` in one request (following same-origin redirects, and once more
        after a 401 when an OAuth2 token was refreshed). Returns a ``Receipt`` (the URL and
        status) on 2xx; raises ``RetryableError`` (no answer, a status in
        ``retry.on_status``, a failing token endpoint) or ``PermanentError`` (other answers;
        ``gone`` for 410), each with ``status`` (None without an answer)."""
        if self._closed:
            raise AdapterClosed(f"destination {self.name}")
        headers = await self._headers(chunk)
        url = self.url_for(chunk)
        async with self._slots:
            if self._closed:  # closed while this chunk waited for a slot
                raise AdapterClosed(f"destination {self.name}")
            session = self._client()
            used = None
            if self.auth is not None:
                used = headers["Authorization"] = await self.auth.authorization(session)
            status, answer_headers, body, url = await self._exchange(session, url, headers, chunk)
            if (
                status == 401
                and used is not None
                and self.auth is not None
                and await self.auth.rejected(session, used)
            ):
                headers["Authorization"] = await self.auth.authorization(session)
                status, answer_headers, body, url = await self._exchange(
                    session, url, headers, chunk
                )
        outcome = classify_response(
            status,
            answer_headers,
            body,
            url=mask_url(url),
            on_status=self.options.retry.on_status,
        )
        if isinstance(outcome, DeliveryError):
            raise outcome
        return outcome

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: CIMultiDict[str],
        chunk: EncodedChunk,
    ) -> tuple[int, CIMultiDict[str], bytes, str]:
        """One request, and its same-origin redirects: (status, headers, body start, URL)."""
        origin = _origin(url)
        for _ in range(_MAX_HOPS + 1):
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
                    body = await read_bounded(response)
                    status, answer = response.status, CIMultiDict(response.headers)
            except aiohttp.InvalidURL as exc:  # retrying cannot fix the address
                raise PermanentError(f"invalid URL {mask_url(url)}") from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise client_error(exc, self.options.timeout_s) from exc
            location = answer.get("Location")
            if status not in _FOLLOWED or not location:
                return status, answer, body, url
            target = urljoin(url, location)
            if _origin(target) != origin:
                raise PermanentError(
                    f"HTTP {status}: redirect to {mask_url(target)} not followed: another "
                    f"origin than {mask_url(url)} (credentials and signatures stay with it)",
                    status=status,
                )
            url = target
        raise PermanentError(
            f"HTTP {status}: more than {_MAX_HOPS} redirects, the last to {mask_url(url)}",
            status=status,
        )

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; the destination refuses work afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
