"""``sender demo``: the embedded default, end to end, on this machine alone, from any folder.

It copies its config (shipped in the package, ``sender/demo_data/demo.toml``) to
``./var/demo/sender.toml``, writes a small churn-score batch (Spark layout, one bad line in
it) beside it, starts a receiver that answers 503 and 429 now and then and is down for one
chunk (and a partner webhook on it that is down all along: its circuit opens), drops a
trigger message in the spool queue, runs the daemon until the queue is empty, and prints
what happened: retries, the fallback, the dead-lettered bad record and the
reconciliation. The status page's address is printed first; ``--serve`` keeps the daemon
(and the page) up for a while after the batch, with a slower receiver so that the batch can
be watched while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from importlib import resources
from pathlib import Path

import orjson
from rich.console import Console

from .config import AppConfig, load_config
from .errors import ConfigError
from .model import BatchState, TriggerMessage
from .ports import ChunkRecord
from .testing.receiver import Receiver

__all__ = ["DEMO_DIR", "demo_config_text", "find_demo_config", "run_demo", "write_demo_batch"]

console = Console(highlight=False)

DEMO_DIR = Path("var") / "demo"  # under the working folder
_DOWN_FOR_CHUNK = "3"  # the receiver refuses this chunk every time: it takes the fallback
_BATCH_ID = "churn-2026-11-24"
_LISTEN_PORT = "${SENDER_LISTEN_PORT:-8080}"  # in the packaged config; the copy has the port


def demo_config_text() -> str:
    """The demo's config as shipped in the package."""
    return resources.files("sender").joinpath("demo_data/demo.toml").read_text("utf-8")


def find_demo_config(explicit: str | None, workdir: Path = DEMO_DIR) -> Path:
    """``-c`` if given (it must exist), else the packaged config copied to ``workdir``, with
    the control server's port written in (``$SENDER_LISTEN_PORT``, else 8080 when free, else
    any free port), so that ``sender top -c`` that copy finds the demo from another shell."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sender.toml"
    port = os.environ.get("SENDER_LISTEN_PORT") or str(_free_port(8080))
    path.write_text(demo_config_text().replace(_LISTEN_PORT, port), "utf-8")
    return path


def write_demo_batch(folder: Path, records: int, parts: int = 4) -> int:
    """Churn scores as a Spark job writes them, with one corrupt line; the good record count."""
    folder.mkdir(parents=True, exist_ok=True)
    per_part = -(-records // parts)
    for part in range(parts):
        lines = []
        for i in range(part * per_part, min(records, (part + 1) * per_part)):
            lines.append(
                orjson.dumps(
                    {
                        "id": f"cust-{i:07d}",
                        "score": round((i * 7919 % 10007) / 10007, 4),
                        "model": "churn-v3",
                        "features": {"plan": ("basic", "gold", "pro")[i % 3], "tenure": i % 97},
                    }
                )
            )
        if part == 1:
            lines.insert(17, b'{"id": "cust-broken", "score": 0.')  # a truncated write
        (folder / f"part-{part:05d}-c000.json").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "_SUCCESS").write_bytes(b"")
    return records


def _noteworthy(chunk: ChunkRecord) -> bool:
    return chunk.kind != "data" or chunk.target != "scores_api" or chunk.attempts > 1


def _free_port(preferred: int = 0) -> int:
    """``preferred`` if nothing listens there, else a free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", candidate))
            port: int = sock.getsockname()[1]
            return port
    raise ConfigError("no free port on 127.0.0.1 for the demo's control server")


