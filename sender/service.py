"""A daemon built from a config and run: ``open_daemon(config)`` opens the app, the trigger,
the control server (metrics, status page) and the daemon, closed in reverse order on exit
(tests and embedding: ``async with open_daemon(config) as daemon: await daemon.run()``);
``serve(config)`` is ``sender run``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .app import App, open_trigger
from .config import AppConfig
from .control import ControlServer
from .daemon import Daemon
from .errors import ConfigError
from .hooks import Hooks, MultiHooks
from .live import LiveStatus
from .metrics import Metrics, process_registry
from .ports import TokenAccepting
from .statusdata import StatusSource
from .statuspage import StatusPage
from .systemd import SystemdNotifier

__all__ = ["open_daemon", "serve"]


@contextlib.asynccontextmanager
async def open_daemon(
    config: AppConfig, *, burst: bool = False, hooks: Hooks | None = None
) -> AsyncIterator[Daemon]:
    """The app, trigger, control server and daemon of ``config``, closed in reverse order on
    exit. ``daemon.control.port`` is the control server's port (useful with ``:0``)."""
    # every daemon exports its metrics (/metrics), on a registry of its own, from the engine's
    # hooks and its targets, beside the process metrics the default registry had
    metrics = Metrics(process_registry())
    # and its status page from them too
    live = LiveStatus()
    engine_hooks = MultiHooks([metrics.hooks(), live, *([hooks] if hooks is not None else [])])
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(App(config, hooks=engine_hooks, metrics=metrics))
        trigger = open_trigger(config, app.ledger)
        stack.push_async_callback(trigger.aclose)
        daemon = Daemon(app, trigger, burst=burst)
        token = config.daemon.token.get_secret_value() if config.daemon.token else None
        source = StatusSource(
            config, app.ledger, app.targets, live, lambda: daemon.active, daemon.readiness
        )
        control = ControlServer(
            app.ledger,
            readiness=daemon.readiness,
            accept=daemon.accept,
            token=token,
            accept_token=trigger.accept_token if isinstance(trigger, TokenAccepting) else None,
            registry=metrics.registry,
            page=StatusPage(source, token),
            notes=daemon.notes,
        )
        stack.push_async_callback(control.stop)
        try:
            await control.start(config.daemon.host, config.daemon.port)
        except OSError as exc:
            raise ConfigError(
                f"daemon.listen: cannot listen on {config.daemon.listen}: {exc.strerror or exc}"
            ) from exc
        daemon.control = control
        yield daemon


async def serve(config: AppConfig, *, burst: bool = False, hooks: Hooks | None = None) -> int:
    """``sender run``: open everything from the config, serve until stopped, close in reverse.

    Under systemd (``NOTIFY_SOCKET``) the daemon reports
    READY=1 once ready, pings the watchdog, and says STOPPING=1 when it drains."""
    notifier = SystemdNotifier()
    async with open_daemon(config, burst=burst, hooks=hooks) as daemon:
        supervisor = asyncio.create_task(
            notifier.supervise(
                daemon.readiness,
                daemon.stopping,
                status=lambda: f"{len(daemon.active)} batches in flight",
            )
        )
        try:
            return await daemon.run()
        finally:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
            notifier.close()
    raise AssertionError("unreachable")
