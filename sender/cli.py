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
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from . import __version__
from .config import AppConfig, load_config
from .errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    MessageError,
    ReplayRefused,
    SenderError,
    UsageError,
)
from .log import configure_logging, mask
from .tuning import tune_process

__all__ = ["amain", "main"]


# made again for every command (``_consoles``), so that the width follows $COLUMNS and the
# streams are those of the moment (tests capture them)
out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _consoles() -> None:
    global out, err
    out = Console(highlight=False, soft_wrap=False)
    # errors and notices stay one line, whatever the width: scripts grep them
    err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_json(data: Any) -> None:
    out.print_json(orjson.dumps(data).decode())


def _config(args: argparse.Namespace) -> AppConfig:
    return load_config(args.config)


# -- commands --------------------------------------------------------------------------------


async def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import serve

    config = _config(args)
    configure_logging(config.daemon.log_level, log_format=_log_format(args, config))
    return await serve(config, burst=args.burst)


def _log_format(args: argparse.Namespace, config: AppConfig | None = None) -> str | None:
    """``--log-format``, else ``[daemon] log_format``, else None (decided by the terminal)."""
    given: str | None = getattr(args, "log_format", None)
    return given or (config.daemon.log_format if config is not None else None)


def derive_batch_id(dataset: str, uri: str, versions: Sequence[str]) -> str:
    """A batch id for ``sender send`` without ``--batch-id``: the same files give the same id
    (so a rerun resumes), rewritten files a new one (so they are sent again)."""
    digest = hashlib.sha256("\x00".join([dataset, uri, *versions]).encode()).hexdigest()
    return f"{dataset}-{digest[:12]}"


