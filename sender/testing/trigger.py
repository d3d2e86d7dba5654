"""The contract every ``Trigger`` must pass, built-in or third-party.

Subclass ``TriggerContract`` in a test module and provide a ``trigger`` fixture: a factory,
``trigger() -> Trigger``, that returns a new, not yet opened trigger on one queue of the
test's own — every call a new client of the *same* queue, so that "close, then open again"
plays a daemon that crashed and restarted. The suite opens and closes what it makes. A
trigger that keeps its queue in a ledger (``LedgerBound``) is bound by the factory.

One more fixture has a default a subclass may override (as a method of the subclass):
``lapse``, an async function called after a trigger was closed holding a message it never
settled, before the next one is opened: whatever makes its lease end (move an injected clock
past it). The default does nothing, for queues that give such messages back when the
consumer goes away (AMQP) or when the queue is opened again (a spool directory).

::

    import pytest
    from sender.testing import TriggerContract
    from acme_trigger import AcmeTrigger

    @pytest.fixture
    def trigger(acme_queue):
        return lambda: AcmeTrigger("acme", AcmeTrigger.Options(type="acme", queue=acme_queue))

    class TestAcmeTrigger(TriggerContract):
        pass

Half of the suite runs the sender's own daemon on the trigger (``sender.daemon.Daemon``) in
the test's event loop, with an HTTP receiver (``sender.testing.receiver``) as the destination
and a local batch folder as the source, and watches how the daemon settles each message: a
message is acked only once its batch is complete in the ledger; an invalid one is rejected
with the reason and does not hold up the next; a duplicate of a complete batch is acked with
nothing sent again. The other half uses the port directly: publish then consume, release,
extend, a crash (close without settling, open again: the message comes back), and ``aclose``.

Class attribute ``survives_a_close``: False for a trigger that keeps nothing once closed
(an in-memory fake); its crash test is skipped. The suite needs pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from ..app import App
from ..config import load_config
from ..daemon import Daemon
from ..errors import AdapterClosed, SenderError
from ..model import BatchState, TriggerMessage, idempotency_key, parse_trigger_message
from ..ports import Envelope, Ledger, PendingCount, Resource, Trigger
from .receiver import Receiver

__all__ = ["TriggerContract"]

Lapse = Callable[[], Awaitable[None]]
_TIMEOUT_S = 30.0

_CONFIG = """\
[daemon]
ledger = "ledger.db"
listen = "127.0.0.1:0"
max_batches = 1
lease = "3s"  # renewed every second: a short visibility never lapses mid-batch
allow_uris = ["{lake}/"]  # the test's batches, beside the daemon's folder

