"""Shared destination limits in memory: the ``SharedLimits`` port as a mixin of
``MemoryLedger``, for fast tests of the core. "Replicas" are clients of one ``MemoryLedger``
in one process; the semantics are those of ``postgres_limits`` (the GCRA of ``take_tokens``,
pauses and open circuits that only ever move later, heartbeats)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sender.ports import DestinationLimits, LimitGrant

__all__ = ["MemoryLimits"]


@dataclass(slots=True)
class _Row:
    tat: datetime | None = None
    paused_until: datetime | None = None
    circuit_open_until: datetime | None = None


def _left(until: datetime | None, now: datetime) -> float:
    return 0.0 if until is None else max(0.0, (until - now).total_seconds())


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None else max(current, candidate)


class MemoryLimits:
    """Rows in dicts; ``MemoryLedger`` calls ``_init_limits`` and provides ``_enter`` and
    ``_now``."""

    _limits: dict[str, _Row]
    _replicas: dict[str, datetime]

    def _init_limits(self) -> None:
        self._limits = {}
        self._replicas = {}

    async def _enter(self) -> None:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    def _now(self) -> datetime:  # pragma: no cover - MemoryLedger's own is used
        raise NotImplementedError

    def _state(self, destination: str, row: _Row, now: datetime) -> DestinationLimits:
        return DestinationLimits(
            destination, _left(row.paused_until, now), _left(row.circuit_open_until, now)
        )

    async def take_tokens(self, destination: str, rate: float, tokens: float) -> LimitGrant:
        if rate <= 0 or tokens <= 0:
            raise ValueError("rate and tokens must be positive")
        await self._enter()
        now = self._now()
        row = self._limits.setdefault(destination, _Row())
        start = _later(row.tat, now)
        row.tat = start + timedelta(seconds=tokens / rate)
        return LimitGrant((start - now).total_seconds(), self._state(destination, row, now))

    async def pause_destination(self, destination: str, seconds: float) -> None:
        await self._enter()
        row = self._limits.setdefault(destination, _Row())
        until = self._now() + timedelta(seconds=max(0.0, seconds))
        row.paused_until = _later(row.paused_until, until)

    async def open_circuit(self, destination: str, seconds: float) -> None:
        await self._enter()
        row = self._limits.setdefault(destination, _Row())
        until = self._now() + timedelta(seconds=max(0.0, seconds))
        row.circuit_open_until = _later(row.circuit_open_until, until)

    async def destination_limits(self, destinations: Sequence[str]) -> dict[str, DestinationLimits]:
        await self._enter()
        now = self._now()
        return {
            name: self._state(name, self._limits.get(name, _Row()), now)
            for name in dict.fromkeys(destinations)
        }

    async def heartbeat(self, owner: str, live_s: float) -> int:
        await self._enter()
        now = self._now()
        self._replicas[owner] = now
        since = now - timedelta(seconds=live_s)
        return sum(seen > since for seen in self._replicas.values())

    async def leave(self, owner: str) -> None:
        await self._enter()
        self._replicas.pop(owner, None)
