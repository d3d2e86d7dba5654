"""Prometheus metrics (``sender_*``), fed by hooks and by a few calls from the core.

Everything lands in prometheus-client's default ``REGISTRY``, which the control server
serves on ``GET /metrics``. Labels stay low-cardinality: dataset, route, target, outcome,
status class, state — never a batch id, chunk id or URL, which would make a new series per
batch and exhaust Prometheus.

Two ways in:

- ``MetricsHooks`` (a ``sender.hooks.Hooks``): what the engine already reports — records and
  bytes read, chunk outcomes with raw and wire bytes, fallbacks, batch duration::

      app = App(config, hooks=MultiHooks([MetricsHooks(), progress]))

- module functions for what only other parts see: ``request(target, status_class, seconds)``
  (or ``timed_delivery`` around ``destination.deliver``), ``retry(target)``,
  ``breaker_state(target, state)``, ``rate_limit_wait(target, seconds)``,
  ``concurrency(target, limit)``, ``chunk_in_flight(route)`` (a ``with`` block),
  ``trigger_message(outcome)``, ``ledger_error(operation)`` (or ``MeteredLedger`` around a
  ledger).

Monitoring never breaks delivery: every function here catches its own errors, logs them once
per function, and returns normally.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import platform
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Gauge, Histogram, Info

from . import __version__
from .errors import LedgerError
from .hooks import Hooks
from .log import get_logger

__all__ = [
    "BREAKER_STATES",
    "MeteredLedger",
    "MetricsHooks",
    "breaker_state",
    "chunk_done",
    "chunk_in_flight",
    "concurrency",
    "ledger_error",
    "rate_limit_wait",
    "records_rejected",
    "request",
    "retry",
    "status_class",
    "timed_delivery",
    "trigger_message",
]

log = get_logger("sender.metrics")

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Request latency: loopback receivers answer in milliseconds, slow partner APIs in tens of
# seconds (the default destination timeout is 30 s).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Batch duration: a small batch takes a second, a big one with retries an hour or more.
_BATCH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

# -- the metrics -----------------------------------------------------------------------------

BUILD = Info("sender_build", "Version of integration-sender and of Python.")
RECORDS_READ = Counter("sender_records_read_total", "Records read from batch sources.", ["dataset"])
BYTES_READ = Counter(
    "sender_read_bytes_total", "Bytes of records read from batch sources.", ["dataset"]
)
RECORDS = Counter(
    "sender_records_total",
    "Records by final outcome: delivered, dead_lettered, rejected (bad input) or failed "
    "(the dead-letter store itself failed; resent later).",
    ["route", "target", "outcome"],
)
CHUNKS = Counter("sender_chunks_total", "Chunks by final outcome.", ["route", "target", "outcome"])
RAW_BYTES = Counter(
    "sender_raw_bytes_total",
    "Bytes of chunks before encoding and compression, by outcome.",
    ["route", "target", "outcome"],
)
WIRE_BYTES = Counter(
    "sender_wire_bytes_total",
    "Bytes of chunks as sent (encoded and compressed), by outcome.",
    ["route", "target", "outcome"],
)
REQUESTS = Counter(
    "sender_requests_total",
    "Delivery attempts by the answer's status class: 2xx..5xx for HTTP answers, 'ok' for a "
    "success without an HTTP status (a file written), 'error' for no answer at all "
    "(connection refused, reset, timeout).",
    ["target", "status_class"],
)
REQUEST_SECONDS = Histogram(
    "sender_request_duration_seconds",
    "Time of one delivery attempt.",
    ["target"],
    buckets=_LATENCY_BUCKETS,
)
REQUESTS_IN_FLIGHT = Gauge("sender_requests_in_flight", "Delivery attempts under way.", ["target"])
CHUNKS_IN_FLIGHT = Gauge(
    "sender_chunks_in_flight",
    "Chunks being delivered (encoding, waiting for a slot, sending or backing off).",
    ["route"],
)
CONCURRENCY = Gauge(
    "sender_concurrency_limit", "Deliveries a target may have in flight at once.", ["target"]
)
RETRIES = Counter("sender_retries_total", "Retries scheduled after a failed attempt.", ["target"])
FALLBACKS = Counter(
    "sender_fallbacks_total",
    "Chunks passed on to the next target after a target failed.",
    ["route", "from_target"],
)
BREAKER = Gauge(
    "sender_circuit_state",
    "Circuit breaker of a target: 0 closed, 1 half-open, 2 open.",
    ["target"],
)
RATE_LIMIT_WAITS = Counter(
    "sender_rate_limit_waits_total", "Deliveries that waited for the rate limit.", ["target"]
)
RATE_LIMIT_SECONDS = Counter(
    "sender_rate_limit_wait_seconds_total", "Time spent waiting for the rate limit.", ["target"]
)
BATCHES = Counter("sender_batches_total", "Batches finished, by state.", ["dataset", "state"])
BATCHES_IN_FLIGHT = Gauge("sender_batches_in_flight", "Batches being sent.")
BATCH_SECONDS = Histogram(
    "sender_batch_duration_seconds",
    "Time to run a batch, by final state.",
    ["dataset", "state"],
    buckets=_BATCH_BUCKETS,
)
TRIGGER_MESSAGES = Counter(
    "sender_trigger_messages_total",
    "Trigger messages: received, acked, rejected, released (given back), duplicate.",
    ["outcome"],
)
LEDGER_ERRORS = Counter("sender_ledger_errors_total", "Ledger calls that failed.", ["operation"])

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}

# -- failure-proofing -------------------------------------------------------------------------

_reported: set[str] = set()


def _safe(fn: Callable[_P, None]) -> Callable[_P, None]:
    """Never raise out of a metrics call; warn once per function so a bug is still seen."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            if fn.__name__ not in _reported:
                _reported.add(fn.__name__)
                log.warning("metrics.failed", function=fn.__name__, exc_info=True)

    return wrapper


