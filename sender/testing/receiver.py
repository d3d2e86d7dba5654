"""A real HTTP receiver on loopback that records what it gets and fails on demand.

Tests, the demo and the benchmark use it as "the other team's platform"::

    async with Receiver() as receiver:          # listens on 127.0.0.1, a free port
        url = receiver.url + "/scores"
        receiver.fail_next(2, status=503)       # the next two requests get 503
        ...deliver chunks to url...
        assert len(receiver.unique_records()) == 1000

It sees the bytes on the wire (the server does not decode ``Content-Encoding`` itself and has no
body size limit), then decodes gzip/zstd and parses NDJSON, a JSON array or CSV (by
``Content-Type``) into ``ReceivedRequest.records``. A body it cannot decode gets 415 (unknown
``Content-Encoding``) or 400 (corrupt data), like a strict real API.

Faults, checked in this order for every request (after its body was read):

1. ``reset_next(n)``      the next n requests: the connection is dropped without an answer
2. ``slow(seconds)``      every request waits this long before its answer (0 to stop)
3. ``fail_where(predicate)``  every request the predicate picks gets ``status`` (503)
4. ``fail_next(n, ...)``  the next n requests get ``status`` (503 by default), optionally with
                          ``Retry-After`` and extra headers
5. ``fail_always(status)`` every request gets ``status`` until ``recover()``
6. ``fail_ratio(p, seed)`` a seeded share p of requests gets one of ``statuses``
7. ``reject_records(predicate)``  422 when any record of the body matches
8. otherwise 200 with ``{"received": <records>}``

``recover()`` clears every fault. The module has no pytest dependency: ``python -m
sender.testing.receiver --port 8081 --fail-ratio 0.2`` runs one standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gzip
import io
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
import zstandard
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["ReceivedRequest", "Receiver", "decode_body", "parse_records"]

Record = dict[str, Any]


@dataclass(slots=True)
class ReceivedRequest:
    """One request as the receiver saw it.

    ``body_raw`` is the wire bytes; ``body`` the same after ``Content-Encoding`` was undone;
    ``records`` the parsed records (empty when the body could not be decoded).
    ``status_returned`` is what the receiver answered, None when it dropped the connection.
    """

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body_raw: bytes
    body: bytes
    status_returned: int | None
    idempotency_key: str | None
    records: list[Record] = field(default_factory=list)
    received_at: float = 0.0  # time.monotonic() when the body had been read
    done: bool = False  # answered or dropped

    @property
    def accepted(self) -> bool:
        return self.status_returned is not None and 200 <= self.status_returned < 300


@dataclass(slots=True)
class _Failure:
    status: int
    retry_after: float | str | None = None
    body: bytes = b""
    headers: Mapping[str, str] | None = None


def decode_body(raw: bytes, content_encoding: str | None) -> bytes:
    """Undo ``Content-Encoding`` (none/identity, gzip, zstd); ``ValueError`` for others."""
    coding = (content_encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        return raw
    if coding in ("gzip", "x-gzip"):
        return gzip.decompress(raw)
    if coding == "zstd":
        # a streamed zstd frame has no content size: read it as a stream, across frames
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(raw), read_across_frames=True
        )
        with reader:
            return reader.read()
    raise ValueError(f"unsupported Content-Encoding {content_encoding!r}")


def parse_records(body: bytes, content_type: str | None) -> list[Record]:
    """Records from NDJSON (the default), a JSON array (or one object) or CSV with a header.

    CSV values stay strings, as any CSV reader would give them. ``ValueError`` if unparsable.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        data = orjson.loads(body) if body.strip() else []
        return data if isinstance(data, list) else [data]
    if media_type == "text/csv":
        reader = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
        return [dict(row) for row in reader]
    return [orjson.loads(line) for line in body.splitlines() if line.strip()]


