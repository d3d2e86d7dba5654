"""Prometheus metrics (``sender_*``) as an object: ``Metrics(registry)`` registers every
collector on the ``CollectorRegistry`` it is given, and nothing is registered at import.

The wiring builds one per process (the daemon, ``sender send``, ``sender replay``; tests build
their own) and hands it to what reports: the ``App`` gives it to every ``Target``, the daemon
counts trigger messages with it, the control server serves its registry on ``GET /metrics``.
Labels stay low-cardinality: dataset, route, target, outcome, status class, state — never a
batch id, chunk id or URL, which would make a new series per batch and exhaust Prometheus.

Two ways in:

- ``metrics.hooks()`` (a ``sender.hooks.Hooks``): what the engine already reports — records
  and bytes read, chunk outcomes with raw and wire bytes, fallbacks, batch duration::

      metrics = Metrics(CollectorRegistry())
      app = App(config, hooks=MultiHooks([metrics.hooks(), progress]), metrics=metrics)

- methods for what only other parts see: ``request(target, status_class, seconds)`` (or
  ``timed_delivery`` around ``destination.deliver``), ``retry(target)``,
  ``breaker_state(target, state)``, ``rate_limit_wait(target, seconds)``,
  ``concurrency(target, limit)``, ``trigger_message(outcome)``, ``ledger_error(operation)``.

Monitoring never breaks delivery: every method catches its own errors, logs them once per
method, and returns normally.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from . import __version__
from .errors import DeliveryError
from .hooks import Hooks
from .log import get_logger
from .model import Receipt

__all__ = ["BREAKER_STATES", "Metrics", "MetricsHooks", "process_registry", "status_class"]

log = get_logger("sender.metrics")

_P = ParamSpec("_P")
_T = TypeVar("_T")
_M = TypeVar("_M", bound="Metrics")

# Request latency: loopback receivers answer in milliseconds, slow partner APIs in tens of
# seconds (the default destination timeout is 30 s).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Batch duration: a small batch takes a second, a big one with retries an hour or more.
_BATCH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


def process_registry() -> CollectorRegistry:
    """A registry holding what prometheus-client's default one serves besides our metrics:
    the process (CPU, memory, open files), platform (``python_info``) and GC collectors. The
    daemon's ``/metrics`` is built on it, so it shows what it showed on the default registry.
    (Those collectors are prometheus-client's own, registered on its registry when it is
    imported: adding them here registers nothing globally.)"""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def status_class(outcome: object) -> str:
    """The status class of an attempt's outcome: ``"2xx"``..``"5xx"``, or ``"error"``.

    ``outcome`` is an HTTP status (int), a ``Receipt`` (its ``status``; a receipt without one
    is a success: ``"ok"``), or the exception a destination raised (a ``DeliveryError``'s
    ``status``; no status, or any other exception, is ``"error"``: no answer at all). Only
    the fields count, never the wording of a message.
    """
    status: int | None = None
    if isinstance(outcome, int):
        status = outcome
    elif isinstance(outcome, (Receipt, DeliveryError)):
        status = outcome.status
    if status is not None and 100 <= status < 600:
        return f"{status // 100}xx"
    if isinstance(outcome, BaseException):
        return "error"
    return "ok"


def _safe(fn: Callable[Concatenate[_M, _P], None]) -> Callable[Concatenate[_M, _P], None]:
    """Never raise out of a metrics call; warn once per method so a bug is still seen."""

    @functools.wraps(fn)
    def wrapper(self: _M, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            fn(self, *args, **kwargs)
        except Exception:
            if fn.__name__ not in self._reported:
                self._reported.add(fn.__name__)
                log.warning("metrics.failed", function=fn.__name__, exc_info=True)

    return wrapper


def _label(value: object) -> str:
    return "none" if value is None else str(value)


class Metrics:
    """Every ``sender_*`` collector, registered on ``registry`` (one ``Metrics`` per
    registry: a second one on the same registry is refused by prometheus-client)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._reported: set[str] = set()
        r = registry
        self._build = Info(
            "sender_build", "Version of integration-sender and of Python.", registry=r
        )
        self._records_read = Counter(
            "sender_records_read_total", "Records read from batch sources.", ["dataset"], registry=r
        )
        self._bytes_read = Counter(
            "sender_read_bytes_total",
            "Bytes of records read from batch sources.",
            ["dataset"],
            registry=r,
        )
        outcome = ["route", "target", "outcome"]
        self._records = Counter(
            "sender_records_total",
            "Records by final outcome: delivered, dead_lettered, rejected (bad input) or failed "
            "(the dead-letter store itself failed; resent later).",
            outcome,
            registry=r,
        )
        self._chunks = Counter(
            "sender_chunks_total", "Chunks by final outcome.", outcome, registry=r
        )
        self._raw_bytes = Counter(
            "sender_raw_bytes_total",
            "Bytes of chunks before encoding and compression, by outcome.",
            outcome,
            registry=r,
        )
        self._wire_bytes = Counter(
            "sender_wire_bytes_total",
            "Bytes of chunks as sent (encoded and compressed), by outcome.",
            outcome,
            registry=r,
        )
        self._requests = Counter(
            "sender_requests_total",
            "Delivery attempts by the answer's status class: 2xx..5xx for HTTP answers, 'ok' "
            "for a success without an HTTP status (a file written), 'error' for no answer at "
            "all (connection refused, reset, timeout).",
            ["target", "status_class"],
            registry=r,
        )
        self._request_seconds = Histogram(
            "sender_request_duration_seconds",
            "Time of one delivery attempt.",
            ["target"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._requests_in_flight = Gauge(
            "sender_requests_in_flight", "Delivery attempts under way.", ["target"], registry=r
        )
        self._concurrency = Gauge(
            "sender_concurrency_limit",
            "Deliveries a target may have in flight at once.",
            ["target"],
            registry=r,
        )
        self._retries = Counter(
            "sender_retries_total",
            "Retries scheduled after a failed attempt.",
            ["target"],
            registry=r,
        )
        self._fallbacks = Counter(
            "sender_fallbacks_total",
            "Chunks passed on to the next target after a target failed.",
            ["route", "from_target"],
            registry=r,
        )
        self._gone = Counter(
            "sender_destination_gone_total",
            "Destinations disabled for the rest of the process because their receiver answered "
            "410 Gone (at most 1 per target).",
            ["target"],
            registry=r,
        )
        self._breaker = Gauge(
            "sender_circuit_state",
            "Circuit breaker of a target: 0 closed, 1 half-open, 2 open.",
            ["target"],
            registry=r,
        )
        self._rate_limit_waits = Counter(
            "sender_rate_limit_waits_total",
            "Deliveries that waited for the rate limit.",
            ["target"],
            registry=r,
        )
        self._rate_limit_seconds = Counter(
            "sender_rate_limit_wait_seconds_total",
            "Time spent waiting for the rate limit.",
            ["target"],
            registry=r,
        )
        self._batches = Counter(
            "sender_batches_total", "Batches finished, by state.", ["dataset", "state"], registry=r
        )
        self._batches_in_flight = Gauge(
            "sender_batches_in_flight", "Batches being sent.", registry=r
        )
        self._batch_seconds = Histogram(
            "sender_batch_duration_seconds",
            "Time to run a batch, by final state.",
            ["dataset", "state"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self._trigger_messages = Counter(
            "sender_trigger_messages_total",
            "Trigger messages: received, acked, rejected, released (given back), duplicate.",
            ["outcome"],
            registry=r,
        )
        self._ledger_errors = Counter(
            "sender_ledger_errors_total", "Ledger calls that failed.", ["operation"], registry=r
        )
        self._build_info()

    def hooks(self) -> MetricsHooks:
        """The engine's hooks that feed these metrics (one per engine)."""
        return MetricsHooks(self)

    # -- calls for the rest of the core -------------------------------------------------------

    @_safe
    def request(self, target: str, status_class: str, seconds: float) -> None:
        """One delivery attempt to ``target`` ended with ``status_class`` after ``seconds``."""
        self._requests.labels(target, status_class).inc()
        self._request_seconds.labels(target).observe(max(0.0, seconds))

    async def timed_delivery(self, target: str, attempt: Awaitable[_T]) -> _T:
        """Await one delivery attempt (``destination.deliver(chunk)``) and record it:
        in-flight gauge, latency and status class. The attempt's result or error passes
        through untouched::

            receipt = await metrics.timed_delivery(self.name, self.destination.deliver(chunk))
        """
        self._in_flight(target, 1)
        started = time.monotonic()
        try:
            result = await attempt
        except BaseException as exc:
            self.request(target, status_class(exc), time.monotonic() - started)
            raise
        finally:
            self._in_flight(target, -1)
        self.request(target, status_class(result), time.monotonic() - started)
        return result

    @_safe
    def _in_flight(self, target: str, delta: int) -> None:
        self._requests_in_flight.labels(target).inc(delta)

    @_safe
    def retry(self, target: str) -> None:
        """A failed attempt on ``target`` will be retried (call it from ``on_retry``)."""
        self._retries.labels(target).inc()

    @_safe
    def destination_gone(self, target: str) -> None:
        """``target`` answered 410 Gone: it is disabled until the process restarts."""
        self._gone.labels(target).inc()

    @_safe
    def breaker_state(self, target: str, state: str) -> None:
        """The circuit of ``target`` is now ``"closed"``, ``"half_open"`` or ``"open"``."""
        self._breaker.labels(target).set(BREAKER_STATES[str(state).lower()])

    @_safe
    def rate_limit_wait(self, target: str, seconds: float) -> None:
        """A delivery to ``target`` waited ``seconds`` for its rate limit."""
        self._rate_limit_waits.labels(target).inc()
        self._rate_limit_seconds.labels(target).inc(max(0.0, seconds))

    @_safe
    def concurrency(self, target: str, limit: int) -> None:
        """``target`` may now have ``limit`` deliveries in flight (fixed, or adaptive's)."""
        self._concurrency.labels(target).set(limit)

    @_safe
    def trigger_message(self, outcome: str) -> None:
        """A trigger message was ``received``, ``acked``, ``rejected``, ``released`` or was a
        ``duplicate``."""
        self._trigger_messages.labels(outcome).inc()

    @_safe
    def ledger_error(self, operation: str) -> None:
        """A ledger call (``save_chunks``, ``acquire_lease``...) raised ``LedgerError``."""
        self._ledger_errors.labels(operation).inc()

    @_safe
    def chunk_done(
        self,
        route: str,
        target: str | None,
        outcome: str,
        records: int,
        raw_size: int,
        wire_size: int,
    ) -> None:
        """A chunk reached ``outcome`` (delivered, dead_lettered, rejected, failed) on
        ``target``."""
        labels = (route, _label(target), outcome)
        self._chunks.labels(*labels).inc()
        self._records.labels(*labels).inc(records)
        self._raw_bytes.labels(*labels).inc(raw_size)
        self._wire_bytes.labels(*labels).inc(wire_size)

    # -- what the hooks report ------------------------------------------------------------------

    @_safe
    def records_read(self, dataset: str, count: int, size: int) -> None:
        self._records_read.labels(dataset).inc(count)
        self._bytes_read.labels(dataset).inc(size)

    @_safe
    def fallback(self, route: str, from_target: str) -> None:
        self._fallbacks.labels(route, from_target).inc()

    @_safe
    def batches_in_flight(self, delta: int) -> None:
        self._batches_in_flight.inc(delta)

    @_safe
    def batch_finished(self, dataset: str, state: str, duration_s: float) -> None:
        self._batches.labels(dataset, state).inc()
        self._batch_seconds.labels(dataset, state).observe(max(0.0, duration_s))

    @_safe
    def _build_info(self) -> None:
        self._build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
            }
        )


class MetricsHooks(Hooks):
    """The engine's hooks as ``metrics``. One instance serves every batch of an engine;
    combine it with other hooks through ``MultiHooks``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # batch id -> dataset, only while the batch runs: records_read and batch_finished
        # carry the batch id, but the label is the dataset
        self._datasets: dict[str, str] = {}

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None:
        if batch_id not in self._datasets:
            self.metrics.batches_in_flight(1)
        self._datasets[batch_id] = dataset

    def records_read(self, batch_id: str, count: int, size: int) -> None:
        self.metrics.records_read(self._datasets.get(batch_id, "unknown"), count, size)

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
        self.metrics.chunk_done(route, target, outcome, records, raw_size, wire_size)

    def fallback(self, route: str, from_target: str, error: str) -> None:
        self.metrics.fallback(route, from_target)

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        dataset = self._datasets.pop(batch_id, None)
        if dataset is not None:
            self.metrics.batches_in_flight(-1)
        self.metrics.batch_finished(dataset or "unknown", state, duration_s)
