"""
The C{cosgw} console script: one command for the operator, with a
subcommand per task.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

from cosgw.auth import passwd
from cosgw.cli import admin, check, lifecycle, uploads


def parser() -> argparse.ArgumentParser:
    """The command line of C{cosgw}, every subcommand's options included."""
    top = argparse.ArgumentParser(
        prog="cosgw",
        description=(
            "Operate a cosgw gateway: check its config and stores, hash"
            " passwords, see and end sessions, reload its config, stop it"
            " gracefully, clean up unfinished uploads."
        ),
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check.add_parser(commands)
    hashing = commands.add_parser(
        "passwd", help="hash a password for the config (as cosgw-passwd)"
    )
    passwd.add_arguments(hashing)
    hashing.set_defaults(handler=lambda args: passwd.run(args, "cosgw passwd"))
    admin.add_parsers(commands)
    lifecycle.add_parsers(commands)
    uploads.add_parser(commands)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run one C{cosgw} command.

    @return: its exit status; each command's help and the README list them.
    """
    args = parser().parse_args(argv)
    status: int = args.handler(args)
    return status