[destinations.api]
type = "http"
url = "{receiver}/scores"
concurrency = 1
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "5s" }}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 5 }}
targets = ["api"]
dead_letter = "dead"
"""


def _batch(folder: Path, batch_id: str, records: int = 10) -> TriggerMessage:
    """A churn batch of ``records`` (one chunk per five) in a local folder."""
    root = folder / "lake" / batch_id
    root.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps({"id": f"{batch_id}-{i}", "score": i / 100}) for i in range(records)]
    (root / "part-00000.json").write_bytes(b"\n".join(lines) + b"\n")
    (root / "_SUCCESS").write_bytes(b"")
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(root))


def _keys(batch_id: str, chunks: int) -> set[str]:
    return {idempotency_key(batch_id, "churn", str(i)) for i in range(chunks)}


@dataclass
class _Settled:
    message_id: str
    body: bytes
    verb: str
    reason: str | None = None
    batch_state: BatchState | None = None  # the batch's state in the ledger at the time


@dataclass
class _Spy(Resource):
    """Wraps the trigger under test: what the daemon did with each message, and when."""

    trigger: Any
    ledger: Ledger | None = None
    settled: list[_Settled] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def connected(self) -> bool:
        return bool(self.trigger.connected)

    async def publish(self, message: TriggerMessage) -> None:
        await self.trigger.publish(message)

    async def messages(self) -> AsyncIterator[Envelope]:
        stream = aiter(self.trigger.messages())
        try:
            async for envelope in stream:
                yield _SpyEnvelope(self, envelope)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def aclose(self) -> None:
        return None  # the test closes the trigger itself

    async def wait(self, count: int) -> list[_Settled]:
        async with asyncio.timeout(_TIMEOUT_S):
            while len(self.settled) < count:
                self.changed.clear()
                await self.changed.wait()
        return list(self.settled)


class _SpyEnvelope:
    def __init__(self, spy: _Spy, envelope: Envelope) -> None:
        self._spy = spy
        self._envelope = envelope
        self.body = envelope.body
        self.message_id = envelope.message_id

    async def _record(self, verb: str, reason: str | None = None) -> None:
        state = None
        ledger = self._spy.ledger
        with contextlib.suppress(SenderError, ValueError):
            batch_id = parse_trigger_message(self.body).batch_id
            record = await ledger.get_batch(batch_id) if ledger is not None else None
            state = record.state if record is not None else None
        self._spy.settled.append(_Settled(self.message_id, self.body, verb, reason, state))
        self._spy.changed.set()

    async def ack(self) -> None:
        await self._envelope.ack()
        await self._record("ack")

    async def reject(self, reason: str) -> None:
        await self._envelope.reject(reason)
        await self._record("reject", reason)

    async def release(self) -> None:
        await self._envelope.release()
        await self._record("release")

    async def extend(self, seconds: float) -> None:
        await self._envelope.extend(seconds)


@contextlib.asynccontextmanager
async def _opened(make: Callable[[], Any]) -> AsyncIterator[Any]:
    trigger = make()
    async with trigger:
        yield trigger
    await trigger.aclose()  # closing twice is allowed


async def _take(trigger: Any, count: int = 1) -> list[Envelope]:
    """The next ``count`` messages; the stream is closed again afterwards."""
    stream = aiter(trigger.messages())
    taken: list[Envelope] = []
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            while len(taken) < count:
                taken.append(await anext(stream))
    finally:
        await stream.aclose()
    return taken


async def _take_until(trigger: Any, batch_id: str) -> list[Envelope]:
    """Messages up to and including the first for ``batch_id``; every one is acked."""
    stream = aiter(trigger.messages())
    seen: list[Envelope] = []
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            while True:
                envelope = await anext(stream)
                seen.append(envelope)
                await envelope.ack()
                if parse_trigger_message(envelope.body).batch_id == batch_id:
                    return seen
    finally:
        await stream.aclose()


def _batch_ids(envelopes: list[Envelope]) -> list[str]:
    return [parse_trigger_message(e.body).batch_id for e in envelopes]


def _config(folder: Path, receiver: Receiver) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sender.toml"
    lake = folder.parent / "lake"  # where _batch writes
    path.write_text(textwrap.dedent(_CONFIG.format(receiver=receiver.url, lake=lake)))
    return path


@contextlib.asynccontextmanager
async def _daemon(folder: Path, trigger: Any) -> AsyncIterator[tuple[Daemon, _Spy, Receiver]]:
    """The sender's daemon on ``trigger`` (spied on), delivering to a receiver."""
    async with Receiver() as receiver, App(load_config(_config(folder, receiver))) as app:
        spy = _Spy(trigger, app.ledger)
        daemon = Daemon(app, spy)
        # an adopter's test process keeps its own signal handlers
        task = asyncio.create_task(daemon.run(handle_signals=False))
        try:
            yield daemon, spy, receiver
        finally:
            if not daemon.stopping.is_set():
                daemon.request_stop("test")
            assert await asyncio.wait_for(task, _TIMEOUT_S) == 0


