"""``sender``: the command line (DESIGN.md, "CLI"); the commands are in ``sender.commands``.

Exit codes: 0 ok · 1 delivery incomplete (or a batch failed) · 2 usage or config error.
``-c`` defaults to ``$SENDER_CONFIG``, then ``./sender.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from . import __version__
from .commands import config, dead_letters, replay, send, status, top
from .commands._common import Command, console, log_format
from .errors import EXIT_USAGE, ConfigError, MessageError, SenderError
from .log import configure_logging, mask
from .tuning import tune_process

__all__ = ["amain", "main"]

# in the order ``sender --help`` lists them
_COMMANDS = (
    send.register,
    status.register,
    replay.register,
    dead_letters.register,
    send.register_trigger,
    config.register,
    config.register_demo,
    top.register,
)


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
    for register in _COMMANDS:
        register(commands, common)
    return parser


async def _dispatch(func: Command, args: argparse.Namespace) -> int:
    err = console.err
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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    console.reset()
    args = _parser().parse_args(argv)
    if args.command != "run":
        configure_logging(log_format=log_format(args))
    return args


async def amain(argv: Sequence[str]) -> int:
    """The command line inside a running event loop (tests, embedding); argparse errors exit
    with ``SystemExit(2)`` as from the shell. Makes no process-wide tunings."""
    args = _parse(argv)
    return await _dispatch(args.func, args)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sender`` command: the process is ours, so it is tuned first (``sender.tuning``)."""
    tune_process()
    args = _parse(argv)
    try:
        return asyncio.run(_dispatch(args.func, args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
