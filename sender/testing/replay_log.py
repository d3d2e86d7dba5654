"""The replay log's contract suite: ``ReplayLogContract``, what ``sender replay`` and
``sender status`` rely on from a ledger's ``ReplayLog``. Subclass it with a ``ledger``
fixture as for ``LedgerContract`` (see ``sender.testing.ledger``).
"""

from __future__ import annotations

from typing import Any

import pytest

from ..errors import AdapterClosed, LedgerError
from ..ports import ReplayLog
from .ledger_suite import LedgerSuite, make_message
from .ledger_suite import aware as _aware

__all__ = ["ReplayLogContract"]


@pytest.mark.asyncio
class ReplayLogContract(LedgerSuite):
    """What ``sender replay`` and ``sender status`` rely on from a ``ReplayLog`` (a ledger's:
    a replay is recorded against a batch the ledger knows). Needs a ``ledger`` fixture."""

    async def test_ledger_implements_the_replay_log(self, ledger: Any) -> None:
        assert isinstance(ledger, ReplayLog)

    async def test_replays_are_recorded_oldest_first(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.start_batch(make_message("b-2"))
        selectors = {"route": "to_crm", "states": ["dead_lettered"], "to": None, "dry_run": True}

        await ledger.record_replay("b-1", "alice", selectors, {"chunks": 3, "delivered": 0})
        await ledger.record_replay("b-1", "bob", {"route": None}, {"chunks": 1, "delivered": 1})
        await ledger.record_replay("b-2", "carol", {}, {})

        first, second = await ledger.replays("b-1")
        assert first["who"] == "alice"
        assert first["batch_id"] == "b-1"
        assert first["selectors"] == selectors
        assert first["outcome"] == {"chunks": 3, "delivered": 0}
        assert _aware(first["at"])
        assert second["who"] == "bob"
        assert second["id"] > first["id"]
        assert second["at"] >= first["at"]
        assert [r["who"] for r in await ledger.replays("b-2")] == ["carol"]
        assert await ledger.replays("unknown") == []

    async def test_replay_of_an_unknown_batch_is_an_error(self, ledger: Any) -> None:
        with pytest.raises(LedgerError):
            await ledger.record_replay("nope", "alice", {}, {})

    async def test_a_closed_replay_log_raises_adapter_closed(self, ledger: Any) -> None:
        await ledger.start_batch(make_message("b-1"))
        await ledger.aclose()

        with pytest.raises(AdapterClosed):
            await ledger.record_replay("b-1", "alice", {}, {})
        with pytest.raises(AdapterClosed):
            await ledger.replays("b-1")