async def cmd_send(args: argparse.Namespace) -> int:
    from .app import App
    from .model import TriggerMessage
    from .progress import SendProgress
    from .readers import list_batch

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
        _print_json(
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


def _primaries(config: AppConfig) -> dict[str, str]:
    return {name: route.targets[0] for name, route in config.routes.items()}


async def cmd_status(args: argparse.Namespace) -> int:
    from .app import open_ledger
    from .ports import replays_of
    from .replay import dead_letter_files, replay_preview
    from .serialize import batch_json
    from .status import batch_detail, batch_filters, batch_table, run_duration, target_usage

    config = _config(args)
    primaries = _primaries(config)
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
            replays = await replays_of(ledger, args.batch_id)
            kept = dead_letter_files(replays)
            preview = replay_preview(chunks, primaries)
            if args.json:
                held = target_usage(chunks, primaries)
                _print_json(
                    batch_json(
                        record,
                        chunks,
                        duration_s=run_duration(record, replays),
                        delivered_by={"primary": held["primary"], "fallback": held["fallback"]},
                        dead_letters=[
                            {"route": route, "chunk": chunk, "location": location, "kept": True}
                            for (route, chunk), location in kept.items()
                        ],
                        reconciliation={
                            name: {**stats.to_dict(), "reconciled": stats.reconciled}
                            for name, stats in record.routes.items()
                        },
                        replay_would_send=preview,
                        replays=replays,
                    )
                )
            else:
                out.print(
                    batch_detail(
                        record,
                        chunks,
                        primaries=primaries,
                        replays=replays,
                        kept=kept,
                        preview=preview,
                        all_chunks=args.all_chunks,
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
            usage[r.batch_id] = target_usage(await ledger.chunks(r.batch_id), primaries)
            usage[r.batch_id]["duration_s"] = run_duration(r, await replays_of(ledger, r.batch_id))
    if args.json:
        _print_json(
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
                ]
            }
        )
    elif records:
        out.print(batch_table(records, usage))
    else:
        out.print("no batches" + (" match" if any((args.dataset, args.state, args.since)) else ""))
    return EXIT_OK


def _selection(args: argparse.Namespace) -> Any:
    from .replay import Mode, Selection, parse_chunk_ids
    from .units import parse_duration, parse_rate

    try:
        chunks = parse_chunk_ids(args.chunks) if args.chunks else ()
    except ValueError as exc:
        raise UsageError(f"--chunks: {exc}") from None
    try:
        rate = parse_rate(args.rate) if args.rate else None
    except ValueError as exc:
        raise UsageError(f"--rate: {exc}") from None
    try:
        wait_s = parse_duration(args.wait)
    except ValueError as exc:
        raise UsageError(f"--wait: {exc}") from None
    mode: Mode = "chunks" if chunks else "all" if args.all else "dead-lettered"
    return Selection(
        mode=mode,
        chunks=chunks,
        routes=tuple(args.route or ()),
        to=args.to,
        rate=rate,
        dry_run=args.dry_run,
        force=args.force,
        wait_s=wait_s,
    )


async def cmd_replay(args: argparse.Namespace) -> int:
    from .app import App
    from .progress import ReplayProgress
    from .replay import Replayer, ReplayHooks
    from .status import replay_summary

    config = _config(args)
    selection = _selection(args)
    show_progress = err.is_terminal and not args.quiet and not args.json
    progress = ReplayProgress(err) if show_progress else None

    class _Say(ReplayHooks):
        def waiting(self, holder: str, wait_s: float) -> None:
            err.print(
                f"batch {args.batch_id} is being sent by {holder}: waiting up to "
                f"{wait_s:g}s for its lease",
                markup=False,
            )

    async with App(config) as app:
        replayer = Replayer(app, hooks=progress or _Say())
        try:
            if progress is not None:
                with progress:
                    report = await replayer.run(args.batch_id, selection)
            else:
                report = await replayer.run(args.batch_id, selection)
        except ReplayRefused as exc:
            if args.json:
                _print_json({"batch_id": args.batch_id, "result": "refused", "refused": str(exc)})
            err.print(f"refused: {mask(str(exc))}", style="red", markup=False)
            return EXIT_INCOMPLETE
    if args.json:
        _print_json(report.to_json())
    else:
        out.print(replay_summary(report))
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


async def _dead_letter_entries(ledger: Any, batch_ids: Sequence[str]) -> list[dict[str, Any]]:
    from .model import ChunkState
    from .ports import replays_of
    from .replay import dead_letter_files, stored_file

    entries: list[dict[str, Any]] = []
    for batch_id in batch_ids:
        record = await ledger.get_batch(batch_id)
        chunks = await ledger.chunks(batch_id)
        kept = dead_letter_files(await replays_of(ledger, batch_id))
        for chunk in chunks:
            location = None
            if chunk.state is ChunkState.DEAD_LETTERED:
                location, state = chunk.location, "dead-lettered"
            elif (chunk.route, chunk.chunk_id) in kept and chunk.state is ChunkState.DELIVERED:
                location = kept[(chunk.route, chunk.chunk_id)]
                state = f"delivered since (to {chunk.target}), file kept"
            if location is None:
                continue
            path = stored_file(location)
            exists = path.exists() if path is not None else None
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


def _is_dead_letter_of(path: Path, entry: dict[str, Any]) -> bool:
    """Whether the sidecar beside ``path`` says it holds this chunk: purge deletes nothing
    else, whatever the ledger says."""
    try:
        meta = orjson.loads(path.with_name(path.name + ".meta.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return (meta.get("batch_id"), meta.get("route"), meta.get("chunk")) == (
        entry["batch_id"],
        entry["route"],
        entry["chunk"],
    )


async def cmd_dead_letters(args: argparse.Namespace) -> int:
    from .app import open_ledger
    from .replay import stored_file
    from .status import batch_filters, dead_letter_list, display_path

    config = _config(args)
    if args.purge and not args.batch:
        raise UsageError("--purge: name the batch with --batch ID")
    async with open_ledger(config.daemon.ledger) as ledger:
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
        entries = await _dead_letter_entries(ledger, batch_ids)
    if args.purge:
        deleted = []
        for entry in entries:
            path = stored_file(entry["location"]) if entry["delivered"] else None
            if path is None or not entry["exists"] or not _is_dead_letter_of(path, entry):
                continue
            for file in (path, path.with_name(path.name + ".meta.json")):
                file.unlink(missing_ok=True)
            deleted.append(entry)
        if args.json:
            _print_json({"batch_id": args.batch, "deleted": deleted})
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
        _print_json({"dead_letters": entries})
    elif entries:
        out.print(dead_letter_list(entries))
    else:
        out.print("no dead letters" + (f" for {args.batch}" if args.batch else ""))
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
    from .daemon import open_trigger

    # bound like the daemon binds it (without a ledger): the http trigger then POSTs to the
    # daemon's control server instead of writing an inbox it does not own
    trigger = open_trigger(config)
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
    from .units import parse_duration

    try:
        serve_s = parse_duration(args.serve) if args.serve else 0.0
    except ValueError as exc:
        raise UsageError(f"--serve: {exc}") from None
    return await run_demo(
        args.config,
        records=args.records,
        serve_s=serve_s,
        log_format=getattr(args, "log_format", None),
    )


async def cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    return await run_top(_config(args), once=args.once, console=out)


# -- parsing ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", help="config file (default: $SENDER_CONFIG, then ./sender.toml)"
    )
    # SUPPRESS: given before or after the command, a subcommand's default cannot erase it
    common.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=argparse.SUPPRESS,
        help="logs as JSON lines or for people (default: for people on a terminal)",
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
    status.add_argument("batch_id", nargs="?", help="one batch: its routes and chunks")
    status.add_argument("--dataset")
    status.add_argument("--since", help="created in the last ..., e.g. 24h, 30m, 7d")
    status.add_argument("--state", help="complete, incomplete, failed or running")
    status.add_argument("--limit", type=int, default=50)
    status.add_argument("--all-chunks", action="store_true", help="list every chunk of a big batch")
    status.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    status.set_defaults(func=cmd_status)

    replay = commands.add_parser(
        "replay",
        parents=[common],
        help="send chunks of a batch again (same bytes, same Idempotency-Key)",
    )
    replay.add_argument("batch_id")
    replay.add_argument("--route", action="append", help="only this route (repeatable)")
    which = replay.add_mutually_exclusive_group()
    which.add_argument(
        "--dead-lettered",
        action="store_true",
        help="the chunks in the dead-letter store (the default)",
    )
    which.add_argument("--all", action="store_true", help="every chunk of the batch again")
    which.add_argument("--chunks", metavar="IDS", help="these chunks, e.g. 3,7-9")
    replay.add_argument("--to", metavar="TARGET", help="this destination instead of the primary")
    replay.add_argument("--rate", help="at most this many requests, e.g. 5/s, 100/m")
    replay.add_argument(
        "--dry-run", action="store_true", help="show what would be sent; send nothing"
    )
    replay.add_argument(
        "--force", action="store_true", help="replay even though the source changed"
    )
    replay.add_argument(
        "--wait",
        default="0",
        metavar="DURATION",
        help="wait this long for a daemon holding the batch (default: refuse at once)",
    )
    replay.add_argument("--json", action="store_true", help="the report as JSON")
    replay.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

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
    demo.add_argument(
        "--serve",
        nargs="?",
        const="10m",
        metavar="DURATION",
        help="keep the daemon and its status page up this long after the batch (10m)",
    )
    demo.set_defaults(func=cmd_demo)

    top = commands.add_parser(
        "top", parents=[common], help="live view of the daemon named by the config"
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(func=cmd_top)
    return parser


async def _dispatch(
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    try:
        return await func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"config error: {mask(problem)}", style="red", markup=False)
        return EXIT_USAGE
    except MessageError as exc:
        err.print(f"error: {mask(str(exc))}", style="red", markup=False)
        return EXIT_USAGE
    except SenderError as exc:
        err.print(f"error: {mask(str(exc))}", style="red", markup=False)
        return exc.exit_code


async def amain(argv: Sequence[str]) -> int:
    """The command line inside a running event loop (tests, embedding); argparse errors exit
    with ``SystemExit(2)`` as from the shell."""
    _consoles()
    args = _parser().parse_args(argv)
    if args.command != "run":
        configure_logging(log_format=_log_format(args))
    return await _dispatch(args.func, args)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sender`` command: the process is ours, so it is tuned first (``sender.tuning``)."""
    tune_process()
    _consoles()
    args = _parser().parse_args(argv)
    if args.command != "run":
        configure_logging(log_format=_log_format(args))
    try:
        return asyncio.run(_dispatch(args.func, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
