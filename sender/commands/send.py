"""``sender run``, ``sender send`` and ``sender trigger``: delivering batches."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_INCOMPLETE, EXIT_OK, ConfigError, MessageError, UsageError
from ..log import configure_logging, mask
from ._common import console, load, log_format, print_json

if TYPE_CHECKING:
    from ..model import TriggerMessage
    from ._common import Subcommands

__all__ = ["cmd_run", "cmd_send", "cmd_trigger", "derive_batch_id", "register"]


async def cmd_run(args: argparse.Namespace) -> int:
    from ..service import serve

    config = load(args)
    configure_logging(config.daemon.log_level, log_format=log_format(args, config))
    return await serve(config, burst=args.burst)


def derive_batch_id(dataset: str, uri: str, versions: Sequence[str]) -> str:
    """A batch id for ``sender send`` without ``--batch-id``: the same files give the same id
    (so a rerun resumes), rewritten files a new one (so they are sent again)."""
    digest = hashlib.sha256("\x00".join([dataset, uri, *versions]).encode()).hexdigest()
    return f"{dataset}-{digest[:12]}"


async def cmd_send(args: argparse.Namespace) -> int:
    from ..app import App
    from ..batch_source import list_source
    from ..outbox import deliver_pending
    from ..progress import SendProgress

    out, err = console.out, console.err
    config = load(args)
    unknown = sorted(set(args.route or ()) - set(config.routes))
    if unknown:
        raise ConfigError(f"--route: unknown routes {unknown} (known: {sorted(config.routes)})")
    if args.batch_id is not None:
        _send_message(args, args.batch_id)  # a bad id is a usage error before any work
    progress = SendProgress(err) if err.is_terminal and not args.quiet else None
    async with App(config, hooks=progress) as app:
        batch_id = args.batch_id
        if batch_id is None:
            _, listing = await list_source(config, app.source_for, args.uri)
            versions = [f"{o.uri}:{o.size}:{o.version}" for o in listing.objects]
            batch_id = derive_batch_id(args.dataset, args.uri, versions)
        message = _send_message(args, batch_id)
        if progress is not None:
            with progress:
                outcome = await app.engine.run_batch(message)
        else:
            outcome = await app.engine.run_batch(message)
        # completion events: sent now if they can be, else left in the outbox (sender.outbox)
        await deliver_pending(config, app.ledger, app.targets, owner=app.engine.owner)
    from ..render import reconciliation_line
    from ..status import outcome_table

    if args.json:
        print_json(
            {
                "batch_id": outcome.batch_id,
                "state": outcome.state.value,
                "already_complete": outcome.already_complete,
                "error": outcome.error,
                "records": outcome.totals.to_dict(),
                "routes": {k: v.to_dict() for k, v in outcome.routes.items()},
                "duration_s": round(outcome.duration_s, 3),
            }
        )
    else:
        note = " (already complete: nothing sent)" if outcome.already_complete else ""
        out.print(f"batch {outcome.batch_id}: {outcome.state.value}{note}")
        if outcome.error:
            out.print(f"error: {mask(outcome.error)}", style="red", soft_wrap=True)
        out.print(outcome_table(outcome.routes))
        out.print(reconciliation_line(outcome.totals))
    return EXIT_OK if outcome.ok else EXIT_INCOMPLETE


def _send_message(args: argparse.Namespace, batch_id: str) -> TriggerMessage:
    """The message ``sender send`` runs; ``UsageError`` (exit 2) naming what is wrong."""
    from ..model import parse_trigger_message

    fields: dict[str, Any] = {
        "batch_id": batch_id,
        "dataset": args.dataset,
        "uri": args.uri,
        "format": args.format,
        "routes": list(args.route) if args.route else None,
        "full": args.full,
        "rerun": args.rerun,
    }
    try:
        return parse_trigger_message(fields)
    except MessageError as exc:
        raise UsageError(
            str(exc).replace("batch_id:", "--batch-id:").replace("Value error, ", "")
        ) from None


async def cmd_trigger(args: argparse.Namespace) -> int:
    from ..daemon import open_trigger
    from ..model import TriggerMessage

    config = load(args)
    if not config.routes_for(args.dataset):
        raise ConfigError(f"--dataset: no route takes dataset {args.dataset!r}")
    batch_id = args.batch_id or derive_batch_id(args.dataset, args.uri, [])
    try:
        message = TriggerMessage(
            batch_id=batch_id,
            dataset=args.dataset,
            uri=args.uri,
            format=args.format,
            expected_records=args.expected_records,
            routes=tuple(args.route) if args.route else None,
            full=args.full,
        )
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    # bound like the daemon binds it (without a ledger): the http trigger then POSTs to the
    # daemon's control server instead of writing an inbox it does not own
    trigger = open_trigger(config)
    try:
        await trigger.publish(message)
    finally:
        await trigger.aclose()
    console.out.print(
        f"published batch {batch_id} ({args.dataset}) on the {config.trigger.type} trigger"
    )
    return EXIT_OK


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    run.set_defaults(func=cmd_run)

    send = commands.add_parser("send", parents=[common], help="deliver one batch now")
    send.add_argument("uri", help="batch folder or file: path, file://, s3:// or gs://")
    send.add_argument("--dataset", required=True)
    send.add_argument("--batch-id", help="default: derived from the dataset and the files")
    send.add_argument("--route", action="append", help="only this route (repeatable)")
    send.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: by name")
    send.add_argument(
        "--full",
        action="store_true",
        help="diff-synced routes send every record, ignoring what was delivered before",
    )
    send.add_argument(
        "--rerun",
        action="store_true",
        help="run a failed batch again under its id after its input was fixed",
    )
    send.add_argument("--json", action="store_true", help="print the outcome as JSON")
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)


def register_trigger(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    trigger = commands.add_parser(
        "trigger", parents=[common], help="publish a trigger message on the configured queue"
    )
    trigger.add_argument("uri")
    trigger.add_argument("--dataset", required=True)
    trigger.add_argument("--batch-id")
    trigger.add_argument("--format", choices=["jsonl", "csv", "parquet"])
    trigger.add_argument("--expected-records", type=int)
    trigger.add_argument("--route", action="append")
    trigger.add_argument(
        "--full", action="store_true", help="ask for a full refresh of diff-synced routes"
    )
    trigger.set_defaults(func=cmd_trigger)
