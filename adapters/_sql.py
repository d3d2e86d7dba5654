"""What the SQL ledgers (SQLite, PostgreSQL) share: the column lists of their tables, the
mapping of a row to a ledger record, and builders for the SQL they write alike (upserts,
the batch list's filters), given the dialect's placeholders.

What differs stays in each ledger: column types, how JSON and times are stored (SQLite
keeps text; PostgreSQL jsonb and timestamptz, decoded by the driver), locking, and whose
clock says "now". The row mappers therefore take the decoders of their dialect.

A new table is a new migration (appended to the ledger's ``MIGRATIONS``, never edited once
released) plus, when both ledgers store it alike, its columns and row mapping here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sender.errors import LedgerError
from sender.model import BatchState, ChunkState, ObjectInfo, chunk_sort_key
from sender.ports import (
    BatchRecord,
    ChunkRecord,
    InboxMessage,
    InboxOutcome,
    PlanRow,
    RouteStats,
)

__all__ = [
    "BATCH_SELECT",
    "CHUNK_COLUMNS",
    "CHUNK_KEY",
    "INBOX_COLUMNS",
    "PLAN_COLUMNS",
    "PLAN_PAGES",
    "Migration",
    "Placeholder",
    "Row",
    "batch_record",
    "batch_where",
    "check_outcome",
    "check_version",
    "chunk_record",
    "chunk_values",
    "inbox_message",
    "objects_value",
    "plan_page_sql",
    "plan_row",
    "route_stats",
    "routes_value",
    "sort_chunks",
    "unknown_batch",
    "upsert",
]

# The statements of one schema version. A ledger's MIGRATIONS[:N] is version N.
Migration = tuple[str, ...]

# The placeholder of the n-th (1-based) argument: "?" for SQLite, "$n" for PostgreSQL.
Placeholder = Callable[[int], str]

# A decoder of one stored value (a JSON text, a timestamp) into its Python value.
Decode = Callable[[Any], Any]


class Row(Protocol):
    """A result row by column name (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: str, /) -> Any: ...


BATCH_SELECT = (
    "SELECT b.batch_id, b.dataset, b.uri, b.state, b.message, b.created_at, b.started_at, "
    "b.finished_at, b.error, b.runs, b.routes, b.objects, "
    "l.owner AS lease_owner, l.expires AS lease_expires "
    "FROM batches AS b LEFT JOIN leases AS l ON l.batch_id = b.batch_id"
)
CHUNK_KEY = ("batch_id", "route", "chunk_id")
CHUNK_COLUMNS = (
    *CHUNK_KEY,
    "state",
    "records",
    "raw_size",
    "kind",
    "idempotency_key",
    "target",
    "attempts",
    "last_error",
    "location",
    "checksum",
    "updated_at",
)
INBOX_COLUMNS = (
    "message_id",
    "body",
    "state",
    "received_at",
    "deliveries",
    "owner",
    "lease_expires",
    "settled_at",
    "reason",
)


def _same(value: Any) -> Any:
    return value


# -- rows to records -------------------------------------------------------------------------


def route_stats(data: Mapping[str, Any]) -> RouteStats:
    known = RouteStats.__dataclass_fields__
    return RouteStats(**{k: int(v) for k, v in data.items() if k in known})


def batch_record(row: Row, *, json: Decode = _same, time: Decode = _same) -> BatchRecord:
    """A ``BATCH_SELECT`` row as a record; ``json`` decodes the JSON columns, ``time`` the
    nullable timestamps (both as stored by the dialect)."""
    objects = None if row["objects"] is None else json(row["objects"])
    return BatchRecord(
        batch_id=row["batch_id"],
        dataset=row["dataset"],
        uri=row["uri"],
        state=BatchState(row["state"]),
        message=json(row["message"]),
        created_at=time(row["created_at"]),
        started_at=time(row["started_at"]),
        finished_at=time(row["finished_at"]),
        error=row["error"],
        runs=row["runs"],
        routes={name: route_stats(stats) for name, stats in json(row["routes"]).items()},
        objects=None
        if objects is None
        else [ObjectInfo(o["uri"], o["size"], o.get("version", "")) for o in objects],
        lease_owner=row["lease_owner"],
        lease_expires=time(row["lease_expires"]),
    )


