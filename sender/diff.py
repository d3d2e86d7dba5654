"""Diff sync: send only the records that changed since what a route last delivered.

A route with ``diff = { key = ..., ignore = [...], deletes = ... }`` runs in two passes over
its projected records, both in the batch's deterministic read order:

1. **Plan** (``DiffPlanner``): every record's key and content hash go to a scratch SQLite
   file beside the process (never a Python dict: 5 million keys must fit in ~150 MiB); the
   last record of a key wins. The plan is the merge of those keys, sorted, with the route's
   *baseline* (key -> hash of what was last delivered), streamed from the ledger in key
   order: changed and new keys are sent, equal hashes are unchanged, baseline keys the batch
   lacks become tombstones (``deletes``), earlier duplicates are rejected. The plan is stored
   in the ledger with the batch, so a resume after ``kill -9`` and a replay re-create the
   same chunks without looking at the baseline again: it is frozen when the batch starts.
2. **Filter** (``DiffFilter``): the records are read again and each is sent, counted as
   unchanged or rejected as its plan row says; tombstones follow the records.

Records are numbered by their position among the route's projected records (``ordinal``);
the records that are sent are numbered again by their position among the sent ones
(``seq``), which is what chunks are cut from: a chunk holds a contiguous run of seqs, so
the ledger can move exactly the delivered records into the baseline when the batch
completes (``DiffStore.commit_baseline``). A dead-lettered record stays out of it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import orjson

from .chunker import Lines
from .ledger_ports import DiffStore, PlanRow
from .model import BadRecord

__all__ = [
    "DiffFilter",
    "DiffPlanner",
    "DiffSpec",
    "PlanStats",
    "RecordDigest",
    "baseline_pages",
    "tombstone",
]

HASH_BYTES = 16  # blake2b-128: collisions are out of reach for billions of keys
_PAGE = 5000
_MISSING = msgspec.Raw(b"")
_NULL = b"null"


@dataclass(frozen=True, slots=True)
class DiffSpec:
    """A route's ``diff`` option: ``key`` output fields (one or several), ``ignore``d fields
    that do not count as a change, and whether gone keys are sent as tombstones."""

    key: tuple[str, ...]
    ignore: frozenset[str] = frozenset()
    deletes: bool = False


@dataclass(slots=True)
class PlanStats:
    read: int = 0
    send: int = 0
    unchanged: int = 0
    rejected: int = 0
    tombstones: int = 0


class RecordDigest:
    """Key and content hash of projected NDJSON lines, by ``msgspec.Raw`` so that values are
    compared as the exact text they were written as."""

    def __init__(self, spec: DiffSpec) -> None:
        self.spec = spec
        fields = [(f"k{i}", msgspec.Raw, _MISSING) for i in range(len(spec.key))]
        rename = {f"k{i}": name for i, name in enumerate(spec.key)}
        keys = msgspec.defstruct("DiffKey", fields, rename=rename, frozen=True)
        self._keys = msgspec.json.Decoder(keys)
        self._object = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._ignore = spec.ignore

    def digest_block(self, lines: Sequence[bytes]) -> list[tuple[bytes, bytes] | str]:
        """``digest`` of every line: the keys of a block in one decode where they are all
        there (the common case), line by line otherwise."""
        if len(self.spec.key) != 1 or self._ignore:
            return [self.digest(line) for line in lines]
        data = lines.data if isinstance(lines, Lines) else b"\n".join(lines) + b"\n"
        try:
            keys = self._keys.decode_lines(data) if lines else []
        except (msgspec.DecodeError, msgspec.ValidationError):
            return [self.digest(line) for line in lines]
        blake2b = hashlib.blake2b
        out: list[tuple[bytes, bytes] | str] = []
        for line, key in zip(lines, keys, strict=True):
            text = bytes(key.k0)  # type: ignore[attr-defined]
            if text in (b"", _NULL):
                out.append(self.digest(line))  # its reason, worded once
            else:
                out.append((text, blake2b(line, digest_size=HASH_BYTES).digest()))
        return out

    def digest(self, line: bytes) -> tuple[bytes, bytes] | str:
        """``(key, hash)`` of one record, or the reason it has no usable key."""
        try:
            parts = [bytes(part) for part in msgspec.structs.astuple(self._keys.decode(line))]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return f"not a JSON object: {exc}"
        missing = [
            name for name, part in zip(self.spec.key, parts, strict=True) if part in (b"", _NULL)
        ]
        if missing:
            return f"no diff key {', '.join(missing)}"
        key = parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
        return key, self._hash(line)

    def _hash(self, line: bytes) -> bytes:
        if not self._ignore:
            return hashlib.blake2b(line, digest_size=HASH_BYTES).digest()
        items = self._object.decode(line)
        digest = hashlib.blake2b(digest_size=HASH_BYTES)
        for name, value in items.items():
            if name not in self._ignore:
                digest.update(orjson.dumps(name))
                digest.update(b":")
                digest.update(value)
                digest.update(b",")
        return digest.digest()


def tombstone(spec: DiffSpec, key: bytes) -> bytes:
    """``{<key fields>, "_deleted": true}`` for a stored key."""
    parts = (
        [key]
        if len(spec.key) == 1
        else [bytes(p) for p in msgspec.json.decode(key, type=list[msgspec.Raw])]
    )
    body = b",".join(
        orjson.dumps(name) + b":" + part for name, part in zip(spec.key, parts, strict=True)
    )
    return b"{" + body + b',"_deleted":true}'


class DiffPlanner:
    """Pass 1: collects ``(ordinal, key, hash)`` of every projected record in a scratch
    SQLite file, then merges them with the baseline into the plan (``plan``)."""

    def __init__(self, spec: DiffSpec, folder: str | Path | None = None) -> None:
        self.spec = spec
        self._digest = RecordDigest(spec)
        self._dir = tempfile.TemporaryDirectory(prefix="sender-diff-", dir=folder)
        self._db = sqlite3.connect(Path(self._dir.name) / "plan.db", isolation_level=None)
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;
            CREATE TABLE seen (ordinal INTEGER PRIMARY KEY, key BLOB, hash BLOB, reason TEXT);
            """
        )
        self._db.execute("BEGIN")
        self._ordinal = 0
        self.stats = PlanStats()

    def add(self, lines: Sequence[bytes]) -> None:
        """The next projected records, in read order."""
        rows: list[tuple[int, bytes | None, bytes | None, str | None]] = []
        for result in self._digest.digest_block(lines):
            if isinstance(result, str):
                rows.append((self._ordinal, None, None, result))
            else:
                rows.append((self._ordinal, result[0], result[1], None))
            self._ordinal += 1
        self._db.executemany("INSERT INTO seen VALUES (?, ?, ?, ?)", rows)
        self.stats.read += len(rows)

    async def plan(
        self,
        baseline: AsyncIterator[list[tuple[bytes, bytes]]] | None,
        save: Callable[[Sequence[PlanRow]], Awaitable[None]],
    ) -> PlanStats:
        """Merge with the baseline (pages of ``(key, hash)`` in key order, e.g.
        ``baseline_pages``; None for a full refresh) and hand the plan to ``save`` in pages:
        ``send``/``duplicate``/``bad`` rows in ordinal order, then ``delete`` rows."""
        db = self._db
        db.execute("COMMIT")
        db.executescript(
            """
            CREATE TABLE last (key BLOB PRIMARY KEY, ordinal INTEGER, hash BLOB) WITHOUT ROWID;
            -- SQLite takes the bare column (hash) from the row holding the MAX: the last
            INSERT INTO last SELECT key, MAX(ordinal), hash FROM seen
                WHERE key IS NOT NULL GROUP BY key;
            CREATE TABLE decision (ordinal INTEGER PRIMARY KEY, kind TEXT, reason TEXT);
            CREATE TABLE gone (key BLOB PRIMARY KEY) WITHOUT ROWID;
            """
        )
        db.execute("BEGIN")
        # a record whose key comes again later is rejected: the later one wins
        db.execute(
            "INSERT INTO decision SELECT s.ordinal, 'duplicate', 'duplicate key' FROM seen s"
            " JOIN last l ON l.key = s.key WHERE s.ordinal < l.ordinal"
        )
        db.execute("INSERT INTO decision SELECT ordinal, 'bad', reason FROM seen WHERE key IS NULL")
        if baseline is None:
            db.execute("INSERT INTO decision SELECT ordinal, 'send', NULL FROM last")
        else:
            await self._merge(baseline)
        db.execute("COMMIT")
        await self._emit(save)
        return self.stats

    async def _merge(self, baseline: AsyncIterator[list[tuple[bytes, bytes]]]) -> None:
        """Sorted merge of this batch's keys with the baseline's, a page of each at a time."""
        db = self._db
        ours = db.execute("SELECT key, ordinal, hash FROM last ORDER BY key")
        mine = ours.fetchmany(_PAGE)
        index = 0
        sends: list[tuple[int]] = []
        gone: list[tuple[bytes]] = []

        def take_until(limit: bytes | None) -> None:
            # every key of ours before ``limit`` is new: send it
            nonlocal mine, index
            while mine:
                while index < len(mine) and (limit is None or mine[index][0] < limit):
                    sends.append((mine[index][1],))
                    index += 1
                if index < len(mine):
                    return
                mine, index = ours.fetchmany(_PAGE), 0

        async for page in baseline:
            for key, stored in page:
                take_until(key)
                if mine and index < len(mine) and mine[index][0] == key:
                    if mine[index][2] != stored:
                        sends.append((mine[index][1],))
                    index += 1
                elif self.spec.deletes:
                    gone.append((key,))
            if len(sends) > _PAGE or len(gone) > _PAGE:
                self._flush(sends, gone)
        take_until(None)
        self._flush(sends, gone)

    def _flush(self, sends: list[tuple[int]], gone: list[tuple[bytes]]) -> None:
        # the merge cursor reads ``last``; these writes go to other tables of the same file
        self._db.executemany("INSERT INTO decision VALUES (?, 'send', NULL)", sends)
        self._db.executemany("INSERT INTO gone VALUES (?)", gone)
        sends.clear()
        gone.clear()

    async def _emit(self, save: Callable[[Sequence[PlanRow]], Awaitable[None]]) -> None:
        db = self._db
        stats = self.stats
        seq = 0
        cursor = db.execute(
            "SELECT d.ordinal, d.kind, d.reason, s.key, s.hash FROM decision d"
            " JOIN seen s ON s.ordinal = d.ordinal ORDER BY d.ordinal"
        )
        while page := cursor.fetchmany(_PAGE):
            rows = []
            for ordinal, kind, reason, key, digest in page:
                if kind == "send":
                    rows.append(PlanRow("send", ordinal, seq, key, digest))
                    seq += 1
                    stats.send += 1
                else:
                    rows.append(PlanRow(kind, ordinal, reason=reason))
                    stats.rejected += 1
            await save(rows)
        stats.unchanged = stats.read - stats.send - stats.rejected
        cursor = db.execute("SELECT key FROM gone ORDER BY key")
        while page := cursor.fetchmany(_PAGE):
            rows = []
            for (key,) in page:
                rows.append(PlanRow("delete", None, seq, key))
                seq += 1
            stats.tombstones += len(rows)
            await save(rows)

    def close(self) -> None:
        self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> DiffPlanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def baseline_pages(
    store: DiffStore, dataset: str, route: str, limit: int = _PAGE
) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """The route's baseline in key order, a page at a time (keyset pagination)."""
    after: bytes | None = None
    while page := await store.baseline_page(dataset, route, after, limit):
        yield page
        if len(page) < limit:
            return
        after = page[-1][0]


