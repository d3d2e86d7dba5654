"""What a replay sends: the selectors (``Selection``: dead-lettered chunks, every chunk, or
listed ids, of every route or some, to each route's primary or to ``to``), how they are
spelt and recorded, and what they pick from the ledger's chunks."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..config import AppConfig
from ..errors import SelectionError
from ..model import ChunkState, chunk_sort_key
from ..ports import ChunkRecord
from ..routing import SPLIT_TARGET
from ..units import Rate

__all__ = [
    "Mode",
    "Selection",
    "check_chunk_ids",
    "check_selection",
    "dead_letter_files",
    "parse_chunk_ids",
    "ranges",
    "replay_preview",
    "select_chunks",
    "who_am_i",
]

Mode = Literal["dead-lettered", "all", "chunks"]


def who_am_i() -> str:
    """``user@host``: who a replay is recorded as."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container with an arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def parse_chunk_ids(text: str) -> tuple[str, ...]:
    """``"3,7-9"`` → ``("3", "7", "8", "9")``; ids of pieces of a split chunk (``"7.1"``)
    pass as they are. ``ValueError`` with a readable reason."""
    ids: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if dash:
            if not (first.strip().isdigit() and last.strip().isdigit()):
                raise ValueError(f"{part!r} is not a range like 7-9")
            low, high = int(first), int(last)
            if low > high:
                raise ValueError(f"{part!r}: the range runs backwards")
            if high - low > 100_000:
                raise ValueError(f"{part!r}: too many chunks in one range")
            ids.extend(str(i) for i in range(low, high + 1))
        elif all(piece.isdigit() for piece in part.split(".")):
            ids.append(".".join(str(int(piece)) for piece in part.split(".")))
        else:
            raise ValueError(f"{part!r} is not a chunk number (examples: 3  7-9  3,7-9)")
    if not ids:
        raise ValueError("names no chunk (examples: 3  7-9  3,7-9)")
    return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Selection:
    """What a replay sends, and how."""

    mode: Mode = "dead-lettered"
    chunks: tuple[str, ...] = ()  # with mode "chunks"; "7" also picks its pieces "7.0", "7.1"
    routes: tuple[str, ...] = ()  # empty: every route of the batch
    to: str | None = None  # a destination; None: each route's primary
    rate: Rate | None = None
    dry_run: bool = False
    force: bool = False
    wait_s: float = 0.0

    def picks_route(self, chunk: ChunkRecord) -> bool:
        return not self.routes or chunk.route in self.routes

    def picks(self, chunk: ChunkRecord) -> bool:
        if chunk.kind != "data":
            return False  # bad input records go nowhere but the dead-letter store
        if chunk.target == SPLIT_TARGET:
            return False  # a split chunk travels as its pieces, which have their own rows
        if not self.picks_route(chunk):
            return False
        if self.mode == "dead-lettered":
            return chunk.state is ChunkState.DEAD_LETTERED
        if self.mode == "chunks":
            return any(
                chunk.chunk_id == wanted or chunk.chunk_id.startswith(wanted + ".")
                for wanted in self.chunks
            )
        return True

    def to_dict(self) -> dict[str, Any]:
        """The selectors as recorded in the ledger and shown by ``sender status``."""
        return {
            "mode": self.mode,
            "chunks": ranges(self.chunks) if self.mode == "chunks" else None,
            "routes": list(self.routes) or None,
            "to": self.to,
            "rate": _rate_text(self.rate) if self.rate else None,
            "dry_run": self.dry_run,
            "force": self.force,
        }

    def describe(self) -> str:
        """The selectors as the command line spells them."""
        from ..replay_views import describe_selectors

        return describe_selectors(self.to_dict())


def _rate_text(rate: Rate) -> str:
    """``5/s``, ``100/m``, ``500 records/s``: as typed, not ``5/1s``."""
    unit = " records" if rate.unit == "records" else ""
    per = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(rate.per_s, f"{rate.per_s:g}s")
    return f"{rate.amount:g}{unit}/{per}"


def ranges(ids: Sequence[str]) -> str:
    """``("3", "7", "8", "9")`` → ``"3,7-9"``."""
    out: list[str] = []
    numbers = sorted({int(i) for i in ids if i.isdigit()})
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    out += sorted((i for i in ids if not i.isdigit()), key=chunk_sort_key)
    return ",".join(out)


def select_chunks(chunks: Sequence[ChunkRecord], selection: Selection) -> list[ChunkRecord]:
    """The ledger's chunks the selection picks, in route then natural chunk order."""
    picked = [c for c in chunks if selection.picks(c)]
    picked.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
    return picked


def dead_letter_files(history: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """``(route, chunk) → dead-letter location`` of chunks a replay delivered: the ledger's
    chunk row then points at the target, and the replay history keeps where the file is."""
    found: dict[tuple[str, str], str] = {}
    for replay in history:
        for item in (replay.get("outcome") or {}).get("chunks") or ():
            if item.get("dead_letter") and item.get("state") == "delivered":
                found[(item["route"], item["chunk"])] = item["dead_letter"]
    return found


def replay_preview(chunks: Sequence[ChunkRecord], primaries: Mapping[str, str]) -> dict[str, Any]:
    """What ``sender replay BATCH`` (dead-lettered chunks to each route's primary) would send,
    from the ledger alone: ``{chunks, records, bytes, targets: {name: chunks}}``."""
    picked = select_chunks(chunks, Selection())
    targets: dict[str, int] = {}
    for chunk in picked:
        name = primaries.get(chunk.route, "?")
        targets[name] = targets.get(name, 0) + 1
    return {
        "chunks": len(picked),
        "records": sum(c.records for c in picked),
        "bytes": sum(c.raw_size for c in picked),
        "targets": targets,
    }


def check_selection(config: AppConfig, selection: Selection) -> None:
    """``SelectionError`` when ``--route`` or ``--to`` names what the config does not have
    (or ``--to`` names a dead-letter store)."""
    for route in selection.routes:
        if route not in config.routes:
            known = ", ".join(sorted(config.routes)) or "none"
            raise SelectionError(f"--route: no route {route!r} in the config (known: {known})")
    if selection.to is not None:
        if selection.to not in config.destinations:
            known = ", ".join(sorted(config.destinations))
            raise SelectionError(f"--to: no destination {selection.to!r} (known: {known})")
        dead = {r.dead_letter or config.dead_letter_default for r in config.routes.values()}
        if selection.to in dead:
            raise SelectionError(
                f"--to: {selection.to} is a dead-letter store; name a destination that delivers"
            )


def check_chunk_ids(chunks: Sequence[ChunkRecord], selection: Selection) -> None:
    """``SelectionError`` when ``--chunks`` names a chunk the batch does not have."""
    if selection.mode != "chunks":
        return
    data = [c for c in chunks if c.kind == "data" and selection.picks_route(c)]
    missing = [
        wanted
        for wanted in selection.chunks
        if not any(c.chunk_id == wanted or c.chunk_id.startswith(wanted + ".") for c in data)
    ]
    if missing:
        known = ranges([c.chunk_id for c in data]) or "none"
        raise SelectionError(f"--chunks: the batch has no chunk {ranges(missing)} (it has {known})")
