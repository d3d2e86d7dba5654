"""Reading the control server's batch JSON tolerantly, and when a wait is over (no server:
the JSON is what ``GET /v1/batches/{id}`` answers, with fields a later daemon may add)."""

from __future__ import annotations

from typing import Any

import pytest

from integration_sender_airflow.errors import DeadLettersFound
from integration_sender_airflow.outcome import reconciliation, resolve, settled_event
from integration_sender_airflow.watch import BatchWatch


def batch(state: str = "complete", **records: int) -> dict[str, Any]:
    totals = {"read": 10, "delivered": 10, "dead_lettered": 0, "rejected": 0, "chunks": 1}
    totals.update(records)
    return {
        "batch_id": "b1",
        "dataset": "churn",
        "uri": "/lake/b1",
        "state": state,
        "records": totals,
        "routes": {"churn": totals},
        "reconciled": True,
        "shards": [{"owner": "pod-2"}],  # a field this provider does not know
    }


def test_counts_the_daemon_adds_later_are_passed_on_and_named_when_not_zero() -> None:
    result = reconciliation(batch(read=15, delivered=5, dead_lettered=5, unchanged=5))

    assert (result["unchanged"], result["records"]["unchanged"]) == (5, 5)
    with pytest.raises(DeadLettersFound) as failed:
        resolve(settled_event(batch(read=15, delivered=5, dead_lettered=5, unchanged=5)),
                fail_on_dead_letters=True)  # fmt: skip
    assert "[read 15, delivered 5, dead-lettered 5, rejected 0, unchanged 5]" in str(failed.value)


def test_zero_counts_beyond_the_four_of_the_reconciliation_stay_out_of_the_message() -> None:
    with pytest.raises(DeadLettersFound) as failed:
        resolve(settled_event(batch(delivered=0, dead_lettered=10, tombstones=0)),
                fail_on_dead_letters=True)  # fmt: skip

    assert "tombstones" not in str(failed.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("state", ["running", "incomplete", "some_future_state"])
def test_a_batch_not_complete_or_failed_is_waited_on(state: str) -> None:
    clock = Clock()
    watch = BatchWatch("b1", not_found_grace_s=5, deadline=1060, clock=clock)

    assert watch.seen(batch(state)) is None
    clock.now = 1060
    assert watch.seen(batch(state)) == {
        "status": "timeout",
        "batch_id": "b1",
        "state": state,
        "waited_s": 60,
    }


def test_not_found_ends_the_wait_only_after_the_grace() -> None:
    clock = Clock()
    watch = BatchWatch("b1", not_found_grace_s=5, deadline=None, clock=clock)

    clock.now += 4.9
    assert watch.seen(None) is None
    clock.now += 0.1
    assert watch.seen(None) == {"status": "not_found", "batch_id": "b1", "waited_s": 5}


def test_the_pause_never_oversleeps_the_deadline() -> None:
    clock = Clock()
    watch = BatchWatch("b1", not_found_grace_s=None, deadline=1003, clock=clock)

    assert watch.pause_s(10) == 3
    clock.now = 1005
    assert watch.pause_s(10) == 0
