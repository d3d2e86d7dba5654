"""``sender config check`` and ``sender demo``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import EXIT_OK, UsageError
from ._common import console, load, log_format

if TYPE_CHECKING:
    from ._common import Subcommands

__all__ = ["cmd_config_check", "cmd_demo", "register"]


async def cmd_config_check(args: argparse.Namespace) -> int:
    config = load(args)
    console.out.print(
        f"{config.path}: ok — trigger {config.trigger.type}, "
        f"{len(config.destinations)} destinations, {len(config.routes)} routes"
    )
    return EXIT_OK


async def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..units import parse_duration

    try:
        serve_s = parse_duration(args.serve) if args.serve else 0.0
    except ValueError as exc:
        raise UsageError(f"--serve: {exc}") from None
    return await run_demo(
        args.config,
        records=args.records,
        serve_s=serve_s,
        log_format=log_format(args),
    )


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", parents=[common], help="validate a config file")
    check.set_defaults(func=cmd_config_check)


def register_demo(commands: Subcommands, common: argparse.ArgumentParser) -> None:
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