def chunk_record(row: Row, *, time: Decode = _same) -> ChunkRecord:
    return ChunkRecord(
        batch_id=row["batch_id"],
        route=row["route"],
        chunk_id=row["chunk_id"],
        state=ChunkState(row["state"]),
        records=row["records"],
        raw_size=row["raw_size"],
        kind=row["kind"],
        idempotency_key=row["idempotency_key"],
        target=row["target"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        location=row["location"],
        checksum=row["checksum"],
        updated_at=time(row["updated_at"]),
    )


def inbox_message(row: Row, *, time: Decode = _same) -> InboxMessage:
    return InboxMessage(
        message_id=row["message_id"],
        body=bytes(row["body"]),
        state=row["state"],
        received_at=time(row["received_at"]),
        deliveries=row["deliveries"],
        owner=row["owner"],
        lease_expires=time(row["lease_expires"]),
        settled_at=time(row["settled_at"]),
        reason=row["reason"],
    )


def sort_chunks(records: list[ChunkRecord]) -> list[ChunkRecord]:
    """By route, then chunk id in natural order: no SQL collation sorts dotted numbers."""
    records.sort(key=lambda c: (c.route, chunk_sort_key(c.chunk_id)))
    return records


# -- records to values -----------------------------------------------------------------------


def chunk_values(c: ChunkRecord) -> tuple[Any, ...]:
    """The chunk's values in ``CHUNK_COLUMNS`` order, without ``updated_at`` (the ledger's
    clock sets it)."""
    return (
        c.batch_id,
        c.route,
        c.chunk_id,
        ChunkState(c.state).value,
        c.records,
        c.raw_size,
        c.kind,
        c.idempotency_key,
        c.target,
        c.attempts,
        c.last_error,
        c.location,
        c.checksum,
    )


def objects_value(objects: Iterable[ObjectInfo]) -> list[dict[str, Any]]:
    """The ``objects`` column as JSON-ready data."""
    return [{"uri": o.uri, "size": o.size, "version": o.version} for o in objects]


def routes_value(routes: Mapping[str, RouteStats]) -> dict[str, dict[str, int]]:
    """The ``routes`` column as JSON-ready data."""
    return {name: stats.to_dict() for name, stats in routes.items()}


# -- statements ------------------------------------------------------------------------------


def upsert(
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    values: Sequence[str],
    *,
    update: Sequence[str] | None = None,
    also: Mapping[str, str] | None = None,
) -> str:
    """``INSERT INTO table (columns) VALUES (values) ON CONFLICT (key) DO UPDATE SET``
    each of ``update`` (default: every column not in ``key``) from the row that conflicted
    (``excluded``), then the ``also`` assignments as written (``{"runs": "batches.runs +
    1"}``). ``values`` are SQL expressions: placeholders, ``NULL``, a clock."""
    if len(values) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(values)} values")
    kept = [c for c in columns if c not in key] if update is None else list(update)
    assignments = [f"{c} = excluded.{c}" for c in kept]
    assignments += [f"{c} = {expression}" for c, expression in (also or {}).items()]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(assignments)}"
    )


def batch_where(
    placeholder: Placeholder,
    *,
    dataset: str | None,
    state: BatchState | None,
    since: Any,
    first: int = 1,
) -> tuple[str, list[Any]]:
    """The ``WHERE`` of ``list_batches`` (``""`` without filters) and its arguments, the
    first one numbered ``first``. ``since`` is passed as the dialect stores times."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("b.dataset", dataset),
        ("b.state", None if state is None else BatchState(state).value),
        ("b.created_at", since),
    ):
        if value is not None:
            args.append(value)
            operator = ">=" if column == "b.created_at" else "="
            where.append(f"{column} {operator} {placeholder(first + len(args) - 1)}")
    return (" WHERE " + " AND ".join(where) if where else ""), args


# -- checks ----------------------------------------------------------------------------------


def check_version(found: int, migrations: Sequence[Migration], where: str) -> None:
    """Refuse a schema newer than this code knows (a newer sender migrated it)."""
    if found > len(migrations):
        raise LedgerError(
            f"ledger {where} has schema version {found}, newer than this "
            f"sender understands ({len(migrations)}): upgrade integration-sender"
        )


def check_outcome(outcome: InboxOutcome) -> None:
    if outcome not in ("done", "rejected", "released"):
        raise ValueError(f"unknown inbox outcome {outcome!r}")


def unknown_batch(batch_id: str) -> LedgerError:
    return LedgerError(f"unknown batch {batch_id!r}")


# -- diff sync's plans (sqlite_diff, postgres_diff) -------------------------------------------

PLAN_COLUMNS = ("kind", "ordinal", "seq", "key", "hash", "reason")

# the two ways a plan is read back, a page at a time: records by ordinal, tombstones by seq;
# the SELECT is completed with the dialect's placeholders for batch, route, after and limit
PLAN_PAGES = {
    "records": ("ordinal", "kind <> 'delete'"),
    "tombstones": ("seq", "kind = 'delete'"),
}


def plan_page_sql(which: str, p: Placeholder) -> str:
    """The SELECT of one page of a plan (``PLAN_PAGES``) with placeholders ``p(1..4)``."""
    order, kind = PLAN_PAGES[which]
    return (
        f"SELECT {', '.join(PLAN_COLUMNS)} FROM diff_plans WHERE batch_id = {p(1)}"
        f" AND route = {p(2)} AND {order} > {p(3)} AND {kind} ORDER BY {order} LIMIT {p(4)}"
    )


def plan_row(row: Row) -> PlanRow:
    key, digest = row["key"], row["hash"]
    return PlanRow(
        row["kind"],
        row["ordinal"],
        row["seq"],
        None if key is None else bytes(key),
        None if digest is None else bytes(digest),
        row["reason"],
    )
