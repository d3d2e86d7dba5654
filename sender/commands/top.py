"""``sender top``: the status page of the daemon named by the config, in a terminal."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import console, load

if TYPE_CHECKING:
    from ._common import Subcommands

__all__ = ["cmd_top", "register"]


async def cmd_top(args: argparse.Namespace) -> int:
    from ..top import run_top

    return await run_top(load(args), once=args.once, console=console.out)


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    top = commands.add_parser(
        "top", parents=[common], help="live view of the daemon named by the config"
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(func=cmd_top)
