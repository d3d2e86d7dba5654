"""Several ``sender run`` replicas on one RabbitMQ queue and one PostgreSQL ledger, sending
to one rate-limited receiver: their config, starting them, and the rates the receiver saw.
Shared by tests/test_replica_limits.py and tests/test_replicas_combined.py.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from sender.testing.receiver import ReceivedRequest, Receiver
from tests.brokers import AMQP_URL, DaemonProcess, free_port
from tests.test_rate_window import most_in_window
from tests.test_scale_out import _require_rabbitmq

NAMES = ("replica-a", "replica-b", "replica-c")

# every request says which replica sent it (X-Replica); ``daemon_extra``: more [daemon]
# lines; ``extra``: more tables at the end
_CONFIG = """\
[daemon]
ledger = "{ledger}"
listen = "127.0.0.1:{port}"
max_batches = 2
shutdown_grace = "10s"
allow_uris = ["{lake}/"]
{daemon_extra}

[trigger]
type = "amqp"
url = "{amqp}"
queue = "{queue}"
prefetch = 2

[destinations.api]
type = "http"
url = "{receiver}/scores"
compression = "none"
concurrency = 4
rate_limit = "{rate:g}/s"
headers = {{ "X-Replica" = "{name}" }}
retry = {{ attempts = 3, initial = "10ms", max = "50ms", budget = "30s" }}
circuit = {{ failures = 3, reset = "30s" }}

[destinations.dead]
type = "local"
path = "dead"

[routes.churn]
datasets = ["churn"]
chunk = {{ records = 5 }}
targets = ["api"]
dead_letter = "dead"
{extra}
"""

_HOSTNAME_SHIM = Path(__file__).parent / "hostname"


def limited_replica(
    folder: Path,
    *,
    ledger: str,
    queue: str,
    receiver: Receiver,
    rate: float,
    daemon_extra: str = "",
    extra: str = "",
    own_host: bool = False,
) -> DaemonProcess:
    """The replica named ``folder.name`` (its config in ``folder``; the lake beside it).
    ``own_host``: it runs under its own host name, as a pod on another host would."""
    folder.mkdir(parents=True)
    config = folder / "sender.toml"
    config.write_text(
        _CONFIG.format(
            ledger=ledger,
            port=free_port(),
            amqp=AMQP_URL,
            queue=queue,
            receiver=receiver.url,
            rate=rate,
            name=folder.name,
            lake=folder.parent / "lake",
            daemon_extra=daemon_extra,
            extra=extra,
        )
    )
    env = {}
    if own_host:
        path = os.pathsep.join(p for p in (str(_HOSTNAME_SHIM), os.environ.get("PYTHONPATH")) if p)
        env = {"PYTHONPATH": path, "SENDER_TEST_HOSTNAME": folder.name}
    return DaemonProcess(config, env=env)


@asynccontextmanager
async def connected(processes: Sequence[DaemonProcess]) -> AsyncIterator[list[DaemonProcess]]:
    """``processes`` started and connected to the broker; killed on the way out if still
    running (stop them in the block to check how they end)."""
    await _require_rabbitmq()
    try:
        for process in processes:
            await process.start()
        async with asyncio.timeout(60):
            for process in processes:
                await process.wait_for_event("amqp.connected")
        yield list(processes)
    except BaseException:
        for process in processes:  # what each was doing, in the failed test's output
            print(f"--- {process.config.parent.name}\n{process.tail(40)}")
        raise
    finally:
        for process in processes:
            await process.kill()


def replica_of(request: ReceivedRequest) -> str:
    """Which replica sent the request, by its X-Replica header."""
    return request.headers.get("X-Replica", "?")


def rates(
    requests: list[ReceivedRequest], sender_of: Callable[[ReceivedRequest], object] = replica_of
) -> str:
    """Requests per second the receiver saw from each replica and in total (busy time), and
    the busiest windows of one and two seconds."""
    times = [r.received_at for r in requests]
    seconds = max(times) - min(times)
    counts = collections.Counter(sender_of(r) for r in requests)
    each = ", ".join(f"{who}: {n / seconds:.1f}/s" for who, n in sorted(counts.items(), key=str))
    windows = f"busiest 1 s: {busiest(requests, 1.0, sender_of)}, 2 s: {most_in_window(times, 2.0)}"
    total = f"{len(requests)} requests in {seconds:.1f}s: {len(requests) / seconds:.1f}/s"
    return f"{total} ({each}); {windows}"


def busiest(
    requests: list[ReceivedRequest],
    window_s: float,
    sender_of: Callable[[ReceivedRequest], object] = replica_of,
) -> str:
    """The busiest ``window_s`` window: how many, from whom, starting when (s after the first)."""
    ordered = sorted(requests, key=lambda r: r.received_at)
    best, at, start = 0, 0, 0
    for end, request in enumerate(ordered):
        while request.received_at - ordered[start].received_at >= window_s:
            start += 1
        if end - start + 1 > best:
            best, at = end - start + 1, start
    inside = ordered[at : at + best]
    who = collections.Counter(str(sender_of(r)) for r in inside)
    since = inside[0].received_at - ordered[0].received_at if inside else 0.0
    return f"{best} at +{since:.2f}s {dict(sorted(who.items()))}"
