"""Config and batch helpers shared by the chaos scenarios."""

from __future__ import annotations

from pathlib import Path

from sender.model import TriggerMessage
from tests.batches import write_batch

__all__ = ["FAST_RETRY", "config_text", "http_destination", "ids", "make_batch"]

FAST_RETRY = '{ attempts = 6, initial = "10ms", max = "50ms", budget = "1m" }'


def http_destination(name: str, url: str, **options: str) -> str:
    """A ``[destinations.<name>]`` table for an HTTP receiver; ``options`` are raw TOML values
    that replace the defaults (fast retries, a timeout no loaded machine reaches)."""
    values = {
        "type": '"http"',
        "url": f'"{url}"',
        "compression": '"zstd"',
        # well above what a loaded 2-core CI machine takes to answer: a chunk that times out is
        # resent, and the duplicate checks would count the resend against the sender
        "timeout": '"5s"',
        "retry": FAST_RETRY,
        **options,
    }
    body = "\n".join(f"{key} = {value}" for key, value in values.items())
    return f"[destinations.{name}]\n{body}\n"


def config_text(
    *destinations: str,
    targets: list[str],
    records: int = 250,
    dead: str = "dead",
    daemon: str = "",
    trigger: str = "",
    route: str = "",
) -> str:
    """A whole config: ``destinations`` (tables), a local dead-letter store at ``dead`` and one
    route ``churn`` over ``targets``."""
    target_list = ", ".join(f'"{t}"' for t in targets)
    return "\n".join(
        [
            '[daemon]\nledger = "ledger.db"',
            daemon,
            trigger,
            *destinations,
            f'[destinations.dead]\ntype = "local"\npath = "{dead}"\n'
            'retry = { attempts = 2, initial = "10ms", max = "10ms" }\n',
            "[routes.churn]",
            'datasets = ["churn"]',
            f"chunk = {{ records = {records} }}",
            f"targets = [{target_list}]",
            'dead_letter = "dead"',
            route,
        ]
    )


def make_batch(folder: Path, records: int, batch_id: str) -> TriggerMessage:
    write_batch(folder, records, parts=4)
    return TriggerMessage(batch_id=batch_id, dataset="churn", uri=str(folder))


def ids(count: int) -> set[str]:
    return {f"cust-{i:08d}" for i in range(count)}
