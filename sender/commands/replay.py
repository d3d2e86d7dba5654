"""``sender replay``: on-call re-delivery of a batch's chunks."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import EXIT_INCOMPLETE, EXIT_OK, ReplayRefused, UsageError
from ..log import mask
from ._common import console, load, print_json

if TYPE_CHECKING:
    from ..replay import Selection
    from ._common import Subcommands

__all__ = ["cmd_replay", "register"]


def _selection(args: argparse.Namespace) -> Selection:
    from ..replay import Mode, Selection, parse_chunk_ids
    from ..units import parse_duration, parse_rate

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
    from ..app import App
    from ..outbox import deliver_pending
    from ..progress import ReplayProgress
    from ..replay import Replayer, ReplayHooks
    from ..replay_views import replay_summary

    out, err = console.out, console.err
    config = load(args)
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
                print_json({"batch_id": args.batch_id, "result": "refused", "refused": str(exc)})
            err.print(f"refused: {mask(str(exc))}", style="red", markup=False)
            return EXIT_INCOMPLETE
        # a replayed outcome's events: sent now if they can be, else left in the outbox
        await deliver_pending(config, app.ledger, app.targets, owner=app.engine.owner)
    if args.json:
        print_json(report.to_json())
    else:
        out.print(replay_summary(report))
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
