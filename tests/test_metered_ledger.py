"""The metered ledger: counts each LedgerError by operation, and is exactly the ports its
inner ledger is, so the wiring's isinstance checks see the truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sender.errors import AdapterClosed, LedgerError
from sender.metered_ledger import metered
from sender.model import BatchState
from sender.ports import Inbox, Ledger, ReplayLog
from sender.testing import make_chunk, make_message
from sender_adapters.memory import MemoryLedger


async def test_ledger_errors_are_counted_by_operation_and_still_raised() -> None:
    errors: list[str] = []
    ledger = metered(MemoryLedger(), on_error=errors.append)

    async with ledger:
        assert await ledger.get_batch("nope") is None
        with pytest.raises(LedgerError, match="unknown batch"):
            await ledger.finish_batch("nope", BatchState.COMPLETE, {})
        with pytest.raises(LedgerError):
            await ledger.save_chunks([make_chunk("nope", "0")])
        record = await ledger.start_batch(make_message("b-1"))

    assert errors == ["finish_batch", "save_chunks"]
    assert record.batch_id == "b-1"


async def test_closing_the_wrapper_closes_the_inner_ledger() -> None:
    inner = MemoryLedger()
    errors: list[str] = []
    async with metered(inner, on_error=errors.append):
        pass

    with pytest.raises(AdapterClosed):
        await inner.ping()
    assert errors == []  # a closed ledger is not a ledger failure


@pytest.mark.parametrize(
    ("hidden", "replay_log", "inbox"),
    [
        ((), True, True),
        (("record_replay", "replays"), False, True),
        (("enqueue_message", "get_message"), True, False),
        (("replays", "claim_messages"), False, False),
    ],
)
async def test_the_wrapper_has_exactly_the_ports_of_its_inner_ledger(
    hidden: Sequence[str], replay_log: bool, inbox: bool
) -> None:
    # a method set to None is "not implemented" for a Protocol (as __hash__ = None is)
    partial = type("Partial", (MemoryLedger,), dict.fromkeys(hidden))
    inner = partial()
    assert (isinstance(inner, ReplayLog), isinstance(inner, Inbox)) == (replay_log, inbox)

    ledger = metered(inner, on_error=lambda operation: None)

    assert isinstance(ledger, Ledger)
    assert isinstance(ledger, ReplayLog) is replay_log
    assert isinstance(ledger, Inbox) is inbox


async def test_inbox_and_replay_calls_pass_through_and_are_counted() -> None:
    errors: list[str] = []
    ledger: Any = metered(MemoryLedger(), on_error=errors.append)
    async with ledger:
        await ledger.start_batch(make_message("b-1"))
        await ledger.record_replay("b-1", "alice", {}, {"delivered": 1})
        assert await ledger.enqueue_message("m-1", b"{}")
        (claimed,) = await ledger.claim_messages("daemon-a", 1, 60)
        with pytest.raises(LedgerError):
            await ledger.settle_message("unknown", "done")
        with pytest.raises(LedgerError):
            await ledger.record_replay("unknown", "bob", {}, {})

        assert [r["who"] for r in await ledger.replays("b-1")] == ["alice"]
        assert claimed.message_id == "m-1"
    assert errors == ["settle_message", "record_replay"]
