"""Contract suites that every implementation of a port must pass, built-in or third-party.

One suite per port: ``SourceContract`` (``sender.testing.source``), ``DestinationContract``
(``sender.testing.destination``), ``TriggerContract`` (``sender.testing.trigger``), and for
a ledger ``LedgerContract`` (``sender.testing.ledger``) plus, for the optional ledger ports
it implements, ``ReplayLogContract`` (``sender.testing.replay_log``), ``InboxContract``
(``sender.testing.inbox``), ``OutboxContract``, ``DiffStoreContract`` and
``SharedLimitsContract`` (``sender.testing.shared_limits``); each module's docstring says
which fixtures its suite needs.
For example, a ledger with every port::

    import pytest
    from sender.testing import InboxContract, LedgerContract, ReplayLogContract
    from acme_ledger import AcmeLedger

    class TestAcmeLedger(LedgerContract, ReplayLogContract, InboxContract):
        @pytest.fixture
        async def ledger(self, clock):
            async with AcmeLedger("acme://test", clock=clock) as ledger:
                yield ledger

The tests need pytest-asyncio (the classes carry ``pytest.mark.asyncio``; in strict mode
declare the fixtures with ``pytest_asyncio.fixture``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .destination import DestinationContract, make_encoded_chunk
    from .diff import DiffStoreContract
    from .inbox import InboxContract
    from .ledger import LedgerContract
    from .ledger_suite import Clock, make_chunk, make_message
    from .outbox import OutboxContract
    from .replay_log import ReplayLogContract
    from .shards import ShardsContract
    from .shared_limits import SharedLimitsContract
    from .source import SourceContract
    from .trigger import TriggerContract

__all__ = [
    "Clock",
    "DestinationContract",
    "DiffStoreContract",
    "InboxContract",
    "LedgerContract",
    "OutboxContract",
    "ReplayLogContract",
    "ShardsContract",
    "SharedLimitsContract",
    "SourceContract",
    "TriggerContract",
    "make_chunk",
    "make_encoded_chunk",
    "make_message",
]

# where each name lives; imported on first use, so that ``sender.testing.receiver`` (which
# ``sender demo`` runs) needs neither pytest nor the suites
_HOMES = {
    "Clock": "ledger_suite",
    "DestinationContract": "destination",
    "DiffStoreContract": "diff",
    "InboxContract": "inbox",
    "LedgerContract": "ledger",
    "OutboxContract": "outbox",
    "ReplayLogContract": "replay_log",
    "SharedLimitsContract": "shared_limits",
    "ShardsContract": "shards",
    "SourceContract": "source",
    "TriggerContract": "trigger",
    "make_chunk": "ledger_suite",
    "make_encoded_chunk": "destination",
    "make_message": "ledger_suite",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
