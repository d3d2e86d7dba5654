"""A receiver that misbehaves at random, seeded: the other team's platform on a bad day.

It is ``sender.testing.receiver.Receiver`` (real aiohttp on loopback, records every request) plus a
draw per request, in arrival order, from a seeded generator:

=================  ================================================================  ========
fault              what the client sees                                              processed
=================  ================================================================  ========
error              500 / 502 / 504                                                   no
throttle           429 or 503 with ``Retry-After`` (a fraction of a second)          no
reset              the connection dropped after the body was read, no answer         no
partial_read       the connection dropped after reading only part of the body        no
slow_body          200 whose body trickles in (within the client timeout)            yes
partial_response   200 with a Content-Length the body never reaches, then a reset    yes
late_ok            200, but only after the client's timeout                          yes
hang               503 after the client's timeout                                    no
=================  ================================================================  ========

"processed" faults are the nasty ones: the receiver took the records but the client cannot
know, so it sends them again, with the same Idempotency-Key. ``ReceivedRequest.accepted`` is
true for them (the receiver answered 2xx), which is what deduplication by key must absorb.

``latency(base, per_in_flight)`` makes every answer wait ``base + per_in_flight * in_flight``:
a receiver that queues, whose round-trip time grows with the load it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Mapping

from aiohttp import web

from sender.testing.receiver import ReceivedRequest, Receiver

__all__ = ["DEFAULT_FAULTS", "ChaosReceiver"]

DEFAULT_FAULTS: Mapping[str, float] = {
    "error": 0.25,
    "throttle": 0.15,
    "reset": 0.1,
    "partial_read": 0.1,
    "slow_body": 0.1,
    "partial_response": 0.1,
    "late_ok": 0.1,
    "hang": 0.1,
}


class ChaosReceiver(Receiver):
    """A ``Receiver`` whose requests fail at random: a share ``p`` of them, each with a fault
    drawn from ``faults`` (weights), by a generator seeded with ``seed``."""

    def __init__(
        self,
        *,
        p: float = 0.0,
        seed: int = 0,
        faults: Mapping[str, float] = DEFAULT_FAULTS,
        client_timeout_s: float = 0.5,
        retry_after_s: float = 0.05,
    ) -> None:
        super().__init__()
        self.client_timeout_s = client_timeout_s
        self.retry_after_s = retry_after_s
        self.faults: Counter[str] = Counter()  # faults served, by kind
        self._drawn: dict[int, str | None] = {}  # the fault of each request being answered
        self._base_s = 0.0
        self._per_in_flight_s = 0.0
        self.chaos(p, seed, faults)

    def chaos(self, p: float, seed: int = 0, faults: Mapping[str, float] = DEFAULT_FAULTS) -> None:
        """From now on, a share ``p`` of requests gets a fault drawn from ``faults``."""
        unknown = set(faults) - set(DEFAULT_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self._p = p
        self._rng = random.Random(seed)
        self._kinds = list(faults)
        self._weights = [faults[k] for k in self._kinds]

    def latency(self, base_s: float, per_in_flight_s: float = 0.0) -> None:
        """Answer after ``base_s + per_in_flight_s * requests in flight``."""
        self._base_s = base_s
        self._per_in_flight_s = per_in_flight_s

    def _draw(self) -> str | None:
        if self._p <= 0 or self._rng.random() >= self._p:
            return None
        return self._rng.choices(self._kinds, self._weights)[0]

    async def _hold(self, seconds: float) -> None:
        # released early by stop(), so that a held request never delays shutdown
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        fault = self._draw()
        if fault is not None:
            self.faults[fault] += 1
        if fault == "partial_read":
            await request.content.read(256)
            _drop(request)
        self._drawn[id(request)] = fault
        try:
            return await super()._answer(request)
        finally:
            self._drawn.pop(id(request), None)

    async def _respond(  # type: ignore[override]
        self, request: web.Request, received: ReceivedRequest
    ) -> web.StreamResponse:
        delay = self._base_s + self._per_in_flight_s * self.in_flight
        if delay > 0:
            await self._hold(delay)
        fault = self._drawn.get(id(request))
        late = self.client_timeout_s + 0.15
        if fault == "error":
            return self._status(received, self._rng.choice((500, 502, 504)))
        if fault == "throttle":
            status = self._rng.choice((429, 503))
            return self._status(received, status, {"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "reset":
            _drop(request)
        if fault == "hang":
            await self._hold(late)
            return self._status(received, 503)
        if fault == "late_ok":
            await self._hold(late)
        response = await super()._respond(request, received)
        if fault not in ("slow_body", "partial_response") or response.status != 200:
            return response
        body = response.body if isinstance(response.body, bytes) else b""
        stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if fault == "slow_body":
            stream.content_length = len(body)
            await stream.prepare(request)
            pause = self.client_timeout_s / 4 / max(1, len(body) // 4)
            for start in range(0, len(body), 4):
                await stream.write(body[start : start + 4])
                await self._hold(pause)
            return stream
        stream.content_length = len(body) + 100
        await stream.prepare(request)
        await stream.write(body[:5])
        _drop(request)
        raise AssertionError("unreachable")

    @staticmethod
    def _status(
        received: ReceivedRequest, status: int, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        received.status_returned = status
        return web.Response(status=status, body=b"chaos", headers=headers)


def _drop(request: web.Request) -> None:
    """Reset the connection: the client sees it die without (the rest of) an answer."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
