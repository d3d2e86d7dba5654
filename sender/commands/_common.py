"""What every command shares: the consoles, JSON output, the config, the dead-letter stores."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from rich.console import Console

from ..config import AppConfig, load_config
from ..ports import Destination

__all__ = [
    "Command",
    "Subcommands",
    "console",
    "dead_letter_stores",
    "load",
    "log_format",
    "primaries",
    "print_json",
    "store_of",
]


class _Consoles:
    """Made again for every command (``reset``), so that the width follows $COLUMNS and the
    streams are those of the moment (tests capture them)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.out = Console(highlight=False, soft_wrap=False)
        # errors and notices stay one line, whatever the width: scripts grep them
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)


console = _Consoles()


class Command(Protocol):
    def __call__(self, args: argparse.Namespace, /) -> Coroutine[Any, Any, int]: ...


if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def print_json(data: Any) -> None:
    console.out.print_json(orjson.dumps(data).decode())


def load(args: argparse.Namespace) -> AppConfig:
    return load_config(args.config)


def log_format(args: argparse.Namespace, config: AppConfig | None = None) -> str | None:
    """``--log-format``, else ``[daemon] log_format``, else None (decided by the terminal)."""
    given: str | None = vars(args).get("log_format")
    return given or (config.daemon.log_format if config is not None else None)


def primaries(config: AppConfig) -> dict[str, str]:
    return {name: route.targets[0] for name, route in config.routes.items()}


def store_of(config: AppConfig, route: str, target: str | None = None) -> str | None:
    """The dead-letter store of ``route``'s dead letters: the route's, or for a route no longer
    configured the destination that took them (``target``), if it is still configured."""
    if route in config.routes:
        return config.dead_letter_of(route)
    return target if target in config.destinations else None


@contextlib.asynccontextmanager
async def dead_letter_stores(
    config: AppConfig, names: Iterable[str]
) -> AsyncIterator[dict[str, Destination]]:
    """The configured destinations ``names``, opened for asking about their dead letters."""
    async with contextlib.AsyncExitStack() as stack:
        stores = {}
        for name in sorted(set(names)):
            section = config.destinations[name]
            stores[name] = await stack.enter_async_context(section.build())
        yield stores
