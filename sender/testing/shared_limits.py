"""The contract suite of shared destination limits: ``SharedLimitsContract``, what
``sender.shared_limits`` relies on from a ledger's ``SharedLimits``. Subclass it with a
``ledger`` fixture as for ``LedgerContract`` (see ``sender.testing.ledger``: the same
``clock``, and ``replica``, a second handle on the same store when there is one).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from ..ports import DestinationLimits, SharedLimits
from .ledger_suite import Clock, LedgerSuite

__all__ = ["SharedLimitsContract"]


class _StoppedClock(Clock):
    """A ``Clock`` that stands still unless advanced: grants are then exact, whatever the
    load on the machine."""

    def __init__(self) -> None:
        super().__init__()
        self._base = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self._base + self.offset


@pytest.mark.asyncio
class SharedLimitsContract(LedgerSuite):
    """One GCRA per destination, pauses and open circuits that only move later, heartbeats.
    The ``clock`` stands still here unless a test advances it."""

    @pytest.fixture
    def clock(self) -> Clock:
        return _StoppedClock()

    async def test_ledger_implements_shared_limits(self, ledger: Any) -> None:
        assert isinstance(ledger, SharedLimits)

    async def test_a_first_grant_starts_now_and_the_next_one_after_it(
        self, ledger: Any, replica: Any
    ) -> None:
        first = await ledger.take_tokens("api", 20.0, 4.0)
        second = await replica.take_tokens("api", 20.0, 4.0)

        assert first.start_in_s == pytest.approx(0.0, abs=1e-6)
        # the first slice is 4 tokens at 20/s: 0.2 s long, and the second starts at its end
        assert second.start_in_s == pytest.approx(0.2, abs=1e-6)
        assert first.limits == DestinationLimits("api")

    async def test_grants_racing_from_replicas_get_disjoint_slices(
        self, ledger: Any, replica: Any
    ) -> None:
        grants = await asyncio.gather(
            *(handle.take_tokens("api", 10.0, 1.0) for handle in (ledger, replica) * 5)
        )

        starts = sorted(g.start_in_s for g in grants)
        # ten tokens at 10/s: slices at 0.0, 0.1, ... 0.9 (each a tenth of a second)
        assert starts == pytest.approx([n / 10 for n in range(10)], abs=1e-6)

    async def test_an_idle_destination_saves_up_nothing(self, ledger: Any, clock: Clock) -> None:
        await ledger.take_tokens("api", 10.0, 1.0)
        clock.advance(60)

        grant = await ledger.take_tokens("api", 10.0, 5.0)
        # after a minute idle the slice starts now, not a minute ago: no burst of saved tokens
        assert grant.start_in_s == pytest.approx(0.0, abs=1e-6)
        later = await ledger.take_tokens("api", 10.0, 1.0)
        assert later.start_in_s == pytest.approx(0.5, abs=1e-6)

    async def test_destinations_are_limited_apart(self, ledger: Any) -> None:
        await ledger.take_tokens("api", 1.0, 10.0)

        other = await ledger.take_tokens("crm", 1.0, 1.0)
        assert other.start_in_s == pytest.approx(0.0, abs=1e-6)

    async def test_bad_rates_and_token_counts_are_refused(self, ledger: Any) -> None:
        with pytest.raises(ValueError):
            await ledger.take_tokens("api", 0.0, 1.0)
        with pytest.raises(ValueError):
            await ledger.take_tokens("api", 1.0, 0.0)

    async def test_a_pause_is_seen_by_every_replica_and_only_moves_later(
        self, ledger: Any, replica: Any, clock: Clock
    ) -> None:
        await ledger.pause_destination("api", 30.0)
        await replica.pause_destination("api", 5.0)  # shorter: the longer pause stands

        (state,) = (await replica.destination_limits(["api"])).values()
        assert state.paused_for_s == pytest.approx(30.0, abs=1e-6)
        grant = await replica.take_tokens("api", 10.0, 1.0)
        assert grant.limits.paused_for_s == pytest.approx(30.0, abs=1e-6)

        clock.advance(31)
        state = (await ledger.destination_limits(["api"]))["api"]
        assert state.paused_for_s == 0.0

    async def test_an_open_circuit_is_seen_by_every_replica_and_only_moves_later(
        self, ledger: Any, replica: Any, clock: Clock
    ) -> None:
        await ledger.open_circuit("api", 60.0)
        clock.advance(10)
        await replica.open_circuit("api", 20.0)  # ends before the first: ignored

        state = (await replica.destination_limits(["api"]))["api"]
        assert state.circuit_open_for_s == pytest.approx(50.0, abs=1e-6)
        assert state.paused_for_s == 0.0

        await replica.open_circuit("api", 90.0)  # a probe failed: open longer
        state = (await ledger.destination_limits(["api"]))["api"]
        assert state.circuit_open_for_s == pytest.approx(90.0, abs=1e-6)

    async def test_unknown_destinations_have_nothing_held(self, ledger: Any) -> None:
        assert await ledger.destination_limits(["api", "crm", "api"]) == {
            "api": DestinationLimits("api"),
            "crm": DestinationLimits("crm"),
        }

    async def test_live_replicas_are_those_seen_lately(
        self, ledger: Any, replica: Any, clock: Clock
    ) -> None:
        assert await ledger.heartbeat("replica-a", 3.0) == 1
        assert await replica.heartbeat("replica-b", 3.0) == 2
        assert await ledger.heartbeat("replica-a", 3.0) == 2  # a heartbeat counts once

        clock.advance(2)
        assert await replica.heartbeat("replica-b", 3.0) == 2
        clock.advance(2)  # replica-a was last seen 4 s ago: no longer live
        assert await replica.heartbeat("replica-b", 3.0) == 1

        await ledger.heartbeat("replica-a", 3.0)
        await ledger.leave("replica-a")
        await ledger.leave("nobody")
        assert await replica.heartbeat("replica-b", 3.0) == 1
