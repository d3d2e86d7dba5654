"""sd_notify against a real AF_UNIX datagram socket, as systemd listens on one."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sender import systemd
from sender.systemd import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in tmp_path, like systemd's /run/systemd/notify."""
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        yield sock, path


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


async def receive(sock: socket.socket) -> dict[str, str]:
    async with asyncio.timeout(5):
        return fields(await asyncio.get_running_loop().sock_recv(sock, 4096))


async def test_ready_status_and_stopping_arrive_as_key_value_lines(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": path})

    assert notifier.enabled
    assert notifier.ready(status="consuming amqp")
    assert await receive(sock) == {"READY": "1", "STATUS": "consuming amqp"}
    assert notifier.status("2 batches in flight")
    assert await receive(sock) == {"STATUS": "2 batches in flight"}
    assert notifier.stopping(status="draining")
    assert await receive(sock) == {"STOPPING": "1", "STATUS": "draining"}
    notifier.close()


async def test_a_newline_in_a_value_cannot_inject_a_field(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(path)

    notifier.status("batch b-1 failed\nREADY=1")

    assert await receive(sock) == {"STATUS": "batch b-1 failed READY=1"}
    notifier.close()


async def test_module_notify_reads_notify_socket_from_the_environment(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    assert systemd.notify(READY=1, status="up")

    assert await receive(sock) == {"READY": "1", "STATUS": "up"}


async def test_abstract_namespace_sockets_are_reached_with_an_at_sign() -> None:
    name = f"sender-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        notifier = SystemdNotifier(f"@{name}")

        assert notifier.watchdog()

        assert await receive(sock) == {"WATCHDOG": "1"}
        notifier.close()


async def test_watchdog_task_pings_at_half_the_watchdog_timeout(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())}
    notifier = SystemdNotifier(environ=env)
    assert notifier.watchdog_interval == pytest.approx(0.02)

    task = asyncio.create_task(notifier.watchdog_task())
    try:
        for _ in range(3):
            assert await receive(sock) == {"WATCHDOG": "1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    notifier.close()


async def test_watchdog_pings_stop_while_the_daemon_says_it_is_stuck(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(path, watchdog_usec=100_000)
    checks = 0
    healthy_again = asyncio.Event()

    def alive() -> bool:
        nonlocal checks
        checks += 1
        if checks == 5:
            healthy_again.set()
        return checks >= 5  # stuck for the first four checks

    task = asyncio.create_task(notifier.watchdog_task(alive))
    try:
        async with asyncio.timeout(5):
            await healthy_again.wait()
        assert await receive(sock) == {"WATCHDOG": "1"}
        assert checks >= 5
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # exactly one ping so far: the checks before it sent nothing
    notifier.close()


async def test_everything_is_a_silent_no_op_without_notify_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier()

    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.stopping()
    assert not systemd.notify(READY=1)
    async with asyncio.timeout(1):
        await notifier.watchdog_task()  # returns at once: nothing to ping


def test_a_watchdog_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "n.sock"),
        "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }

    assert SystemdNotifier(environ=env).watchdog_interval is None


def test_a_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))

    assert not notifier.ready()
    assert not notifier.watchdog()
    notifier.close()
    notifier.close()


async def test_supervise_reports_startup_then_ready_then_stopping(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(path, watchdog_usec=0)
    connected = asyncio.Event()
    stopping = asyncio.Event()
    in_flight = 0

    async def readiness() -> list[str]:
        return [] if connected.is_set() else ["trigger: amqp not connected (reconnecting)"]

    task = asyncio.create_task(
        notifier.supervise(
            readiness,
            stopping,
            status=lambda: f"{in_flight} batches in flight",
            poll_s=0.01,
            status_every_s=0.01,
        )
    )
    try:
        assert await receive(sock) == {
            "STATUS": "starting: trigger: amqp not connected (reconnecting)"
        }
        connected.set()
        assert await receive(sock) == {"READY": "1", "STATUS": "0 batches in flight"}
        in_flight = 2
        assert await receive(sock) == {"STATUS": "2 batches in flight"}
        stopping.set()
        assert await receive(sock) == {
            "STOPPING": "1",
            "STATUS": "draining: finishing the chunks in flight",
        }
        assert not task.done()  # it stays, pinging the watchdog through the drain
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    notifier.close()


async def test_supervise_keeps_the_watchdog_fed_while_the_daemon_drains(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier(path, watchdog_usec=20_000)
    stopping = asyncio.Event()
    stopping.set()

    async def readiness() -> list[str]:
        return ["draining: shutting down"]

    task = asyncio.create_task(notifier.supervise(readiness, stopping))
    try:
        seen: list[dict[str, str]] = []
        while sum(m == {"WATCHDOG": "1"} for m in seen) < 3:
            seen.append(await receive(sock))
        assert {"STOPPING": "1", "STATUS": "draining: finishing the chunks in flight"} in seen
        assert not any("READY" in m for m in seen)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    notifier.close()


async def test_supervise_is_a_no_op_outside_systemd() -> None:
    async def readiness() -> list[str]:
        raise AssertionError("not called outside systemd")

    async with asyncio.timeout(1):
        await SystemdNotifier(environ={}).supervise(readiness, asyncio.Event())
