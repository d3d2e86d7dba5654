"""Hooks: how progress bars, logs and metrics learn what the engine does, without being able
to break delivery. A hook that raises is logged and ignored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .log import get_logger

__all__ = ["Hooks", "MultiHooks"]

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


class MultiHooks(Hooks):
    """Fans every call out to several hooks; one failing never stops the others."""

    def __init__(self, hooks: Sequence[Hooks] = ()) -> None:
        self.hooks = list(hooks)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args, **kwargs)
            except Exception:
                log.warning("hook.failed", hook=type(hook).__name__, method=name, exc_info=True)

    def batch_started(self, *args: Any) -> None:
        self._call("batch_started", *args)

    def records_read(self, *args: Any) -> None:
        self._call("records_read", *args)

    def chunk_done(self, *args: Any, **kwargs: Any) -> None:
        self._call("chunk_done", *args, **kwargs)

    def fallback(self, *args: Any) -> None:
        self._call("fallback", *args)

    def batch_finished(self, *args: Any) -> None:
        self._call("batch_finished", *args)
