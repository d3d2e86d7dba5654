"""``sender dead-letters``: what the dead-letter stores hold, and ``--purge`` of those whose
chunks were delivered since. Files are reached through their store (``Purgeable``), never
by the core reading a file layout."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_INCOMPLETE, EXIT_OK, ConfigError, UsageError
from ..ports import Destination, Ledger, Purgeable
from ._common import console, dead_letter_stores, load, print_json, store_of

if TYPE_CHECKING:
    from ..config import AppConfig
    from ._common import Subcommands

__all__ = ["cmd_dead_letters", "register"]


async def _entries(
    config: AppConfig,
    ledger: Ledger,
    batch_ids: Sequence[str],
    stores: Mapping[str, Destination],
) -> list[dict[str, Any]]:
    from ..model import ChunkState
    from ..ports import replays_of
    from ..replay import dead_letter_files

    entries: list[dict[str, Any]] = []
    for batch_id in batch_ids:
        record = await ledger.get_batch(batch_id)
        chunks = await ledger.chunks(batch_id)
        kept = dead_letter_files(await replays_of(ledger, batch_id))
        for chunk in chunks:
            location = None
            if chunk.state is ChunkState.DEAD_LETTERED:
                location, state = chunk.location, "dead-lettered"
                where = store_of(config, chunk.route, chunk.target)
            elif (chunk.route, chunk.chunk_id) in kept and chunk.state is ChunkState.DELIVERED:
                location = kept[(chunk.route, chunk.chunk_id)]
                state = f"delivered since (to {chunk.target}), file kept"
                where = store_of(config, chunk.route)
            if location is None:
                continue
            store = stores.get(where or "")
            exists = await store.holds(location) if isinstance(store, Purgeable) else None
            if state != "dead-lettered" and exists is False:
                continue  # purged
            entries.append(
                {
                    "batch_id": batch_id,
                    "dataset": record.dataset if record else None,
                    "route": chunk.route,
                    "chunk": chunk.chunk_id,
                    "kind": chunk.kind,
                    "records": chunk.records,
                    "state": state,
                    "delivered": chunk.state is ChunkState.DELIVERED,
                    "target": chunk.target,
                    "reason": chunk.last_error,
                    "location": location,
                    "exists": exists,
                    "idempotency_key": chunk.idempotency_key,
                }
            )
    return entries


def _purgeable(config: AppConfig, stores: Mapping[str, Destination], route: str) -> Purgeable:
    """The store of ``route``'s dead letters, which ``--purge`` needs to be ``Purgeable``."""
    name = store_of(config, route)
    store = stores.get(name or "")
    if isinstance(store, Purgeable):
        return store
    if name is None:
        raise ConfigError(f"routes.{route}: no such route: its dead letters cannot be purged")
    key = f"routes.{route}.dead_letter" if config.routes[route].dead_letter else "routes"
    raise ConfigError(
        f"{key}: the {config.destinations[name].type} destination {name!r} cannot purge "
        "dead letters (it is not Purgeable)"
    )


async def _purge(
    config: AppConfig, stores: Mapping[str, Destination], entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    # every store the batch's dead letters are in is checked before anything is deleted
    purgeable = {e["route"]: _purgeable(config, stores, e["route"]) for e in entries}
    deletable = [e for e in entries if e["delivered"] and e["exists"] is not False]
    return [e for e in deletable if await purgeable[e["route"]].purge(e["location"])]


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    from ..app import open_ledger
    from ..render import display_path
    from ..replay_views import dead_letter_list
    from ..status import batch_filters

    out, err = console.out, console.err
    config = load(args)
    if args.purge and not args.batch:
        raise UsageError("--purge: name the batch with --batch ID")
    names = {store_of(config, route) for route in config.routes}
    async with (
        open_ledger(config.daemon.ledger) as ledger,
        dead_letter_stores(config, {n for n in names if n}) as stores,
    ):
        if args.batch:
            if await ledger.get_batch(args.batch) is None:
                err.print(f"error: no batch {args.batch!r} in the ledger", markup=False)
                return EXIT_INCOMPLETE
            batch_ids = [args.batch]
        else:
            try:
                filters = batch_filters(since=args.since, limit=args.limit)
            except ValueError as exc:
                raise UsageError(f"--since: {exc}") from None
            batch_ids = [r.batch_id for r in await ledger.list_batches(**filters)]
        entries = await _entries(config, ledger, batch_ids, stores)
        deleted = await _purge(config, stores, entries) if args.purge else []
    if args.purge:
        if args.json:
            print_json({"batch_id": args.batch, "deleted": deleted})
        elif deleted:
            for entry in deleted:
                out.print(
                    f"deleted: chunk {entry['chunk']} of {entry['route']} (delivered since, "
                    f"to {entry['target']})",
                    markup=False,
                )
                out.print(f"  {display_path(entry['location'])}", markup=False)
            kept = [e for e in entries if e not in deleted]
            note = f"; {len(kept)} kept (not delivered)" if kept else ""
            out.print(f"{len(deleted)} dead letters deleted, each with its .meta.json{note}")
        else:
            out.print(
                f"nothing to purge: no dead-lettered chunk of {args.batch} has been delivered "
                "since (dead letters of undelivered chunks are never deleted)"
            )
        return EXIT_OK
    if args.json:
        print_json({"dead_letters": entries})
    elif entries:
        out.print(dead_letter_list(entries))
    else:
        out.print("no dead letters" + (f" for {args.batch}" if args.batch else ""))
    return EXIT_OK


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    dead = commands.add_parser(
        "dead-letters", parents=[common], help="dead-lettered chunks, with reasons and files"
    )
    dead.add_argument("--batch", metavar="ID", help="only this batch")
    dead.add_argument("--since", default="7d", help="batches created in the last ... (7d)")
    dead.add_argument("--limit", type=int, default=50, help="batches looked at (50)")
    dead.add_argument(
        "--purge",
        action="store_true",
        help="with --batch: delete the files of dead letters delivered since by a replay",
    )
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(func=cmd_dead_letters)
