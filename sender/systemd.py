"""The sd_notify protocol, spoken directly: a datagram to ``$NOTIFY_SOCKET``, no dependency.

Under ``Type=notify`` systemd waits for ``READY=1`` before it calls the service started, and
with ``WatchdogSec=`` it restarts the service when ``WATCHDOG=1`` pings stop coming. Outside
systemd (``NOTIFY_SOCKET`` unset) every call is a silent no-op, so the daemon calls these
unconditionally::

    notifier = SystemdNotifier()
    watchdog = asyncio.create_task(notifier.watchdog_task())
    notifier.ready(status="consuming amqp")      # once the trigger is connected
    notifier.status("2 batches in flight")
    notifier.stopping(status="draining")          # on SIGTERM
    watchdog.cancel()

or all of it in one task, ``notifier.supervise(daemon.readiness, daemon.stopping)``.

A notification is one datagram of ``KEY=value`` lines. An address starting with ``@`` is in
the Linux abstract namespace. Sending never raises: a lost notification must not stop
delivery (systemd then times the service out, which is the right failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence

from .log import get_logger

__all__ = ["SystemdNotifier", "notify"]

log = get_logger("sender.systemd")


def _format(fields: Mapping[str, object]) -> bytes:
    lines = []
    for key, value in fields.items():
        if value is None:
            continue
        if value is True:
            value = 1
        # one line per field: a newline inside a value would start a bogus field
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{key.upper()}={text}")
    return "\n".join(lines).encode()


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class SystemdNotifier:
    """Talks to systemd's notify socket (``socket_path``, default ``$NOTIFY_SOCKET``).

    ``watchdog_usec`` defaults to ``$WATCHDOG_USEC`` (set by ``WatchdogSec=``); it is ignored
    when ``$WATCHDOG_PID`` names another process, as sd_watchdog_enabled(3) prescribes.
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        watchdog_usec: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = socket_path if socket_path is not None else env.get("NOTIFY_SOCKET")
        if watchdog_usec is None:
            watchdog_usec = _watchdog_from(env)
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a socket to talk to (running under ``Type=notify``)."""
        return bool(self.socket_path)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog timeout; None without a watchdog."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=value`` fields (keys upper-cased; ``True`` is ``1``; None left out).
        True if the datagram went out; False when disabled or on any socket error."""
        if not self.socket_path:
            return False
        data = _format(fields)
        if not data:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, _address(self.socket_path))
        except OSError as exc:
            log.warning("systemd.notify_failed", socket=self.socket_path, error=str(exc))
            self.close()
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup is finished (the trigger is connected)."""
        return self.notify(READY=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: draining for shutdown."""
        return self.notify(STOPPING=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=...``: a line ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive."""
        return self.notify(WATCHDOG=1)

    async def watchdog_task(self, alive: Callable[[], bool] | None = None) -> None:
        """Ping every ``watchdog_interval`` while ``alive()`` (default: always) says so; return
        at once when there is no watchdog. Run it as a task and cancel it on shutdown.

        The pings come from the event loop itself, so a loop that hangs stops them and systemd
        restarts the service; ``alive`` lets the daemon also withhold them when its own loop
        is stuck (no trigger progress)."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            healthy = True
            if alive is not None:
                try:
                    healthy = bool(alive())
                except Exception:
                    log.warning("systemd.alive_check_failed", exc_info=True)
                    healthy = False
            if healthy:
                self.watchdog()
            await asyncio.sleep(interval)

    async def supervise(
        self,
        readiness: Callable[[], Awaitable[Sequence[str]]],
        stopping: asyncio.Event,
        *,
        status: Callable[[], str] | None = None,
        poll_s: float = 0.5,
        status_every_s: float = 5.0,
    ) -> None:
        """The daemon's whole conversation with systemd, as one task::

            task = asyncio.create_task(
                notifier.supervise(daemon.readiness, daemon.stopping,
                                   status=lambda: f"{len(daemon.active)} batches in flight")
            )
            try:
                return await daemon.run()
            finally:
                task.cancel()

        Pings the watchdog throughout; sends ``STATUS=starting: <problems>`` until
        ``readiness()`` (the ``/readyz`` check) reports none, then ``READY=1``; then a
        ``STATUS=`` line (``status()``, or the readiness problems) when it changes; and
        ``STOPPING=1`` once ``stopping`` is set, pinging on while the daemon drains. Returns at
        once when not under systemd. Never raises (but is cancellable).
        """
        if not self.enabled:
            return
        watchdog = asyncio.create_task(self.watchdog_task())
        try:
            last = ""
            ready = False
            while not stopping.is_set():
                problems = await self._problems(readiness)
                if not ready and not problems:
                    ready = True
                    last = self._status_text(status, problems)
                    self.ready(status=last)
                    continue
                text = (
                    f"starting: {'; '.join(problems)}"
                    if not ready
                    else self._status_text(status, problems)
                )
                if text != last:
                    self.status(text)
                    last = text
                wait = poll_s if not ready else status_every_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), wait)
            self.stopping(status="draining: finishing the chunks in flight")
            await asyncio.Event().wait()  # keep the watchdog pinging until cancelled
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    @staticmethod
    async def _problems(readiness: Callable[[], Awaitable[Sequence[str]]]) -> list[str]:
        try:
            return list(await readiness())
        except Exception as exc:
            return [f"readiness check failed: {exc}"]

    @staticmethod
    def _status_text(status: Callable[[], str] | None, problems: Sequence[str]) -> str:
        if problems:
            return f"degraded: {'; '.join(problems)}"
        if status is None:
            return "ready"
        try:
            return status()
        except Exception:
            log.warning("systemd.status_failed", exc_info=True)
            return "ready"

    def close(self) -> None:
        """Close the socket (a later notification opens a new one)."""
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.close()


def _watchdog_from(env: Mapping[str, str]) -> int | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec)


def notify(**fields: object) -> bool:
    """One notification to ``$NOTIFY_SOCKET`` (e.g. ``notify(READY=1, STATUS="up")``); a
    silent no-op returning False when the variable is unset."""
    notifier = SystemdNotifier()
    try:
        return notifier.notify(**fields)
    finally:
        notifier.close()
