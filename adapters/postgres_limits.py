"""Destination limits shared by every replica: the ``SharedLimits`` port on PostgreSQL, as a
mixin of ``PostgresLedger``.

``destination_limits`` holds one row per destination: the GCRA's theoretical arrival time
``tat`` (the end of the last slice of tokens granted), ``paused_until`` (a receiver's
``Retry-After``) and ``circuit_open_until``. ``take_tokens`` is one ``INSERT ... ON CONFLICT
DO UPDATE ... RETURNING``: the conflicting row is locked, so replicas asking at once are
served one after the other and get disjoint slices. ``replicas`` is the heartbeat table the
fallback share (limit / live replicas) is counted from.

Every time is the database server's (``now()``, see ``postgres_store.NOW``) and leaves as
seconds from that now, so replicas' clocks never have to agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sender.ports import DestinationLimits, LimitGrant
from sender_adapters._sql import Migration
from sender_adapters.postgres_store import NOW, PostgresStore

__all__ = ["LIMITS_MIGRATION", "PostgresLimits"]

# a schema step of the PostgreSQL ledger: shared destination state and replica heartbeats
LIMITS_MIGRATION: Migration = (
    """
    CREATE TABLE destination_limits (
        destination        text PRIMARY KEY,
        tat                timestamptz,
        paused_until       timestamptz,
        circuit_open_until timestamptz
    )
    """,
    """
    CREATE TABLE replicas (
        owner   text PRIMARY KEY,
        seen_at timestamptz NOT NULL
    )
    """,
)

# seconds from now until a timestamptz column's instant; 0 when it is past or NULL
_LEFT = "greatest(0, coalesce(extract(epoch FROM {column} - {now}), 0))::float8"

# $1 clock, $2 destination, $3 slice length (interval). A new row's tat is now + the slice;
# an existing one's is max(tat, now) + the slice (excluded.tat is now + the slice).
_TAKE = f"""
    INSERT INTO destination_limits AS d (destination, tat)
    VALUES ($2, {NOW} + $3::interval)
    ON CONFLICT (destination) DO UPDATE SET
        tat = greatest(coalesce(d.tat, excluded.tat), excluded.tat - $3::interval) + $3::interval
    RETURNING
        {_LEFT.format(column="d.tat - $3::interval", now=NOW)} AS start_in_s,
        {_LEFT.format(column="d.paused_until", now=NOW)} AS paused_for_s,
        {_LEFT.format(column="d.circuit_open_until", now=NOW)} AS circuit_open_for_s
"""


def _later(column: str) -> str:
    """Move ``column`` to now + $3, unless it is later already."""
    return f"""
        INSERT INTO destination_limits AS d (destination, {column})
        VALUES ($2, {NOW} + $3::interval)
        ON CONFLICT (destination) DO UPDATE SET
            {column} = greatest(d.{column}, excluded.{column})
    """


_PAUSE = _later("paused_until")
_OPEN = _later("circuit_open_until")


class PostgresLimits(PostgresStore):
    """The ``SharedLimits`` port on the ``destination_limits`` and ``replicas`` tables."""

    async def take_tokens(self, destination: str, rate: float, tokens: float) -> LimitGrant:
        if rate <= 0 or tokens <= 0:
            raise ValueError("rate and tokens must be positive")
        span = timedelta(seconds=tokens / rate)
        async with self._transaction() as conn:
            row = await conn.fetchrow(_TAKE, self._now(), destination, span)
        assert row is not None
        return LimitGrant(
            row["start_in_s"],
            DestinationLimits(destination, row["paused_for_s"], row["circuit_open_for_s"]),
        )

    async def pause_destination(self, destination: str, seconds: float) -> None:
        async with self._transaction() as conn:
            await conn.execute(_PAUSE, self._now(), destination, _seconds(seconds))

    async def open_circuit(self, destination: str, seconds: float) -> None:
        async with self._transaction() as conn:
            await conn.execute(_OPEN, self._now(), destination, _seconds(seconds))

    async def destination_limits(self, destinations: Sequence[str]) -> dict[str, DestinationLimits]:
        names = list(dict.fromkeys(destinations))
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"""
                SELECT destination,
                    {_LEFT.format(column="paused_until", now=NOW)} AS paused_for_s,
                    {_LEFT.format(column="circuit_open_until", now=NOW)} AS circuit_open_for_s
                FROM destination_limits WHERE destination = ANY($2::text[])
                """,
                self._now(),
                names,
            )
        found = {
            row["destination"]: DestinationLimits(
                row["destination"], row["paused_for_s"], row["circuit_open_for_s"]
            )
            for row in rows
        }
        return {name: found.get(name, DestinationLimits(name)) for name in names}

    async def heartbeat(self, owner: str, live_s: float) -> int:
        async with self._transaction() as conn:
            await conn.execute(
                f"""
                INSERT INTO replicas AS r (owner, seen_at) VALUES ($2, {NOW})
                ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at
                """,
                self._now(),
                owner,
            )
            # replicas that died without leaving: forgotten once they cannot count any more
            await conn.execute(
                f"DELETE FROM replicas WHERE seen_at < {NOW} - $2::interval",
                self._now(),
                _seconds(max(3600.0, 10 * live_s)),
            )
            live = await conn.fetchval(
                f"SELECT count(*) FROM replicas WHERE seen_at > {NOW} - $2::interval",
                self._now(),
                _seconds(live_s),
            )
        return int(live)

    async def leave(self, owner: str) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM replicas WHERE owner = $1", owner)


def _seconds(seconds: float) -> timedelta:
    return timedelta(seconds=max(0.0, seconds))