class DiffFilter:
    """Pass 2: the projected records again, each sent, counted unchanged or rejected as the
    plan says. ``fetch(after_ordinal, limit)`` gives the plan's ``send``/``duplicate``/``bad``
    rows in ordinal order (``DiffStore.plan_page`` for one batch and route).

    ``apply`` is synchronous, like the rest of a route's cutting: before each block the
    caller awaits ``prefetch(n)`` with an upper bound of the records the block can hold."""

    def __init__(self, fetch: Callable[[int, int], Awaitable[list[PlanRow]]]) -> None:
        self._fetch = fetch
        self._rows: deque[PlanRow] = deque()
        self._last = -1  # the last ordinal fetched
        self._done = False
        self._ordinal = 0  # the next record's ordinal

    async def prefetch(self, count: int) -> None:
        """Have at hand every plan row for the next ``count`` records."""
        wanted = self._ordinal + count - 1
        while not self._done and self._last < wanted:
            page = await self._fetch(self._last, _PAGE)
            self._rows.extend(page)
            if len(page) < _PAGE:
                self._done = True
            if page:
                self._last = page[-1].ordinal or 0

    def apply(
        self, lines: Sequence[bytes], locate: Callable[[int], str] | None = None
    ) -> tuple[list[bytes], int, list[BadRecord]]:
        """The records to send, how many were unchanged, and the rejected ones."""
        sent: list[bytes] = []
        bad: list[BadRecord] = []
        unchanged = 0
        start = self._ordinal
        rows = self._rows
        for offset, line in enumerate(lines):
            if not rows or rows[0].ordinal != start + offset:
                unchanged += 1
                continue
            row = rows.popleft()
            if row.kind == "send":
                sent.append(line)
            else:
                where = locate(offset) if locate else ""
                bad.append(BadRecord(bytes(line), row.reason or row.kind, where))
        self._ordinal = start + len(lines)
        assert self._done or self._last >= self._ordinal - 1, "prefetch did not cover the block"
        return sent, unchanged, bad