class Receiver:
    """An aiohttp server on ``host`` (port 0 = a free one) that records and can misbehave.

    Start with ``await start()`` (returns the base URL) or ``async with``; stop with
    ``await stop()``. Every path answers ``POST`` and ``PUT``. Fault methods may be called
    at any time, also while requests are in flight.
    """

    # the fault state, (re)set by recover(); declared here because the fault methods above
    # recover() assign it first
    _next_failures: list[_Failure]
    _always: _Failure | None
    _ratio: tuple[float, random.Random, tuple[int, ...]] | None
    _delay: float
    _resets: int
    _reject: Callable[[Record], bool] | None
    _where: list[tuple[Callable[[web.Request], bool], _Failure]]

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._requests: list[ReceivedRequest] = []
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.recover()

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen and return the base URL, e.g. ``http://127.0.0.1:41235``."""
        if self._runner is not None:
            raise RuntimeError("receiver already started")
        app = web.Application(client_max_size=0)  # 0: no body size limit
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        app.router.add_route("PUT", "/{tail:.*}", self._handle)
        # auto_decompress=False: record the wire bytes, and accept zstd whatever aiohttp
        # itself can decode; access_log=None: tests stay quiet
        runner = web.AppRunner(app, auto_decompress=False, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self._stopping.clear()
        sockets = runner.addresses
        self.port = sockets[0][1]
        self._url = f"http://{self.host}:{self.port}"
        return self._url

    async def stop(self) -> None:
        """Stop listening; requests still held by ``slow`` are released first. Idempotent."""
        if self._runner is None:
            return
        self._stopping.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``); only once started."""
        if self._url is None:
            raise RuntimeError("receiver not started")
        return self._url

    # what was received -----------------------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request so far, in arrival order (a copy)."""
        return list(self._requests)

    @property
    def accepted(self) -> list[ReceivedRequest]:
        """The requests answered with a 2xx."""
        return [r for r in self._requests if r.accepted]

    def records(self) -> list[Record]:
        """All records of accepted requests, duplicates included."""
        return [record for r in self.accepted for record in r.records]

    def unique_records(self) -> list[Record]:
        """Records of accepted requests, each ``Idempotency-Key`` counted once (the first
        accepted request with it): what a deduplicating receiver keeps."""
        seen: set[str] = set()
        out: list[Record] = []
        for r in self.accepted:
            if r.idempotency_key is not None:
                if r.idempotency_key in seen:
                    continue
                seen.add(r.idempotency_key)
            out.extend(r.records)
        return out

    def clear(self) -> None:
        """Forget the requests received so far (faults stay)."""
        self._requests.clear()
        self.max_in_flight = self.in_flight

    async def wait_for(self, predicate: Callable[[Receiver], bool]) -> None:
        """Return once ``predicate(receiver)`` is true, checked now, when a request's body has
        arrived and when it was answered (or dropped). Bound it with ``asyncio.timeout``."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    async def wait_for_requests(self, count: int) -> None:
        """Return once at least ``count`` requests have arrived and been answered or dropped."""
        await self.wait_for(lambda r: sum(req.done for req in r._requests) >= count)

    # faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | str | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After: retry_after``,
        a number of seconds or an HTTP-date string, plus ``headers``)."""
        self._next_failures.extend(_Failure(status, retry_after, body, headers) for _ in range(n))

    def fail_always(
        self, status: int = 503, retry_after: float | str | None = None, body: bytes = b""
    ) -> None:
        """Answer every request with ``status`` until ``recover()``."""
        self._always = _Failure(status, retry_after, body)

    def fail_ratio(self, p: float, seed: int = 0, statuses: Sequence[int] = (503,)) -> None:
        """Answer a share ``p`` of requests, chosen by a random generator seeded with
        ``seed``, with one of ``statuses``: the same seed gives the same sequence."""
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be between 0 and 1")
        self._ratio = (p, random.Random(seed), tuple(statuses))

    def slow(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request (0 answers at once again)."""
        self._delay = max(0.0, seconds)

    def reset_next(self, n: int = 1) -> None:
        """Drop the connection of the next ``n`` requests without answering."""
        self._resets += n

    def reject_records(self, predicate: Callable[[Record], bool] | None) -> None:
        """Answer 422 to a request whose body has any record matching ``predicate`` (None
        accepts everything again). The answer lists the matching indexes."""
        self._reject = predicate

    def fail_where(
        self,
        predicate: Callable[[web.Request], bool],
        status: int = 503,
        retry_after: float | str | None = None,
    ) -> None:
        """Answer ``status`` to every request ``predicate`` picks (by path or headers, e.g.
        one ``X-Sender-Chunk``) until ``recover()``; checked before the other failures."""
        self._where.append((predicate, _Failure(status, retry_after)))

    def recover(self) -> None:
        """Clear every fault: answer 200 at once from now on."""
        self._next_failures = []
        self._always = None
        self._ratio = None
        self._delay = 0.0
        self._resets = 0
        self._reject = None
        self._where = []

    # the handler -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1
            self._changed.set()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            headers=request.headers,
            body_raw=raw,
            body=b"",
            status_returned=None,
            idempotency_key=request.headers.get("Idempotency-Key"),
            received_at=time.monotonic(),
        )
        self._requests.append(received)
        self._changed.set()
        try:
            return await self._respond(request, received)
        finally:
            received.done = True

    async def _respond(self, request: web.Request, received: ReceivedRequest) -> web.Response:
        if self._resets > 0:
            self._resets -= 1
            # abort() sends a RST: the client sees the connection die mid-request
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing to answer on a dead connection

        if self._delay > 0:
            # released early by stop(), so a held request never delays shutdown
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._delay)

        response = self._fault(request)
        if response is None:
            response = self._decode(request, received)
        received.status_returned = response.status
        return response

    def _fault(self, request: web.Request) -> web.Response | None:
        failure = next((f for picks, f in self._where if picks(request)), None)
        if failure is None and self._next_failures:
            failure = self._next_failures.pop(0)
        elif failure is None and self._always is not None:
            failure = self._always
        elif failure is None and self._ratio is not None:
            p, rng, statuses = self._ratio
            if rng.random() < p:
                failure = _Failure(rng.choice(statuses))
        if failure is None:
            return None
        headers = CIMultiDict(failure.headers or {})
        if failure.retry_after is not None:
            value = failure.retry_after
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            headers["Retry-After"] = str(value)
        return web.Response(status=failure.status, body=failure.body, headers=headers)

    def _decode(self, request: web.Request, received: ReceivedRequest) -> web.Response:
        try:
            received.body = decode_body(received.body_raw, request.headers.get("Content-Encoding"))
        except ValueError as exc:
            return _json_response(415, {"error": str(exc)})
        except Exception as exc:  # corrupt gzip/zstd data
            return _json_response(400, {"error": f"cannot decode body: {exc}"})
        try:
            received.records = parse_records(received.body, request.headers.get("Content-Type"))
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            return _json_response(400, {"error": f"cannot parse records: {exc}"})
        if self._reject is not None:
            bad = [i for i, record in enumerate(received.records) if self._reject(record)]
            if bad:
                return _json_response(422, {"error": "rejected records", "indexes": bad})
        return _json_response(200, {"received": len(received.records)})


def _json_response(status: int, data: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


# standalone ------------------------------------------------------------------------------


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sender.testing.receiver",
        description="A loopback HTTP receiver that records.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--fail-ratio", type=float, default=0.0, help="share of 503 answers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    return parser.parse_args(None if argv is None else list(argv))


async def _serve(args: argparse.Namespace) -> None:
    receiver = Receiver(args.host, args.port)
    if args.fail_ratio:
        receiver.fail_ratio(args.fail_ratio, seed=args.seed)
    receiver.slow(args.delay)
    async with receiver:
        print(f"receiving on {receiver.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            print(
                f"{len(receiver.requests)} requests, {len(receiver.accepted)} accepted, "
                f"{len(receiver.unique_records())} unique records",
                flush=True,
            )


def main(argv: Iterable[str] | None = None) -> None:
    """Run a receiver until interrupted (Ctrl-C)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
