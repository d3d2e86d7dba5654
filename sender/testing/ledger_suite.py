"""What every ledger suite shares (``LedgerContract``, ``ReplayLogContract``,
``InboxContract``, ``DiffStoreContract``): the ``clock`` and ``replica`` fixtures, and the
records the tests are made of. See ``sender.testing.ledger`` for how to run the suites.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..model import ChunkState, TriggerMessage, idempotency_key
from ..ports import ChunkRecord

__all__ = ["Clock", "LedgerSuite", "aware", "make_chunk", "make_message"]


class Clock:
    """The time a ledger under test reads: real time at first, moved on by ``advance``.
    Pass it as the ledger's ``clock`` (a callable returning an aware UTC datetime)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def make_message(batch_id: str = "b-1", dataset: str = "churn", **extra: Any) -> TriggerMessage:
    """A valid trigger message for ``batch_id`` (``uri`` defaults to a local folder)."""
    fields: dict[str, Any] = {"uri": f"file:///lake/{dataset}/{batch_id}", **extra}
    return TriggerMessage(batch_id=batch_id, dataset=dataset, **fields)


def make_chunk(
    batch_id: str,
    chunk_id: str,
    *,
    route: str = "to_crm",
    state: ChunkState = ChunkState.PENDING,
    **extra: Any,
) -> ChunkRecord:
    """A chunk row with its real idempotency key; ``extra`` sets any other field."""
    return ChunkRecord(
        batch_id=batch_id,
        route=route,
        chunk_id=chunk_id,
        state=state,
        idempotency_key=idempotency_key(batch_id, route, chunk_id),
        **extra,
    )


def aware(value: datetime | None) -> bool:
    return value is not None and value.utcoffset() == timedelta(0)


class LedgerSuite:
    """The fixtures every ledger suite shares: ``clock``, and ``replica`` (``ledger`` unless
    the subclass opens a second handle on the same store)."""

    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    def replica(self, ledger: Any) -> Any:
        return ledger