def _label(value: object) -> str:
    return "none" if value is None else str(value)


_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def status_class(outcome: object) -> str:
    """The status class of an attempt's outcome: ``"2xx"``..``"5xx"``, or ``"error"``.

    ``outcome`` is an HTTP status (int), a ``Receipt`` (its ``status``; a receipt without one
    is a success: ``"ok"``), or the exception a destination raised (its ``status`` attribute,
    else an ``HTTP nnn`` in its message, else ``"error"``: no answer at all).
    """
    status: Any = outcome if isinstance(outcome, int) else getattr(outcome, "status", None)
    if status is None and isinstance(outcome, BaseException):
        match = _HTTP_STATUS.search(str(outcome))
        status = int(match.group(1)) if match else None
    if isinstance(status, int) and 100 <= status < 600:
        return f"{status // 100}xx"
    if isinstance(outcome, BaseException):
        return "error"
    return "ok"


# -- calls for the rest of the core -----------------------------------------------------------


@_safe
def request(target: str, status_class: str, seconds: float) -> None:
    """One delivery attempt to ``target`` ended with ``status_class`` after ``seconds``."""
    REQUESTS.labels(target, status_class).inc()
    REQUEST_SECONDS.labels(target).observe(max(0.0, seconds))


async def timed_delivery(target: str, attempt: Awaitable[_T]) -> _T:
    """Await one delivery attempt (``destination.deliver(chunk)``) and record it: in-flight
    gauge, latency and status class. The attempt's result or error passes through untouched::

        receipt = await metrics.timed_delivery(self.name, self.destination.deliver(chunk))
    """
    _in_flight(target, 1)
    started = time.monotonic()
    try:
        result = await attempt
    except BaseException as exc:
        request(target, status_class(exc), time.monotonic() - started)
        raise
    finally:
        _in_flight(target, -1)
    request(target, status_class(result), time.monotonic() - started)
    return result


@_safe
def _in_flight(target: str, delta: int) -> None:
    REQUESTS_IN_FLIGHT.labels(target).inc(delta)


@contextlib.contextmanager
def chunk_in_flight(route: str) -> Iterator[None]:
    """Count a chunk of ``route`` as in flight for the ``with`` block::

    with metrics.chunk_in_flight(run.name):
        record, wire_size = await self._deliver_chunk(...)
    """
    _chunks_in_flight(route, 1)
    try:
        yield
    finally:
        _chunks_in_flight(route, -1)


@_safe
def _chunks_in_flight(route: str, delta: int) -> None:
    CHUNKS_IN_FLIGHT.labels(route).inc(delta)


@_safe
def retry(target: str) -> None:
    """A failed attempt on ``target`` will be retried (call it from ``on_retry``)."""
    RETRIES.labels(target).inc()


@_safe
def breaker_state(target: str, state: str) -> None:
    """The circuit of ``target`` is now ``"closed"``, ``"half_open"`` or ``"open"``."""
    BREAKER.labels(target).set(BREAKER_STATES[str(state).lower()])


@_safe
def rate_limit_wait(target: str, seconds: float) -> None:
    """A delivery to ``target`` waited ``seconds`` for its rate limit."""
    RATE_LIMIT_WAITS.labels(target).inc()
    RATE_LIMIT_SECONDS.labels(target).inc(max(0.0, seconds))


