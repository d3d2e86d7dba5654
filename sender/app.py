"""The composition root: builds the ledger, sources, targets and engine from the config by
looking adapters up in the registry, and owns them in one ``AsyncExitStack``.

A ledger with ``SharedLimits`` (PostgreSQL) makes every target's limits shared by the
replicas (``sender.shared_limits``): the client and its poller live on the same stack,
closed before the targets and the ledger they use."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from .config import AppConfig
from .engine import Engine
from .errors import SenderError
from .hooks import Hooks
from .metered_ledger import metered
from .metrics import Metrics
from .ports import Checkable, Destination, Ledger, LedgerBound, SharedLimits, Source, Trigger
from .registry import ledger_class
from .shared_limits import SharedLimitsClient
from .targets import Target

__all__ = ["App", "checkable_dead_letters", "dead_letter_problems", "open_ledger", "open_trigger"]


def open_ledger(url: str) -> Ledger:
    """The ledger for ``daemon.ledger``, of the registered class that serves the URL's scheme
    (not yet opened: use it as an async context manager). ``ConfigError`` when no ledger
    serves it."""
    _, cls = ledger_class(url)
    return cls.from_url(url)


class App:
    """Everything a run needs, opened from a config; close it with ``aclose()`` or ``async with``.

    Sources are opened lazily (a batch in ``gs://`` opens the GCS client on first use), so the
    local demo never imports a cloud SDK. ``metrics`` is what the targets and the ledger report
    to; without one the app measures on a registry of its own that nobody serves.
    """

    def __init__(
        self, config: AppConfig, *, hooks: Hooks | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.hooks = hooks or Hooks()
        self.metrics = metrics or Metrics(CollectorRegistry())
        self._stack = contextlib.AsyncExitStack()
        self._sources: dict[str, Source] = {}
        # counts LedgerErrors per operation in sender_ledger_errors_total
        self.ledger: Ledger = metered(
            open_ledger(config.daemon.ledger), on_error=self.metrics.ledger_error
        )
        self.targets: dict[str, Target] = {}  # filled on enter
        # the limits shared by every replica, when the ledger can share them (PostgreSQL)
        self.shared_limits: SharedLimitsClient | None = None
        self.engine = Engine(config, self.ledger, self.targets, self.source_for, hooks=self.hooks)

    async def __aenter__(self) -> App:
        try:
            await self._stack.enter_async_context(self.ledger)
            for name, section in self.config.destinations.items():
                destination = section.build()
                self._stack.push_async_callback(destination.aclose)
                self.targets[name] = Target(
                    name, destination, section.options, metrics=self.metrics
                )
            if isinstance(self.ledger, SharedLimits):
                shared = SharedLimitsClient(self.ledger, self.engine.owner)
                for target in self.targets.values():
                    shared.attach(target)
                self.shared_limits = await self._stack.enter_async_context(shared)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def source_for(self, uri: str) -> Source:
        section = self.config.source_for(uri)
        source = self._sources.get(section.name)
        if source is None:
            source = section.build()
            self._stack.push_async_callback(source.aclose)
            self._sources[section.name] = source
        return source


def open_trigger(config: AppConfig, ledger: Ledger | None = None) -> Trigger:
    """The configured trigger, not yet used; bound to ``ledger`` (the daemon's) when given.

    A ``LedgerBound`` trigger gets ``bind(ledger, daemon)`` called here: the ``http`` trigger
    keeps its inbox in the ledger, and without one (``sender trigger``) POSTs to the daemon at
    ``daemon.listen``.
    """
    trigger = config.trigger.build()
    if isinstance(trigger, LedgerBound):
        trigger.bind(ledger, config.daemon)
    return trigger


def checkable_dead_letters(app: App) -> list[tuple[str, Checkable]]:
    """The dead-letter stores that can say whether they take chunks now (``/readyz``)."""
    names = {app.config.dead_letter_of(route) for route in app.config.routes}
    stores: list[tuple[str, Destination]] = [
        (name, app.targets[name].destination) for name in sorted(names)
    ]
    return [(name, store) for name, store in stores if isinstance(store, Checkable)]


async def dead_letter_problems(stores: list[tuple[str, Checkable]]) -> list[str]:
    """Why each of ``stores`` (``checkable_dead_letters``) cannot take a chunk now."""
    problems = []
    for name, store in stores:
        try:
            await store.check()
        except SenderError as exc:
            problems.append(f"dead-letter store {name}: {exc}")
    return problems
