"""Hooks: how progress bars, logs and metrics learn what the engine does, without being able
to break delivery.

The caller isolates its hooks (STYLE.md #24): the engine wraps whatever hooks it is given in
``isolated`` (the replayer does the same with its own hooks through ``HookGuard``). A hook that
raises is logged once per hook and kind of call — with its traceback the first time, so a bug
is seen, and silently counted after that, so a broken progress bar does not flood the log —
and the delivery goes on as if it had returned.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from functools import partial

from .log import get_logger

__all__ = ["HookGuard", "Hooks", "MultiHooks", "isolated"]

log = get_logger("sender.hooks")


class Hooks:
    """Override what you need; every method is called on the event loop and must not block."""

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None: ...

    def records_read(self, batch_id: str, count: int, size: int) -> None: ...

    def chunk_done(
        self,
        batch_id: str,
        route: str,
        state: str,
        target: str | None,
        records: int,
        raw_size: int,
        wire_size: int,
        kind: str = "data",
    ) -> None:
        """A chunk reached ``state``; ``kind`` is "rejects" for a file of bad input records."""

    def fallback(self, route: str, from_target: str, error: str) -> None: ...

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None: ...


class HookGuard:
    """Runs hook calls so that none can raise into its caller. ``failures`` counts the
    failures by ``(hook class, kind)``; the first of each kind is logged as ``hook.failed``."""

    def __init__(self) -> None:
        self.failures: collections.Counter[tuple[str, str]] = collections.Counter()

    def call(self, hook: object, kind: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception:
            key = (type(hook).__name__, kind)
            self.failures[key] += 1
            if self.failures[key] == 1:
                log.warning(
                    "hook.failed",
                    hook=key[0],
                    method=kind,
                    note="logged once; later failures of this hook and method are not",
                    exc_info=True,
                )


class MultiHooks(Hooks):
    """Fans every call out to several hooks; one failing never stops the others, nor the
    caller."""

    def __init__(self, hooks: Sequence[Hooks] = ()) -> None:
        self.hooks = list(hooks)
        self.guard = HookGuard()

    def batch_started(self, batch_id: str, dataset: str, routes: Sequence[str]) -> None:
        for hook in self.hooks:
            self.guard.call(
                hook, "batch_started", partial(hook.batch_started, batch_id, dataset, routes)
            )

    def records_read(self, batch_id: str, count: int, size: int) -> None:
        for hook in self.hooks:
            self.guard.call(hook, "records_read", partial(hook.records_read, batch_id, count, size))

    def chunk_done(
        self,
        batch_id: str,
        route: str,
        state: str,
        target: str | None,
        records: int,
        raw_size: int,
        wire_size: int,
        kind: str = "data",
    ) -> None:
        for hook in self.hooks:
            call = partial(
                hook.chunk_done,
                batch_id,
                route,
                state,
                target,
                records,
                raw_size,
                wire_size,
                kind=kind,
            )
            self.guard.call(hook, "chunk_done", call)

    def fallback(self, route: str, from_target: str, error: str) -> None:
        for hook in self.hooks:
            self.guard.call(hook, "fallback", partial(hook.fallback, route, from_target, error))

    def batch_finished(self, batch_id: str, state: str, duration_s: float) -> None:
        for hook in self.hooks:
            self.guard.call(
                hook, "batch_finished", partial(hook.batch_finished, batch_id, state, duration_s)
            )


def isolated(hooks: Hooks | None) -> Hooks:
    """``hooks`` as the engine calls them: never raising (a ``MultiHooks`` already is)."""
    if hooks is None:
        return Hooks()
    if isinstance(hooks, MultiHooks):
        return hooks
    return MultiHooks([hooks])