async def run_demo(
    config_path: str | None = None,
    *,
    records: int = 20_000,
    serve_s: float = 0.0,
    log_format: str | None = None,
) -> int:
    """``sender demo``; ``serve_s`` keeps the daemon and its status page up that long after
    the batch (Ctrl-C ends it sooner)."""
    from .log import configure_logging

    workdir = DEMO_DIR.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    path = find_demo_config(config_path, workdir)
    batch = workdir / "batches" / "churn" / "2026-11-24"
    write_demo_batch(batch, records)

    async with Receiver() as receiver:
        os.environ["DEMO_RECEIVER_PORT"] = str(receiver.port)
        os.environ.setdefault("SENDER_LISTEN_PORT", str(_free_port(8080)))  # for -c FILE
        config = load_config(path)
        configure_logging(
            config.daemon.log_level, log_format=log_format or config.daemon.log_format
        )
        receiver.fail_ratio(0.15, seed=7, statuses=(503, 429, 503))
        receiver.fail_where(
            lambda request: request.headers.get("X-Sender-Chunk") == _DOWN_FOR_CHUNK, status=503
        )
        receiver.fail_where(lambda request: request.path == "/v1/partner", status=503)
        if serve_s:
            receiver.slow(0.8)  # a batch of some seconds, to watch on the page

        console.rule("[bold]integration-sender demo")
        console.print(f"batch     {_shown(batch)}  ({records:,} records + 1 corrupt line, 4 parts)")
        console.print(f"receiver  {receiver.url}  (15% 503/429, down for chunk {_DOWN_FOR_CHUNK})")
        console.print("partner   /v1/partner on the receiver: down (503) all along")
        console.print(f"config    {_shown(path)}")
        console.print(f"page      http://{config.daemon.listen}/")
        console.print(f"top       sender top -c {_shown(path)}")
        console.rule()
        trigger = config.trigger.build()
        await trigger.publish(TriggerMessage(batch_id=_BATCH_ID, dataset="churn", uri=str(batch)))
        await trigger.aclose()
        await _run_daemon(config, serve_s)

    return await _summary(config, path, workdir, receiver)


async def _run_daemon(config: AppConfig, serve_s: float) -> None:
    """Until the queue is empty; with ``serve_s``, until the batch settled and ``serve_s``
    more seconds passed (or the daemon was stopped)."""
    from .service import open_daemon, serve

    if not serve_s:
        await serve(config, burst=True)
        return
    async with open_daemon(config) as daemon:
        task = asyncio.create_task(daemon.run())
        await asyncio.wait(
            [task, asyncio.ensure_future(daemon.wait_settled(1))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not task.done():
            console.print(
                f"batch settled; the page stays up for {serve_s:.0f}s "
                f"at http://{config.daemon.listen}/ (Ctrl-C to stop)"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), serve_s)
        if not task.done():
            daemon.request_stop("demo")
        await task


def _shown(path: Path) -> str:
    """A path as the user would type it from here."""
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


async def _summary(config: AppConfig, path: Path, workdir: Path, receiver: Receiver) -> int:
    from .app import open_ledger
    from .status import batch_detail

    async with open_ledger(config.daemon.ledger) as ledger:
        record = await ledger.get_batch(_BATCH_ID)
        chunks = await ledger.chunks(_BATCH_ID)
    console.rule("[bold]what happened")
    statuses: dict[int, int] = {}
    for request in receiver.requests:
        status = request.status_returned or 0
        statuses[status] = statuses.get(status, 0) + 1
    answers = ", ".join(f"{n} x {s or 'dropped'}" for s, n in sorted(statuses.items()))
    console.print(f"receiver answered {len(receiver.requests)} requests: {answers}")
    console.print(f"receiver holds {len(receiver.unique_records()):,} unique records")
    if record is None:
        console.print("[red]the batch never reached the ledger")
        return 1
    console.print("chunks below: those retried, sent to the fallback or dead-lettered")
    console.print(batch_detail(record, chunks, only=_noteworthy))
    console.print(f"\ninbox (fallback): {_shown(workdir / 'inbox')}")
    console.print(f"dead letters:     {_shown(workdir / 'dead-letter')}")
    console.print(f"inspect later:    sender status -c {_shown(path)} {_BATCH_ID}")
    ok = record.state is BatchState.COMPLETE and record.totals.reconciled
    console.rule("[green]demo ok" if ok else "[red]demo failed")
    return 0 if ok else 1