@_safe
def concurrency(target: str, limit: int) -> None:
    """``target`` may now have ``limit`` deliveries in flight (fixed, or adaptive's choice)."""
    CONCURRENCY.labels(target).set(limit)


@_safe
def trigger_message(outcome: str) -> None:
    """A trigger message was ``received``, ``acked``, ``rejected``, ``released`` or was a
    ``duplicate``."""
    TRIGGER_MESSAGES.labels(outcome).inc()


@_safe
def ledger_error(operation: str) -> None:
    """A ledger call (``save_chunks``, ``acquire_lease``...) raised ``LedgerError``."""
    LEDGER_ERRORS.labels(operation).inc()


@_safe
def chunk_done(
    route: str,
    target: str | None,
    outcome: str,
    records: int,
    raw_size: int,
    wire_size: int,
) -> None:
    """A chunk reached ``outcome`` (delivered, dead_lettered, rejected, failed) on ``target``."""
    labels = (route, _label(target), outcome)
    CHUNKS.labels(*labels).inc()
    RECORDS.labels(*labels).inc(records)
    RAW_BYTES.labels(*labels).inc(raw_size)
    WIRE_BYTES.labels(*labels).inc(wire_size)


@_safe
def records_rejected(route: str, target: str | None, count: int) -> None:
    """``count`` bad input records of ``route`` were stored in (or skipped by) ``target``."""
    RECORDS.labels(route, _label(target), "rejected").inc(count)


@_safe
def _build_info() -> None:
    BUILD.info(
        {
            "version": __version__,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
        }
    )


_build_info()


# -- hooks ------------------------------------------------------------------------------------


class MetricsHooks(Hooks):
    """The engine's hooks as Prometheus metrics. One instance serves every batch; combine it
    with other hooks through ``MultiHooks``."""

    def __init__(self) -> None:
        # batch id -> dataset, only while the batch runs: records_read and batch_finished
        # carry the batch id, but the label is the dataset
        self._datasets: dict[str, str] = {}
        self._started: set[str] = set()

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None:
        self._batch_started(batch_id, dataset)

    @_safe
    def _batch_started(self, batch_id: str, dataset: str) -> None:
        self._datasets[batch_id] = dataset
        if batch_id not in self._started:
            self._started.add(batch_id)
            BATCHES_IN_FLIGHT.inc()

    def records_read(self, batch_id: str, count: int, size: int) -> None:
        self._records_read(batch_id, count, size)

    @_safe
    def _records_read(self, batch_id: str, count: int, size: int) -> None:
        dataset = self._datasets.get(batch_id, "unknown")
        RECORDS_READ.labels(dataset).inc(count)
        BYTES_READ.labels(dataset).inc(size)

    def chunk_done(
        self,
        batch_id: str,
        route: str,
        state: str,
        target: str | None,
        records: int,
        raw_size: int,
        wire_size: int,
        kind: str = "data",
    ) -> None:
        # bad input records: "skipped" chunks always hold them; a dead-lettered one does when
        # the engine says kind="rejects"
        outcome = "rejected" if state == "skipped" or kind == "rejects" else str(state)
        chunk_done(route, target, outcome, records, raw_size, wire_size)

    def fallback(self, route: str, from_target: str, error: str) -> None:
        self._fallback(route, from_target)

    @_safe
    def _fallback(self, route: str, from_target: str) -> None:
        FALLBACKS.labels(route, from_target).inc()

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        self._batch_finished(batch_id, state, duration_s)

    @_safe
    def _batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        dataset = self._datasets.pop(batch_id, "unknown")
        if batch_id in self._started:
            self._started.discard(batch_id)
            BATCHES_IN_FLIGHT.dec()
        BATCHES.labels(dataset, state).inc()
        BATCH_SECONDS.labels(dataset, state).observe(max(0.0, duration_s))


# -- ledger errors ----------------------------------------------------------------------------


class MeteredLedger:
    """Wraps a ledger so that every ``LedgerError`` its methods raise is counted (by method
    name) in ``sender_ledger_errors_total``; everything else passes through::

        self.ledger = MeteredLedger(open_ledger(config.daemon.ledger))
    """

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def __repr__(self) -> str:
        return f"MeteredLedger({self._ledger!r})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            except LedgerError:
                ledger_error(name)
                raise

        return call

    async def __aenter__(self) -> MeteredLedger:
        await self._ledger.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._ledger.__aexit__(*exc)
