"""A SQLite ledger's identity, so that a ledger lost while the daemon was down is not taken
for a first start.

A deleted ledger file cannot be told from one never created, and a daemon that starts on an
empty ledger sends again every batch the lost one recorded complete. So the file holds a
random id (table ``ledger_identity``, one row, written the first time a file is opened) and a
small marker beside it, ``<ledger>.id`` (JSON: the id, when it was created, the path), names
it. At open:

- no file, no marker: a first start; the file and its marker are created (zero setup);
- a file and its marker, with the same id: the ledger it was;
- no file but a marker: the ledger is gone (``LedgerLost``);
- a file without an id, or with another id, and a marker: it was replaced (``LedgerLost``);
- a file without a marker (a ledger older than the marker, or the marker deleted): the
  marker is written for the file's id.

Starting afresh on purpose is deleting the marker (``LedgerLost`` says so). A ``:memory:``
ledger has neither.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from datetime import datetime
from pathlib import Path

import orjson

from sender.errors import LedgerLost

__all__ = ["check_marker", "claim_identity", "marker_path"]

_TABLE = """
    CREATE TABLE IF NOT EXISTS ledger_identity (
        id         TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
"""


def marker_path(path: str) -> Path:
    """``<ledger>.id``: the marker beside the ledger file."""
    return Path(path + ".id")


def _read_marker(path: str) -> dict[str, str] | None:
    marker = marker_path(path)
    try:
        body = orjson.loads(marker.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise LedgerLost(
            f"ledger {path}: its marker {marker} cannot be read ({exc}); restore it, or "
            "delete it to use the ledger file as it is"
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("ledger_id"), str):
        raise LedgerLost(
            f"ledger {path}: its marker {marker} names no ledger_id; restore it, or delete "
            "it to use the ledger file as it is"
        )
    return {str(k): str(v) for k, v in body.items()}


def _fresh_start(marker: Path) -> str:
    return (
        f"Restore the file (with its -wal file), or, to start with an empty ledger on "
        f"purpose (the batches the lost one recorded may be sent again), delete {marker}"
    )


def check_marker(path: str) -> None:
    """Before the file is opened: ``LedgerLost`` when it is gone but its marker says a
    ledger was created there (opening would create an empty one)."""
    if os.path.exists(path):
        return
    marker = _read_marker(path)
    if marker is None:
        return
    raise LedgerLost(
        f"ledger {path} is gone, but {marker_path(path)} says ledger "
        f"{marker['ledger_id']} was created there at {marker.get('created_at', '?')}: "
        "starting on an empty ledger would send again every batch it recorded. "
        + _fresh_start(marker_path(path))
    )


def claim_identity(conn: sqlite3.Connection, path: str, now: datetime) -> None:
    """After the file is opened and migrated: give it an id if it has none (one transaction,
    so two processes opening a new file agree), then check it against the marker, or write
    the marker. ``LedgerLost`` when the file is not the ledger the marker names."""
    marker = _read_marker(path)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_TABLE)
        row = conn.execute("SELECT id, created_at FROM ledger_identity").fetchone()
        if row is None and marker is None:
            row = (secrets.token_hex(16), now.isoformat(timespec="seconds"))
            conn.execute("INSERT INTO ledger_identity (id, created_at) VALUES (?, ?)", row)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if marker is None:
        _write_marker(path, str(row[0]), str(row[1]))
        return
    if row is None or row[0] != marker["ledger_id"]:
        found = "has no ledger id" if row is None else f"is ledger {row[0]}"
        raise LedgerLost(
            f"ledger {path} was replaced: the file {found}, but {marker_path(path)} names "
            f"ledger {marker['ledger_id']} (created {marker.get('created_at', '?')}). "
            + _fresh_start(marker_path(path))
        )


def _write_marker(path: str, ledger_id: str, created_at: str) -> None:
    marker = marker_path(path)
    body = orjson.dumps(
        {"ledger_id": ledger_id, "created_at": created_at, "path": str(Path(path).resolve())},
        option=orjson.OPT_INDENT_2,
    )
    partial = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as file:
            file.write(body + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, marker)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
