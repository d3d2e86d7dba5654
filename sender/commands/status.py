"""``sender status``: batches, or one batch's chunks, targets and reconciliation."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_INCOMPLETE, EXIT_OK, UsageError
from ..log import mask
from ..ports import Purgeable
from ._common import console, dead_letter_stores, load, primaries, print_json, store_of

if TYPE_CHECKING:
    from ..config import AppConfig
    from ._common import Subcommands

__all__ = ["cmd_status", "register"]


async def _purged(config: AppConfig, kept: dict[tuple[str, str], str]) -> set[str]:
    """The kept dead letters (of chunks a replay delivered) that their store no longer holds;
    a store that cannot say (not ``Purgeable``) still holds its own."""
    where = {key: store_of(config, key[0]) for key in kept}
    purged: set[str] = set()
    async with dead_letter_stores(config, {n for n in where.values() if n}) as stores:
        for key, location in kept.items():
            store = stores.get(where[key] or "")
            if isinstance(store, Purgeable) and not await store.holds(location):
                purged.add(location)
    return purged


async def cmd_status(args: argparse.Namespace) -> int:
    from ..app import open_ledger
    from ..ledger_ports import Outbox
    from ..outbox import describe_pending, pending_json
    from ..ports import replays_of
    from ..replay import dead_letter_files, replay_preview
    from ..serialize import batch_json, shard_json
    from ..shard_ports import shards_of
    from ..status import batch_detail, batch_filters, batch_table, run_duration, target_usage

    out, err = console.out, console.err
    config = load(args)
    routes_primary = primaries(config)
    async with open_ledger(config.daemon.ledger) as ledger:
        if args.batch_id:
            record = await ledger.get_batch(args.batch_id)
            if record is None:
                err.print(
                    f"error: no batch {args.batch_id!r} in {mask(config.daemon.ledger)}",
                    markup=False,
                )
                return EXIT_INCOMPLETE
            chunks = await ledger.chunks(args.batch_id)
            shards = await shards_of(ledger, args.batch_id)
            replays = await replays_of(ledger, args.batch_id)
            kept = dead_letter_files(replays)
            purged = await _purged(config, kept) if kept else set()
            preview = replay_preview(chunks, routes_primary)
            if args.json:
                held = target_usage(chunks, routes_primary)
                print_json(
                    batch_json(
                        record,
                        chunks,
                        duration_s=run_duration(record, replays),
                        delivered_by={"primary": held["primary"], "fallback": held["fallback"]},
                        dead_letters=[
                            {
                                "route": route,
                                "chunk": chunk,
                                "location": location,
                                "kept": location not in purged,
                            }
                            for (route, chunk), location in kept.items()
                        ],
                        reconciliation={
                            name: {**stats.to_dict(), "reconciled": stats.reconciled}
                            for name, stats in record.routes.items()
                        },
                        replay_would_send=preview,
                        replays=replays,
                        shards=[shard_json(s, chunks, datetime.now(UTC)) for s in shards],
                    )
                )
            else:
                out.print(
                    batch_detail(
                        record,
                        chunks,
                        primaries=routes_primary,
                        replays=replays,
                        kept=kept,
                        purged=purged,
                        preview=preview,
                        all_chunks=args.all_chunks,
                        shards=shards,
                    )
                )
            return EXIT_OK
        try:
            filters = batch_filters(
                dataset=args.dataset, state=args.state, since=args.since, limit=args.limit
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        records = await ledger.list_batches(**filters)
        usage: dict[str, dict[str, Any]] = {}
        for r in records:
            usage[r.batch_id] = target_usage(await ledger.chunks(r.batch_id), routes_primary)
            usage[r.batch_id]["duration_s"] = run_duration(r, await replays_of(ledger, r.batch_id))
        # completion events a receiver has not taken yet (sender.outbox)
        waiting = await ledger.pending_events() if isinstance(ledger, Outbox) else []
    events = [pending_json(event) for event in waiting]
    if args.json:
        print_json(
            {
                "batches": [
                    batch_json(
                        r,
                        duration_s=usage[r.batch_id]["duration_s"],
                        targets=usage[r.batch_id]["targets"],
                        delivered_by={
                            "primary": usage[r.batch_id]["primary"],
                            "fallback": usage[r.batch_id]["fallback"],
                        },
                    )
                    for r in records
                ],
                "events_pending": events,
            }
        )
    elif records:
        out.print(batch_table(records, usage))
    else:
        out.print("no batches" + (" match" if any((args.dataset, args.state, args.since)) else ""))
    line = describe_pending(waiting)
    if line and not args.json:
        out.print(line, style="yellow", markup=False)
    return EXIT_OK


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser("status", parents=[common], help="batches, or one batch")
    status.add_argument("batch_id", nargs="?", help="one batch: its routes and chunks")
    status.add_argument("--dataset")
    status.add_argument("--since", help="created in the last ..., e.g. 24h, 30m, 7d")
    status.add_argument("--state", help="complete, incomplete, failed or running")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--all-chunks", action="store_true", help="list every chunk of a big batch")
    status.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    status.set_defaults(func=cmd_status)
