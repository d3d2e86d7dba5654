"""The engine end to end: local batches delivered to real receivers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from sender.app import App
from sender.config import AppConfig, load_config
from sender.daemon import Daemon
from sender.errors import LedgerError
from sender.hooks import Hooks, MultiHooks
from sender.metrics import Metrics
from sender.model import BatchState, ChunkState, TriggerMessage
from sender.ports import ChunkRecord
from sender.testing.receiver import Receiver
from sender_adapters.memory import MemoryTrigger
from tests.batches import prediction, write_batch
from tests.brokers import churn_batch, write_daemon_config

SPOOL = 'type = "spool"\npath = "queue"\npoll_s = "50ms"'

FAST_RETRY = '{ attempts = 3, initial = "5ms", max = "20ms", budget = "5s" }'


def config_text(
    primary: str,
    *,
    fallback: str | None = None,
    dead: str = "dead",
    chunk: str = "{ records = 1000 }",
    extra_route: str = "",
) -> str:
    targets = '["api", "backup"]' if fallback else '["api"]'
    backup = (
        f"""
        [destinations.backup]
        type = "http"
        url = "{fallback}"
        retry = {FAST_RETRY}
        """
        if fallback and fallback.startswith("http")
        else f"""
        [destinations.backup]
        type = "local"
        path = "{fallback}"
        """
        if fallback
        else ""
    )
    return f"""
        [daemon]
        ledger = "ledger.db"

        [destinations.api]
        type = "http"
        url = "{primary}"
        compression = "zstd"
        timeout = "2s"
        retry = {FAST_RETRY}
        {backup}
        [destinations.dead]
        type = "local"
        path = "{dead}"

        [routes.churn]
        datasets = ["churn"]
        chunk = {chunk}
        targets = {targets}
        dead_letter = "dead"
        {extra_route}
        """


def message(batch: Path, batch_id: str = "b-1", **extra: object) -> TriggerMessage:
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(batch), **extra)  # type: ignore[arg-type]


async def send(config: AppConfig, msg: TriggerMessage, **kwargs: object):  # type: ignore[no-untyped-def]
    async with App(config) as app:
        return await app.engine.run_batch(msg, **kwargs)  # type: ignore[arg-type]


def ids(records: list[dict[str, object]]) -> set[object]:
    return {r["id"] for r in records}


async def test_every_record_arrives_with_one_key_per_chunk(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 10_000)
    config = write_config(config_text(receiver.url + "/scores"))

    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert ids(receiver.records()) == {f"cust-{i:08d}" for i in range(10_000)}
    keys = [r.idempotency_key for r in receiver.accepted]
    assert len(keys) == 10 and len(set(keys)) == 10
    first = receiver.accepted[0]
    assert first.headers["Content-Encoding"] == "zstd"
    assert first.headers["Content-Type"] == "application/x-ndjson"
    assert first.headers["X-Sender-Batch"] == "b-1"
    routes = outcome.routes["churn"]
    assert (routes.read, routes.delivered, routes.chunks) == (10_000, 10_000, 10)


async def test_resent_chunks_carry_the_same_key_and_bytes(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 3000)
    config = write_config(config_text(receiver.url + "/scores"))
    receiver.fail_next(2, status=503)
    receiver.reset_next(1)

    outcome = await send(config, message(batch))

    assert outcome.ok
    by_key: dict[str, set[bytes]] = {}
    for request in receiver.requests:
        by_key.setdefault(request.idempotency_key or "", set()).add(request.body_raw)
    assert len(by_key) == 3
    assert all(len(bodies) == 1 for bodies in by_key.values())  # same bytes every time
    assert len(receiver.requests) >= 5
    assert len(receiver.unique_records()) == 3000


async def test_retry_after_is_waited_out(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 10, parts=1)
    config = write_config(config_text(receiver.url + "/scores"))
    receiver.fail_next(1, status=429, retry_after=1)

    outcome = await send(config, message(batch))

    assert outcome.ok
    first, second = receiver.requests
    assert second.received_at - first.received_at >= 0.95


async def test_dead_primary_sends_everything_to_the_fallback(
    tmp_path: Path,
    receiver: Receiver,
    backup_receiver: Receiver,
    write_config: Callable[[str], AppConfig],
) -> None:
    batch = write_batch(tmp_path / "batch", 5000)
    config = write_config(
        config_text(receiver.url + "/scores", fallback=backup_receiver.url + "/inbox")
    )
    receiver.fail_always(503)

    outcome = await send(config, message(batch))

    assert outcome.ok
    assert receiver.accepted == []
    assert ids(backup_receiver.records()) == {f"cust-{i:08d}" for i in range(5000)}
    async with App(config) as app:
        chunks = await app.ledger.chunks("b-1")
    assert {c.target for c in chunks} == {"backup"}
    assert all(c.attempts == 4 for c in chunks)  # 3 on the primary, 1 on the fallback
    # the fallback got the very key the primary was offered
    offered = {r.idempotency_key for r in receiver.requests}
    assert offered == {r.idempotency_key for r in backup_receiver.accepted}


async def test_dead_route_dead_letters_everything_with_the_reason(
    tmp_path: Path,
    receiver: Receiver,
    closed_port_url: str,
    write_config: Callable[[str], AppConfig],
) -> None:
    batch = write_batch(tmp_path / "batch", 2500)
    config = write_config(config_text(receiver.url + "/scores", fallback=closed_port_url))
    receiver.fail_always(500, body=b"database on fire")

    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.COMPLETE and not outcome.ok
    stats = outcome.routes["churn"]
    assert stats.dead_lettered == 2500 and stats.delivered == 0 and stats.reconciled
    files = sorted((tmp_path / "dead" / "churn" / "b-1" / "churn").glob("chunk-*.ndjson"))
    assert len(files) == 3
    lines = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
    assert [r["id"] for r in lines] == [f"cust-{i:08d}" for i in range(2500)]
    meta = orjson.loads(files[0].with_name(files[0].name + ".meta.json").read_bytes())
    assert "api: HTTP 500" in meta["error"] and "database on fire" in meta["error"]
    assert "backup:" in meta["error"]
    assert meta["idempotency_key"] in {r.idempotency_key for r in receiver.requests}
    assert meta["attempts"] == 6 and meta["targets"] == ["api", "backup"]  # 3 + 3


async def test_rerunning_a_complete_batch_sends_nothing(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 2000)
    config = write_config(config_text(receiver.url + "/scores"))
    await send(config, message(batch))
    sent = len(receiver.requests)

    again = await send(config, message(batch))

    assert again.already_complete and again.ok
    assert len(receiver.requests) == sent


class _StopAfter(Hooks):
    def __init__(self, chunks: int, stop: asyncio.Event) -> None:
        self.left = chunks
        self.stop = stop

    def chunk_done(self, *args: object, **kwargs: object) -> None:
        self.left -= 1
        if self.left <= 0:
            self.stop.set()


async def test_a_half_done_batch_resends_only_unfinished_chunks(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 20_000, parts=4)
    config = write_config(
        config_text(receiver.url + "/scores", chunk="{ records = 500 }").replace(
            "compression", "concurrency = 1\n        compression"
        )
    )
    stop = asyncio.Event()
    async with App(config, hooks=_StopAfter(5, stop)) as app:
        first = await app.engine.run_batch(message(batch), stop=stop)
    assert first.state is BatchState.INCOMPLETE
    first_keys = {r.idempotency_key for r in receiver.accepted}
    assert 5 <= len(first_keys) < 40

    second = await send(config, message(batch))

    assert second.ok and second.routes["churn"].delivered == 20_000
    second_keys = [r.idempotency_key for r in receiver.accepted][len(first_keys) :]
    assert first_keys.isdisjoint(second_keys)  # nothing delivered before is sent again
    assert len(first_keys) + len(second_keys) == 40
    assert len(receiver.unique_records()) == 20_000


async def test_an_unwritable_dead_letter_store_stops_the_batch_unfinished(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 1500)
    (tmp_path / "dead").write_text("a file where the folder should be")
    config = write_config(config_text(receiver.url + "/scores"))
    receiver.fail_always(503)

    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.INCOMPLETE
    assert "dead-letter store dead failed" in (outcome.error or "")
    async with App(config) as app:
        chunks = await app.ledger.chunks("b-1")
    assert chunks and all(not c.state.terminal for c in chunks)
    assert any(c.state is ChunkState.FAILED for c in chunks)

    (tmp_path / "dead").unlink()  # the store comes back: the same batch now completes
    receiver.recover()
    outcome = await send(config, message(batch))
    assert outcome.ok and len(receiver.unique_records()) == 1500


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_csv_and_parquet_batches_arrive_as_ndjson(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig], fmt: str
) -> None:
    batch = write_batch(tmp_path / "batch", 4000, fmt=fmt, gz=fmt == "csv")
    config = write_config(config_text(receiver.url + "/scores"))

    outcome = await send(config, message(batch))

    assert outcome.ok
    received = sorted(receiver.records(), key=lambda r: r["id"])
    assert len(received) == 4000
    expected = prediction(3999)
    assert received[-1]["id"] == expected["id"]
    if fmt == "parquet":
        assert received[-1]["features"] == expected["features"]


async def test_projection_renames_fields_and_csv_output_has_their_header(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 100, parts=1)
    text = config_text(
        receiver.url + "/scores",
        extra_route=(
            'fields = { customer_id = "id", churn_score = "score", '
            'tenure = "features.tenure_months" }'
        ),
    ).replace('compression = "zstd"', 'compression = "gzip"\n        format = "csv"')
    config = write_config(text)

    outcome = await send(config, message(batch))

    assert outcome.ok
    request = receiver.accepted[0]
    assert request.headers["Content-Type"].startswith("text/csv")
    assert request.body.splitlines()[0] == b"customer_id,churn_score,tenure"
    assert receiver.records()[5] == {
        "customer_id": "cust-00000005",
        "churn_score": str(prediction(5)["score"]),
        "tenure": "5",
    }


@pytest.mark.parametrize(
    ("policy", "state", "stored"),
    [
        ("skip", BatchState.COMPLETE, False),
        ("dead_letter", BatchState.COMPLETE, True),
        ("fail", BatchState.FAILED, False),
    ],
)
async def test_bad_records_follow_the_route_policy(
    tmp_path: Path,
    receiver: Receiver,
    write_config: Callable[[str], AppConfig],
    policy: str,
    state: BatchState,
    stored: bool,
) -> None:
    batch = write_batch(tmp_path / "batch", 300, parts=1)
    part = next(batch.glob("part-*"))
    lines = part.read_bytes().splitlines(keepends=True)
    lines[10] = b"this is not json\n"
    lines[20] = b'{"id": "cut-off", "sco\n'
    part.write_bytes(b"".join(lines))
    config = write_config(
        config_text(receiver.url + "/scores", extra_route=f'on_bad_record = "{policy}"')
    )

    outcome = await send(config, message(batch))

    assert outcome.state is state
    if state is BatchState.FAILED:
        assert "part-00000-c000.json:11" in (outcome.error or "")
        return
    stats = outcome.routes["churn"]
    assert (stats.read, stats.delivered, stats.rejected) == (300, 298, 2)
    assert len(receiver.unique_records()) == 298
    rejects = list((tmp_path / "dead").rglob("rejects-*.ndjson"))
    assert bool(rejects) is stored
    if stored:
        bad = [orjson.loads(line) for line in rejects[0].read_bytes().splitlines()]
        assert [b["location"] for b in bad] == [
            "part-00000-c000.json:11",
            "part-00000-c000.json:21",
        ]
        assert bad[0]["raw"] == "this is not json"


async def test_bad_records_on_the_fields_path_are_stored_raw_at_their_file_and_line(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 300, parts=2)
    part = sorted(batch.glob("part-*"))[1]
    lines = part.read_bytes().splitlines(keepends=True)
    lines[10] = b"this is not json\n"
    lines[20] = b"[1, 2]\n"
    part.write_bytes(b"".join(lines))
    fields = 'fields = { customer_id = "id", churn_score = "score" }'
    config = write_config(config_text(receiver.url + "/scores", extra_route=fields))

    outcome = await send(config, message(batch))

    stats = outcome.routes["churn"]
    assert outcome.state is BatchState.COMPLETE
    assert (stats.read, stats.delivered, stats.rejected) == (300, 298, 2)
    (rejects,) = (tmp_path / "dead").rglob("rejects-*.ndjson")
    bad = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(b["location"], b["raw"]) for b in bad] == [
        (f"{part.name}:11", "this is not json"),
        (f"{part.name}:21", "[1, 2]"),
    ]
    assert all(b["reason"] for b in bad)


async def test_a_missing_success_marker_fails_the_batch_with_a_clear_error(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 100, success=False)
    config = write_config(config_text(receiver.url + "/scores"))

    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.FAILED
    assert "_SUCCESS" in (outcome.error or "")
    assert receiver.requests == []
    async with App(config) as app:
        record = await app.ledger.get_batch("b-1")
    assert record is not None and record.state is BatchState.FAILED


async def test_a_corrupt_gzip_part_fails_the_batch_and_keeps_what_was_delivered(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 3000, gz=True)
    last = sorted(batch.glob("part-*.gz"))[-1]
    last.write_bytes(last.read_bytes()[:200])  # truncated upload
    config = write_config(config_text(receiver.url + "/scores"))

    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.FAILED
    assert last.name in (outcome.error or "")
    async with App(config) as app:
        delivered = [c for c in await app.ledger.chunks("b-1") if c.state.terminal]
    assert len(receiver.unique_records()) == sum(c.records for c in delivered)


async def test_a_source_changed_since_first_read_is_refused(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 100)
    config = write_config(config_text(receiver.url + "/scores"))
    receiver.fail_always(503)
    (tmp_path / "dead").write_text("blocks the dead-letter store")
    first = await send(config, message(batch))
    assert first.state is BatchState.INCOMPLETE

    write_batch(batch, 150)  # the job rewrote its output
    receiver.recover()
    (tmp_path / "dead").unlink()
    outcome = await send(config, message(batch))

    assert outcome.state is BatchState.FAILED
    assert "changed since" in (outcome.error or "")
    forced = await send(config, message(batch), force=True)
    assert forced.ok and forced.routes["churn"].read == 150


async def test_a_refusal_of_the_destination_not_the_payload_is_not_split(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 3000)
    config = write_config(config_text(receiver.url + "/scores"))
    receiver.fail_always(404, body=b"no such endpoint")

    outcome = await send(config, message(batch))

    # one request per chunk, then the dead-letter store: halving a chunk cannot make a
    # missing endpoint appear, it would only multiply the failures
    assert len(receiver.requests) == 3
    assert outcome.routes["churn"].dead_lettered == 3000
    assert len(list((tmp_path / "dead").rglob("chunk-*.ndjson"))) == 3


# -- a batch cannot be left half-way ---------------------------------------------------------


class _Recorder(Hooks):
    """What a monitoring hook would see of the batch's start and end."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[tuple[str, str]] = []

    def batch_started(self, batch_id: str, dataset: str, routes: object) -> None:
        self.started.append(batch_id)

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        self.finished.append((batch_id, state))


