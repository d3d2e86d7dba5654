"""``sender``: the command line (DESIGN.md, "CLI").

Exit codes: 0 ok · 1 delivery incomplete (or a batch failed) · 2 usage or config error.
``-c`` defaults to ``$SENDER_CONFIG``, then ``./sender.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from rich.console import Console

from . import __version__
from .config import AppConfig, load_config
from .errors import ConfigError, MessageError, SenderError
from .log import configure_logging, mask

__all__ = ["main"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


def _config(args: argparse.Namespace) -> AppConfig:
    return load_config(args.config)


# -- commands --------------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import serve

    config = _config(args)
    configure_logging(config.daemon.log_level)
    return await serve(config, burst=args.burst)


def derive_batch_id(dataset: str, uri: str, versions: Sequence[str]) -> str:
    """A batch id for ``sender send`` without ``--batch-id``: the same files give the same id
    (so a rerun resumes), rewritten files a new one (so they are sent again)."""
    digest = hashlib.sha256("\x00".join([dataset, uri, *versions]).encode()).hexdigest()
    return f"{dataset}-{digest[:12]}"


async def cmd_send(args: argparse.Namespace) -> int:
    from .app import App
    from .formats import list_batch
    from .model import TriggerMessage
    from .progress import SendProgress

    config = _config(args)
    unknown = sorted(set(args.route or ()) - set(config.routes))
    if unknown:
        raise ConfigError(f"--route: unknown routes {unknown} (known: {sorted(config.routes)})")
    progress = SendProgress(err) if err.is_terminal and not args.quiet else None
    async with App(config, hooks=progress) as app:
        batch_id = args.batch_id
        if batch_id is None:
            source = await app.source_for(args.uri)
            require = config.source_for(args.uri).options.require_success
            listing = await list_batch(source, args.uri, require_success=require)
            versions = [f"{o.uri}:{o.size}:{o.version}" for o in listing.objects]
            batch_id = derive_batch_id(args.dataset, args.uri, versions)
        message = TriggerMessage(
            batch_id=batch_id,
            dataset=args.dataset,
            uri=args.uri,
            format=args.format,
            routes=tuple(args.route) if args.route else None,
        )
        if progress is not None:
            with progress:
                outcome = await app.engine.run_batch(message)
        else:
            outcome = await app.engine.run_batch(message)
    from .status import outcome_table, reconciliation_line

    if args.json:
        out.print_json(
            orjson.dumps(
                {
                    "batch_id": outcome.batch_id,
                    "state": outcome.state.value,
                    "already_complete": outcome.already_complete,
                    "error": outcome.error,
                    "records": outcome.totals.to_dict(),
                    "routes": {k: v.to_dict() for k, v in outcome.routes.items()},
                    "duration_s": round(outcome.duration_s, 3),
                }
            ).decode()
        )
    else:
        note = " (already complete: nothing sent)" if outcome.already_complete else ""
        out.print(f"batch {outcome.batch_id}: {outcome.state.value}{note}")
        if outcome.error:
            out.print(f"error: {mask(outcome.error)}", style="red")
        out.print(outcome_table(outcome.routes))
        out.print(reconciliation_line(outcome.totals))
    return EXIT_OK if outcome.ok else EXIT_INCOMPLETE


async def cmd_status(args: argparse.Namespace) -> int:
    from .app import open_ledger
    from .status import batch_detail, batch_filters, batch_table
    from .views import batch_json

    config = _config(args)
    async with open_ledger(config.daemon.ledger) as ledger:  # type: ignore[attr-defined]
        if args.batch_id:
            record = await ledger.get_batch(args.batch_id)
            if record is None:
                err.print(f"error: no batch {args.batch_id!r} in {mask(config.daemon.ledger)}")
                return EXIT_INCOMPLETE
            chunks = await ledger.chunks(args.batch_id)
            if args.json:
                out.print_json(orjson.dumps(batch_json(record, chunks)).decode())
            else:
                out.print(batch_detail(record, chunks))
            return EXIT_OK
        try:
            filters = batch_filters(
                dataset=args.dataset, state=args.state, since=args.since, limit=args.limit
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        records = await ledger.list_batches(**filters)
    if args.json:
        out.print_json(orjson.dumps({"batches": [batch_json(r) for r in records]}).decode())
    elif records:
        out.print(batch_table(records))
    else:
        out.print("no batches")
    return EXIT_OK


async def cmd_trigger(args: argparse.Namespace) -> int:
    from .model import TriggerMessage

    config = _config(args)
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
        )
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    trigger = config.trigger.cls(config.trigger.options)
    try:
        await trigger.publish(message)
    finally:
        await trigger.aclose()
    out.print(f"published batch {batch_id} ({args.dataset}) on the {config.trigger.type} trigger")
    return EXIT_OK


async def cmd_config_check(args: argparse.Namespace) -> int:
    config = _config(args)
    out.print(
        f"{config.path}: ok — trigger {config.trigger.type}, "
        f"{len(config.destinations)} destinations, {len(config.routes)} routes"
    )
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(args.config, records=args.records)


# -- parsing ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", help="config file (default: $SENDER_CONFIG, then ./sender.toml)"
    )
    parser = argparse.ArgumentParser(
        prog="sender",
        description="Deliver prediction batches to other teams' platforms.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"sender {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run the daemon")
    run.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    run.set_defaults(func=cmd_run)

    send = commands.add_parser("send", parents=[common], help="deliver one batch now")
    send.add_argument("uri", help="batch folder or file: path, file://, s3:// or gs://")
    send.add_argument("--dataset", required=True)
    send.add_argument("--batch-id", help="default: derived from the dataset and the files")
    send.add_argument("--route", action="append", help="only this route (repeatable)")
    send.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="default: by name")
    send.add_argument("--json", action="store_true", help="print the outcome as JSON")
    send.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    status = commands.add_parser("status", parents=[common], help="batches, or one batch")
    status.add_argument("batch_id", nargs="?")
    status.add_argument("--dataset")
    status.add_argument("--since", help="e.g. 24h, 30m")
    status.add_argument("--state", help="complete, incomplete, failed or running")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    trigger = commands.add_parser(
        "trigger", parents=[common], help="publish a trigger message on the configured queue"
    )
    trigger.add_argument("uri")
    trigger.add_argument("--dataset", required=True)
    trigger.add_argument("--batch-id")
    trigger.add_argument("--format", choices=["jsonl", "csv", "parquet"])
    trigger.add_argument("--expected-records", type=int)
    trigger.add_argument("--route", action="append")
    trigger.set_defaults(func=cmd_trigger)

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", parents=[common], help="validate a config file")
    check.set_defaults(func=cmd_config_check)

    demo = commands.add_parser(
        "demo", parents=[common], help="a self-contained run against a flaky local receiver"
    )
    demo.add_argument("--records", type=int, default=20_000)
    demo.set_defaults(func=cmd_demo)
    return parser


def _run(
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    try:
        return asyncio.run(func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"config error: {mask(problem)}", style="red", markup=False)
        return EXIT_USAGE
    except MessageError as exc:
        err.print(f"error: {mask(str(exc))}", style="red", markup=False)
        return EXIT_USAGE
    except SenderError as exc:
        err.print(f"error: {mask(str(exc))}", style="red", markup=False)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        configure_logging()
    return _run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
