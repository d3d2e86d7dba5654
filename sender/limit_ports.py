"""``SharedLimits``: the optional ledger ability that makes a destination's limits one state
for every replica sharing the ledger (PostgreSQL; the memory ledger for tests). Re-exported
by ``sender.ledger_ports`` and ``sender.ports``; the client side (leases of tokens, the
poller, the fallback when the ledger is lost) is ``sender.shared_limits``; the contract
suite is ``sender.testing.SharedLimitsContract``.

Times cross the port as *seconds from the ledger's now* (``start_in_s``, ``paused_for_s``),
never as instants: replicas' clocks need not agree, only the ledger's clock counts, and a
replica turns each figure into its own monotonic time when the answer arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

__all__ = ["DestinationLimits", "LimitGrant", "SharedLimits"]


@dataclass(frozen=True, slots=True)
class DestinationLimits:
    """A destination's shared state now: how long it stays paused (a receiver's
    ``Retry-After``) and how long its circuit stays open, in seconds (0: not)."""

    destination: str
    paused_for_s: float = 0.0
    circuit_open_for_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitGrant:
    """Tokens granted by ``take_tokens``: they are the caller's slice of the destination's
    timeline, ``start_in_s`` (>= 0) from the ledger's now for ``tokens / rate`` seconds. The
    destination's pause and circuit come along, so a busy replica learns of them at once."""

    start_in_s: float
    limits: DestinationLimits


@runtime_checkable
class SharedLimits(Protocol):
    """Optional for a ledger: destination limits shared by every replica (see module).

    Rows are keyed by destination name, so replicas must name a destination alike. Every
    method is one transaction; ``LedgerError`` when the store is unreachable.
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def aclose(self) -> None: ...

    async def take_tokens(self, destination: str, rate: float, tokens: float) -> LimitGrant:
        """Grant ``tokens`` of a limit of ``rate`` tokens per second (GCRA, in one atomic
        step): the slice starts at ``max(tat, now)`` and the destination's theoretical
        arrival time ``tat`` moves to the slice's end. Slices never overlap, whoever asks."""
        ...

    async def pause_destination(self, destination: str, seconds: float) -> None:
        """Pause the destination until ``seconds`` from now, unless paused longer already."""
        ...

    async def open_circuit(self, destination: str, seconds: float) -> None:
        """Hold the destination's circuit open until ``seconds`` from now, unless it is held
        open longer already."""
        ...

    async def destination_limits(self, destinations: Sequence[str]) -> dict[str, DestinationLimits]:
        """The state of each destination named (all zeros for one never limited)."""
        ...

    async def heartbeat(self, owner: str, live_s: float) -> int:
        """Record that ``owner`` (a replica) is alive now; the number of replicas seen within
        the last ``live_s`` seconds, ``owner`` included."""
        ...

    async def leave(self, owner: str) -> None:
        """``owner`` stops (it no longer counts as live); unknown owners are ignored."""
        ...