def fail_saving_chunks_of(app: App, batch_id: str, *, after: int = 1) -> list[int]:
    """Make the app's ledger raise ``LedgerError`` on saving chunks of ``batch_id`` once
    ``after`` saves of it went through (a disk that filled up mid-batch); returns the count
    of saves tried."""
    real = app.ledger.save_chunks
    tried = [0]

    async def save_chunks(records: Sequence[ChunkRecord]) -> None:
        if any(r.batch_id == batch_id for r in records):
            tried[0] += 1
            if tried[0] > after:
                raise LedgerError(f"ledger {batch_id}: database or disk is full")
        await real(records)

    app.ledger.save_chunks = save_chunks  # type: ignore[method-assign]
    return tried


async def test_a_ledger_failure_mid_batch_ends_it_incomplete_with_hooks_and_gauges_right(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 5000)
    config = write_config(config_text(receiver.url + "/scores", chunk="{ records = 500 }"))
    metrics = Metrics(CollectorRegistry())
    recorder = _Recorder()

    async with App(config, hooks=MultiHooks([metrics.hooks(), recorder]), metrics=metrics) as app:
        fail_saving_chunks_of(app, "b-1", after=2)
        outcome = await app.engine.run_batch(message(batch))
        record = await app.ledger.get_batch("b-1")

    assert outcome.state is BatchState.INCOMPLETE
    assert "database or disk is full" in (outcome.error or "")
    assert record is not None and record.state is BatchState.INCOMPLETE  # not left "running"
    assert record.error == outcome.error and record.lease_owner is None
    assert recorder.started == ["b-1"] and recorder.finished == [("b-1", "incomplete")]
    gauge = metrics.registry.get_sample_value
    assert gauge("sender_batches_in_flight") == 0
    assert gauge("sender_requests_in_flight", {"target": "api"}) == 0

    again = await send(config, message(batch))  # the ledger is fine again: nothing is lost

    assert again.ok and len(receiver.unique_records()) == 5000


