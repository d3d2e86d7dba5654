"""``sender demo``: the embedded default, end to end, on this machine alone.

It writes a small churn-score batch (Spark layout, one bad line in it), starts a receiver that
answers 503 and 429 now and then and is down for one chunk, drops a trigger message in the
spool queue, runs the daemon until the queue is empty, and prints what happened: retries, the
fallback, the dead-lettered bad record and the reconciliation.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import orjson
from rich.console import Console

from .config import load_config
from .errors import ConfigError
from .model import BatchState, TriggerMessage
from .ports import ChunkRecord
from .testing.receiver import Receiver

__all__ = ["find_demo_config", "run_demo", "write_demo_batch"]

console = Console(highlight=False)

_DOWN_FOR_CHUNK = "3"  # the receiver refuses this chunk every time: it takes the fallback


def find_demo_config(explicit: str | None) -> Path:
    """``-c`` if given, else ``config/local.toml`` here or beside the installed package."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [
            Path("config/local.toml"),
            Path(__file__).resolve().parents[1] / "config" / "local.toml",
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{candidates[0]}: no such config file (run from the repository)")


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_demo(config_path: str | None = None, *, records: int = 20_000) -> int:
    from .app import open_ledger
    from .daemon import serve
    from .log import configure_logging
    from .status import batch_detail

    path = find_demo_config(config_path)
    workdir = path.resolve().parent.parent / "var" / "demo"
    shutil.rmtree(workdir, ignore_errors=True)
    batch = workdir / "batches" / "churn" / "2026-11-24"
    write_demo_batch(batch, records)

    async with Receiver() as receiver:
        os.environ["DEMO_RECEIVER_PORT"] = str(receiver.port)
        os.environ.setdefault("SENDER_LISTEN_PORT", str(_free_port()))
        config = load_config(path)
        configure_logging(config.daemon.log_level)
        receiver.fail_ratio(0.15, seed=7, statuses=(503, 429, 503))
        receiver.fail_where(
            lambda request: request.headers.get("X-Sender-Chunk") == _DOWN_FOR_CHUNK, status=503
        )

        console.rule("[bold]integration-sender demo")
        console.print(f"batch     {batch}  ({records:,} records + 1 corrupt line, 4 parts)")
        console.print(f"receiver  {receiver.url}  (15% 503/429, down for chunk {_DOWN_FOR_CHUNK})")
        console.print(f"config    {path}")
        console.rule()
        trigger = config.trigger.cls(config.trigger.options)
        await trigger.publish(
            TriggerMessage(batch_id="churn-2026-11-24", dataset="churn", uri=str(batch))
        )
        await trigger.aclose()
        await serve(config, burst=True)

    async with open_ledger(config.daemon.ledger) as ledger:
        record = await ledger.get_batch("churn-2026-11-24")
        chunks = await ledger.chunks("churn-2026-11-24")
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
    console.print(f"\ninbox (fallback): {workdir / 'inbox'}")
    console.print(f"dead letters:     {workdir / 'dead-letter'}")
    console.print(f"inspect later:    sender status -c {path} churn-2026-11-24")
    ok = record.state is BatchState.COMPLETE and record.totals.reconciled
    console.rule("[green]demo ok" if ok else "[red]demo failed")
    return 0 if ok else 1
