"""Prometheus metrics: a real batch moves the counters, the control server serves them, and
no metrics failure ever reaches delivery."""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sender import __version__
from sender.app import App
from sender.config import AppConfig
from sender.control import ControlServer
from sender.errors import AdapterClosed, LedgerError, PermanentError, RetryableError
from sender.hooks import Hooks, MultiHooks
from sender.metered_ledger import metered
from sender.metrics import Metrics, status_class
from sender.model import BatchState, EncodedChunk, Receipt, TriggerMessage
from sender.ports import Ledger
from sender.testing.receiver import Receiver
from sender_adapters.http import HttpDestination
from sender_adapters.memory import MemoryLedger
from tests.batches import write_batch

FAST_RETRY = '{ attempts = 2, initial = "5ms", max = "10ms", budget = "5s" }'


@pytest.fixture
def metrics() -> Metrics:
    """Metrics of their own, as the wiring builds them: nothing shared between tests."""
    return Metrics(CollectorRegistry())


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """The current value of one sample (0 when the series does not exist yet)."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


def config_text(url: str, route: str, dataset: str, on_bad_record: str = "dead_letter") -> str:
    return f"""
        [daemon]
        ledger = "ledger.db"

        [destinations.api]
        type = "http"
        url = "{url}"
        compression = "zstd"
        timeout = "2s"
        retry = {FAST_RETRY}

        [destinations.backup]
        type = "local"
        path = "backup"
        compression = "gzip"

        [destinations.dead]
        type = "local"
        path = "dead"

        [routes.{route}]
        datasets = ["{dataset}"]
        chunk = {{ records = 1000 }}
        targets = ["api", "backup"]
        dead_letter = "dead"
        on_bad_record = "{on_bad_record}"
        """


async def test_a_batch_moves_the_counters_with_route_target_and_outcome_labels(
    tmp_path: Path,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    metrics: Metrics,
) -> None:
    route, dataset = "metrics_main", "metrics_main_ds"
    config = write_config(config_text(receiver.url + "/scores", route, dataset))
    batch = write_batch(tmp_path / "batch", 3000)
    # the API keeps failing chunk 2: after its retries it falls back to the backup folder
    receiver.fail_where(lambda request: request.headers["X-Sender-Chunk"] == "2", status=503)
    labels = {"route": route}

    async with App(config, hooks=metrics.hooks(), metrics=metrics) as app:
        message = TriggerMessage(batch_id="metrics-b-1", dataset=dataset, uri=str(batch))
        outcome = await app.engine.run_batch(message)

    def sample(name: str, **labels: str) -> float:
        return value(metrics, name, **labels)

    assert outcome.state is BatchState.COMPLETE
    api = sample("sender_records_total", **labels, target="api", outcome="delivered")
    backup = sample("sender_records_total", **labels, target="backup", outcome="delivered")
    assert api == 2000
    assert backup == 1000
    assert sample("sender_records_read_total", dataset=dataset) == 3000
    assert sample("sender_read_bytes_total", dataset=dataset) > 3000 * 100
    assert sample("sender_fallbacks_total", route=route, from_target="api") == 1
    assert sample("sender_chunks_total", **labels, target="api", outcome="delivered") >= 2
    raw = sample("sender_raw_bytes_total", **labels, target="api", outcome="delivered")
    wire = sample("sender_wire_bytes_total", **labels, target="api", outcome="delivered")
    assert 0 < wire < raw  # zstd on the wire
    assert sample("sender_batches_total", dataset=dataset, state="complete") == 1
    assert sample("sender_batch_duration_seconds_count", dataset=dataset, state="complete") == 1
    assert sample("sender_batches_in_flight") == 0
    # from the target's policies: chunk 2 was tried twice (one retry), both answered 503
    assert sample("sender_retries_total", target="api") == 1
    assert sample("sender_requests_total", target="api", status_class="5xx") == 2

    text = generate_latest(metrics.registry).decode()
    assert "metrics-b-1" not in text  # never a batch id as a label
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {
        (s.labels["target"], s.labels["outcome"]): s.value
        for s in families["sender_records"].samples
        if s.name == "sender_records_total" and s.labels["route"] == route
    }
    assert samples[("api", "delivered")] == api
    assert samples[("backup", "delivered")] == backup


async def test_skipped_bad_records_count_as_rejected(
    tmp_path: Path,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    metrics: Metrics,
) -> None:
    route, dataset = "metrics_bad", "metrics_bad_ds"
    config = write_config(
        config_text(receiver.url + "/scores", route, dataset, on_bad_record="skip")
    )
    batch = write_batch(tmp_path / "batch", 10, parts=1)
    with next(batch.glob("part-*")).open("ab") as part:
        part.write(b"{not json\n{neither\n")

    async with App(config, hooks=metrics.hooks(), metrics=metrics) as app:
        message = TriggerMessage(batch_id="metrics-bad-1", dataset=dataset, uri=str(batch))
        await app.engine.run_batch(message)

    rejected = value(
        metrics, "sender_records_total", route=route, target="none", outcome="rejected"
    )
    assert rejected == 2
    delivered = {"route": route, "target": "api", "outcome": "delivered"}
    assert value(metrics, "sender_records_total", **delivered) == 10


def chunk(key: str = "k-1") -> EncodedChunk:
    return EncodedChunk(
        batch_id="metrics-req",
        dataset="d",
        route="r",
        chunk_id="0",
        records=1,
        format="ndjson",
        codec="none",
        payload=b'{"id": 1}\n',
        raw_size=10,
        idempotency_key=key,
    )


async def test_timed_delivery_records_status_classes_and_latency(
    receiver: Receiver, closed_port_url: str, metrics: Metrics
) -> None:
    target = "metrics_timed"
    options = HttpDestination.Options(type="http", url=receiver.url + "/in", timeout="2s")
    down_options = HttpDestination.Options(type="http", url=closed_port_url, timeout="2s")
    receiver.fail_next(1, status=503)
    async with (
        HttpDestination(target, options) as api,
        HttpDestination(target, down_options) as down,
    ):
        with pytest.raises(RetryableError):
            await metrics.timed_delivery(target, api.deliver(chunk()))
        receipt = await metrics.timed_delivery(target, api.deliver(chunk()))
        with pytest.raises(RetryableError):
            await metrics.timed_delivery(target, down.deliver(chunk()))

    assert receipt.status == 200
    assert value(metrics, "sender_requests_total", target=target, status_class="5xx") == 1
    assert value(metrics, "sender_requests_total", target=target, status_class="2xx") == 1
    assert value(metrics, "sender_requests_total", target=target, status_class="error") == 1
    assert value(metrics, "sender_request_duration_seconds_count", target=target) == 3
    assert value(metrics, "sender_request_duration_seconds_sum", target=target) > 0
    assert value(metrics, "sender_requests_in_flight", target=target) == 0


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (204, "2xx"),
        (Receipt("http://x", status=201), "2xx"),
        (Receipt("file:///x"), "ok"),
        (PermanentError("HTTP 422: bad", status=422), "4xx"),
        (RetryableError("HTTP 503: busy", status=503), "5xx"),
        (RetryableError("HTTP 429", status=429), "4xx"),
        (RetryableError("timeout after 30s", push_back=True), "error"),
        (RuntimeError("boom"), "error"),
        # a third-party destination words its errors its own way: the fields decide
        (RetryableError("partner API is overloaded, try later", status=503), "5xx"),
        (PermanentError("Anfrage abgelehnt", status=400), "4xx"),
        # and wording alone is no status: nothing in the core reads the message
        (RetryableError("HTTP 503: busy"), "error"),
    ],
)
def test_status_class_of_an_outcome_comes_from_its_fields(outcome: object, expected: str) -> None:
    assert status_class(outcome) == expected


def test_direct_calls_move_their_metrics(metrics: Metrics) -> None:
    target = "metrics_direct"
    metrics.retry(target)
    metrics.retry(target)
    metrics.breaker_state(target, "open")
    assert value(metrics, "sender_circuit_state", target=target) == 2
    metrics.breaker_state(target, "half_open")
    assert value(metrics, "sender_circuit_state", target=target) == 1
    metrics.breaker_state(target, "closed")
    metrics.rate_limit_wait(target, 0.25)
    metrics.concurrency(target, 6)
    metrics.request(target, "4xx", 0.01)
    metrics.trigger_message("duplicate")
    metrics.ledger_error("save_chunks")

    assert value(metrics, "sender_retries_total", target=target) == 2
    assert value(metrics, "sender_circuit_state", target=target) == 0
    assert value(metrics, "sender_rate_limit_waits_total", target=target) == 1
    assert value(metrics, "sender_rate_limit_wait_seconds_total", target=target) == 0.25
    assert value(metrics, "sender_concurrency_limit", target=target) == 6
    assert value(metrics, "sender_requests_total", target=target, status_class="4xx") == 1
    assert value(metrics, "sender_trigger_messages_total", outcome="duplicate") == 1
    assert value(metrics, "sender_ledger_errors_total", operation="save_chunks") == 1


def test_build_info_names_the_version(metrics: Metrics) -> None:
    labels = {
        "version": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }

    assert value(metrics, "sender_build_info", **labels) == 1


def test_importing_the_sender_registers_no_global_collector() -> None:
    import sender.app
    import sender.cli
    import sender.daemon
    import sender.metrics  # noqa: F401

    Metrics(CollectorRegistry())  # built on a registry of its own: not the global one

    assert "sender_" not in generate_latest(REGISTRY).decode()


def test_two_metrics_objects_count_apart() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())

    first.retry("api")

    assert value(first, "sender_retries_total", target="api") == 1
    assert value(second, "sender_retries_total", target="api") == 0


def test_a_failing_metrics_call_never_raises(metrics: Metrics) -> None:
    metrics.breaker_state("metrics_bad_input", "exploded")  # unknown state
    metrics.chunk_done("r", "t", "delivered", -5, 0, 0)  # counters refuse to go down
    metrics.rate_limit_wait("metrics_bad_input", float("nan"))
    hooks = metrics.hooks()
    hooks.records_read("never-started", -1, 0)
    hooks.batch_finished("never-started", "complete", -3.0)

    assert value(metrics, "sender_batches_in_flight") == 0


def test_metrics_hooks_survive_inside_multihooks(metrics: Metrics) -> None:
    calls: list[str] = []

    class Recorder(Hooks):
        def fallback(self, route: str, from_target: str, error: str) -> None:
            calls.append(route)
            raise RuntimeError("a broken hook beside the metrics")

    hooks = MultiHooks([Recorder(), metrics.hooks()])
    hooks.fallback("metrics_multi", "api", "HTTP 503")

    assert calls == ["metrics_multi"]
    assert value(metrics, "sender_fallbacks_total", route="metrics_multi", from_target="api") == 1


async def test_metered_ledger_reports_ledger_errors_and_passes_results(metrics: Metrics) -> None:
    inner = MemoryLedger()
    ledger = metered(inner, on_error=metrics.ledger_error)
    async with ledger:
        assert isinstance(ledger, Ledger)
        assert await ledger.get_batch("nope") is None
        with pytest.raises(LedgerError):
            await ledger.finish_batch("nope", BatchState.COMPLETE, {})

    assert value(metrics, "sender_ledger_errors_total", operation="finish_batch") == 1
    with pytest.raises(AdapterClosed):  # closed with the wrapper
        await inner.ping()


async def test_control_server_serves_the_metrics() -> None:
    async def ready() -> list[str]:
        return []

    metrics = Metrics(CollectorRegistry())
    metrics.trigger_message("received")
    server = ControlServer(MemoryLedger(), readiness=ready, registry=metrics.registry)
    port = await server.start("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            body = await response.text()
            content_type = response.headers["Content-Type"]
    finally:
        await server.stop()

    assert response.status == 200
    assert content_type.startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(body)}
    assert {"sender_trigger_messages", "sender_build_info", "sender_records"} <= families
    received = [
        s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "sender_trigger_messages_total" and s.labels == {"outcome": "received"}
    ]
    assert received == [1.0]


async def test_a_running_daemon_serves_counters_that_move(
    tmp_path: Path, receiver: Receiver
) -> None:
    from tests.brokers import running_daemon, write_daemon_config

    config = write_daemon_config(
        tmp_path,
        receiver=receiver.url,
        trigger='type = "spool"\npath = "queue"',
        listen="127.0.0.1:0",
    )
    batch = write_batch(tmp_path / "lake" / "metrics-daemon-1", 20, parts=2)
    message = TriggerMessage(batch_id="metrics-daemon-1", dataset="churn", uri=str(batch))

    async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as response,
        ):
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    delivered = (
        "sender_records_total",
        (("outcome", "delivered"), ("route", "churn"), ("target", "api")),
    )
    acked = ("sender_trigger_messages_total", (("outcome", "acked"),))
    async with running_daemon(config) as daemon:
        assert daemon.control is not None and daemon.control.port is not None
        before = await scrape(daemon.control.port)
        await daemon.trigger.publish(message)
        await asyncio.wait_for(daemon.wait_settled(1), 30)
        after = await scrape(daemon.control.port)

    assert after.get(delivered, 0) - before.get(delivered, 0) == 20
    assert after.get(acked, 0) - before.get(acked, 0) == 1
    # what the default registry served before the metrics had a registry of their own
    names = {name for name, _ in after}
    assert {
        "python_info",
        "process_resident_memory_bytes",
        "python_gc_objects_collected_total",
    } <= names