async def test_a_ledger_that_cannot_record_the_end_leaves_the_batch_unacked(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 1000)
    config = write_config(config_text(receiver.url + "/scores"))

    async with App(config) as app:

        async def finish_batch(*args: object, **kwargs: object) -> None:
            raise LedgerError("ledger: connection lost")

        app.ledger.finish_batch = finish_batch  # type: ignore[method-assign]
        outcome = await app.engine.run_batch(message(batch))

    # every chunk went out, but the ledger does not say so: the message must come back
    assert len(receiver.unique_records()) == 1000
    assert outcome.state is BatchState.INCOMPLETE
    assert "could not record the batch's end: ledger: connection lost" in (outcome.error or "")


async def test_a_closed_destination_ends_the_batch_incomplete_not_running(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 1000)
    config = write_config(config_text(receiver.url + "/scores"))
    recorder = _Recorder()

    async with App(config, hooks=recorder) as app:
        await app.targets["api"].destination.aclose()  # used after aclose(): not a DeliveryError
        outcome = await app.engine.run_batch(message(batch))
        record = await app.ledger.get_batch("b-1")

    assert outcome.state is BatchState.INCOMPLETE and "closed" in (outcome.error or "")
    assert record is not None and record.state is BatchState.INCOMPLETE
    assert recorder.finished == [("b-1", "incomplete")]
    assert receiver.requests == []