@pytest.mark.asyncio
class TriggerContract:
    """What the daemon relies on from any ``Trigger``. Needs a ``trigger`` factory (module)."""

    survives_a_close: bool = True

    @pytest.fixture
    def lapse(self) -> Lapse:
        async def nothing() -> None:
            return None

        return nothing

    # -- the port ------------------------------------------------------------------------

    async def test_trigger_implements_the_port(self, trigger: Callable[[], Any]) -> None:
        async with _opened(trigger) as opened:
            assert isinstance(opened, Trigger)

    async def test_publish_then_consume_round_trips(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        message = _batch(tmp_path, "b-round").model_copy(
            update={"expected_records": 10, "routes": ("churn",)}
        )
        async with _opened(trigger) as opened:
            await opened.publish(message)
            if isinstance(opened, PendingCount):  # what `sender run --burst` waits on
                assert await opened.pending() == 1
            (envelope,) = await _take(opened)
            assert opened.connected

            assert parse_trigger_message(envelope.body) == message
            assert isinstance(envelope.message_id, str) and envelope.message_id
            await envelope.extend(30)  # the daemon keeps its lease while the batch runs
            await envelope.ack()
            if isinstance(opened, PendingCount):
                assert await opened.pending() == 0

    async def test_a_released_message_is_served_again(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        async with _opened(trigger) as opened:
            await opened.publish(_batch(tmp_path, "b-back"))
            (first,) = await _take(opened)
            await first.release()

            (again,) = await _take(opened)

            assert parse_trigger_message(again.body).batch_id == "b-back"
            await again.ack()

    async def test_unsettled_messages_come_back_after_a_crash(
        self, trigger: Callable[[], Any], lapse: Lapse, tmp_path: Path
    ) -> None:
        if not self.survives_a_close:
            pytest.skip("the trigger keeps nothing once closed")
        async with _opened(trigger) as crashed:
            await crashed.publish(_batch(tmp_path, "b-crash"))
            (taken,) = await _take(crashed)
            assert parse_trigger_message(taken.body).batch_id == "b-crash"
        # closed holding the message, never settled: the next daemon must get it
        await lapse()

        async with _opened(trigger) as restarted:
            (again,) = await _take(restarted)
            assert parse_trigger_message(again.body).batch_id == "b-crash"
            await again.ack()
            await restarted.publish(_batch(tmp_path, "b-next"))

            # acked for good: nothing comes before the next message
            assert _batch_ids(await _take_until(restarted, "b-next")) == ["b-next"]

    async def test_aclose_is_idempotent_and_a_closed_trigger_raises_adapter_closed(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        async with _opened(trigger) as opened:
            await opened.publish(_batch(tmp_path, "b-close"))
            stream = aiter(opened.messages())
            async with asyncio.timeout(_TIMEOUT_S):
                envelope = await anext(stream)

            await opened.aclose()
            await opened.aclose()

            assert not opened.connected
            with pytest.raises(StopAsyncIteration):  # the stream that was running ends
                await anext(stream)
            with pytest.raises(AdapterClosed, match="closed"):
                await anext(aiter(opened.messages()))
            with pytest.raises(AdapterClosed):
                await opened.publish(_batch(tmp_path, "b-late"))
            if isinstance(opened, PendingCount):
                with pytest.raises(AdapterClosed):
                    await opened.pending()
            for settle in (envelope.ack, envelope.release, lambda: envelope.reject("late")):
                with pytest.raises(AdapterClosed):
                    await settle()

    async def test_closing_ends_a_stream_waiting_for_messages(
        self, trigger: Callable[[], Any]
    ) -> None:
        async with _opened(trigger) as opened:
            stream = aiter(opened.messages())
            waiting = asyncio.ensure_future(anext(stream))
            await asyncio.sleep(0)  # one turn of the loop: the stream is inside, waiting

            await opened.aclose()

            async with asyncio.timeout(_TIMEOUT_S):
                with pytest.raises(StopAsyncIteration):
                    await waiting

    async def test_a_trigger_closed_before_first_use_raises_adapter_closed(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        closed = trigger()
        await closed.aclose()

        with pytest.raises(AdapterClosed):
            await anext(aiter(closed.messages()))
        with pytest.raises(AdapterClosed):
            await closed.publish(_batch(tmp_path, "b-never"))

    # -- what the daemon does with it ------------------------------------------------------

    async def test_a_message_is_acked_only_after_its_batch_is_complete(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        async with _opened(trigger) as opened:
            await opened.publish(_batch(tmp_path, "b-1", records=15))

            async with _daemon(tmp_path / "daemon", opened) as (_, spy, receiver):
                (settled,) = await spy.wait(1)
                sent = {r.idempotency_key for r in receiver.accepted}

            assert (settled.verb, settled.batch_state) == ("ack", BatchState.COMPLETE)
            assert sent == _keys("b-1", 3)
            await opened.publish(_batch(tmp_path, "b-after"))
            assert _batch_ids(await _take_until(opened, "b-after")) == ["b-after"]

    async def test_a_poison_message_is_rejected_with_its_reason_and_the_next_is_served(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        poison = TriggerMessage(batch_id="b-poison", dataset="nobody-routes-this", uri="/x")
        async with _opened(trigger) as opened:
            await opened.publish(poison)
            await opened.publish(_batch(tmp_path, "b-good"))

            async with _daemon(tmp_path / "daemon", opened) as (_, spy, receiver):
                settled = await spy.wait(2)

            verbs = {parse_trigger_message(s.body).batch_id: s for s in settled}
            assert verbs["b-poison"].verb == "reject"
            assert "no route takes dataset" in (verbs["b-poison"].reason or "")
            assert verbs["b-good"].verb == "ack"
            assert {r.idempotency_key for r in receiver.accepted} == _keys("b-good", 2)
            # rejected for good: it is not served again
            await opened.publish(_batch(tmp_path, "b-after"))
            assert _batch_ids(await _take_until(opened, "b-after")) == ["b-after"]

    async def test_a_duplicate_of_a_complete_batch_is_acked_without_sending(
        self, trigger: Callable[[], Any], tmp_path: Path
    ) -> None:
        message = _batch(tmp_path, "b-dup", records=20)
        async with _opened(trigger) as opened:
            await opened.publish(message)

            async with _daemon(tmp_path / "daemon", opened) as (_, spy, receiver):
                await spy.wait(1)
                await opened.publish(message)  # the pipeline step ran again
                settled = await spy.wait(2)
                sent = [r.idempotency_key or "" for r in receiver.accepted]

        assert [(s.verb, s.batch_state) for s in settled] == [("ack", BatchState.COMPLETE)] * 2
        assert sorted(sent) == sorted(_keys("b-dup", 4))  # each chunk exactly once