class _BrokenBar(Hooks):
    """A progress bar that raises on every call, as a terminal gone away could make it."""

    def __init__(self) -> None:
        self.calls = 0

    def _boom(self) -> None:
        self.calls += 1
        raise RuntimeError("the terminal went away")

    def batch_started(self, *args: object) -> None:
        self._boom()

    def records_read(self, *args: object) -> None:
        self._boom()

    def chunk_done(self, *args: object, **kwargs: object) -> None:
        self._boom()

    def fallback(self, *args: object) -> None:
        self._boom()

    def batch_finished(self, *args: object) -> None:
        self._boom()


async def test_a_hook_that_raises_never_changes_delivery_and_is_logged_once_per_kind(
    tmp_path: Path, receiver: Receiver, write_config: Callable[[str], AppConfig]
) -> None:
    batch = write_batch(tmp_path / "batch", 3000)
    config = write_config(config_text(receiver.url + "/scores", fallback="backup"))
    receiver.fail_where(lambda request: request.headers["X-Sender-Chunk"] == "1")
    bar = _BrokenBar()

    with capture_logs() as logs:
        async with App(config, hooks=bar) as app:  # given bare, as `sender send` gives it
            outcome = await app.engine.run_batch(message(batch))

    assert outcome.state is BatchState.COMPLETE and outcome.ok
    assert outcome.routes["churn"].delivered == 3000 and outcome.fallbacks == 1
    assert bar.calls >= 6  # started, read, 3 chunks, a fallback, finished
    failed = sorted(e["method"] for e in logs if e["event"] == "hook.failed")
    assert failed == ["batch_finished", "batch_started", "chunk_done", "fallback", "records_read"]


async def test_the_daemon_gives_back_a_crashed_batch_and_takes_the_next_message(
    tmp_path: Path, receiver: Receiver
) -> None:
    config_path = write_daemon_config(tmp_path, receiver=receiver.url, trigger=SPOOL)
    trigger = MemoryTrigger()
    await trigger.publish(churn_batch(tmp_path, "b-crash"))
    await trigger.publish(churn_batch(tmp_path, "b-good"))

    async with App(load_config(config_path)) as app:
        fail_saving_chunks_of(app, "b-crash", after=0)
        daemon = Daemon(app, trigger)
        task = asyncio.create_task(daemon.run())
        try:
            async with asyncio.timeout(30):
                settled = await daemon.wait_settled(2)
        finally:
            daemon.request_stop("test")
            assert await asyncio.wait_for(task, 30) == 0
            await trigger.aclose()
        crashed = await app.ledger.get_batch("b-crash")

    verbs = {s.batch_id: s.verb for s in settled[:2]}
    assert verbs == {"b-good": "ack", "b-crash": "release"}  # never acked, never rejected
    assert crashed is not None and crashed.state is BatchState.INCOMPLETE
    assert "disk is full" in (crashed.error or "")
    assert len(receiver.unique_records()) >= 10  # b-good's records all arrived
