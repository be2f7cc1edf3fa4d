"""
The running gateway's life: C{cosgw stop} and C{cosgw reload}.

C{cosgw stop} stops a gateway gracefully: its drain refuses new clients,
ends idle sessions and gives the transfers in progress C{drain_timeout}
seconds to finish before the process exits 0 (L{cosgw.lifecycle.drain}).
It asks either the admin listener (C{POST /api/drain}, found and
authenticated as C{cosgw sessions} does it), or, on the gateway's host, the
process itself: C{--pid PID} or C{--pidfile PATH} (twistd's C{--pidfile})
send it SIGTERM, as systemd does.

With C{--wait SECONDS} the command returns once the gateway is gone: its
process has ended (C{--pid}, C{--pidfile}), or its admin listener no longer
answers; exit status L{EXIT_STILL_RUNNING} when it is still there after
SECONDS.

C{cosgw reload} has the gateway read its config file again, as SIGHUP does
(L{cosgw.lifecycle.reload}): through the admin listener (C{POST
/api/reload}) it waits for the reload and prints what changed, what waits
for a restart, or why the file was refused (exit status 1; the gateway
keeps its config); with C{--pid} or C{--pidfile} it sends SIGHUP and
returns, the result in the gateway's log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from typing import Any

from cosgw.cli.admin import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    AdminError,
    admin_options,
    admin_url,
    api_request,
)

__all__ = ["EXIT_STILL_RUNNING", "add_parsers", "reload_command", "stop_command"]

#: C{--wait}: the gateway was still there when the wait ended.
EXIT_STILL_RUNNING = 6
#: Seconds between two looks at a gateway that is stopping.
POLL = 0.1


def add_parsers(commands: Any) -> None:
    stop = commands.add_parser(
        "stop",
        help="stop a gateway gracefully (refuse new clients, let transfers finish)",
        description=(
            "Stop a running gateway as SIGTERM does: new connections are"
            " refused, idle sessions end, transfers in progress get"
            " drain_timeout seconds to finish, then the process exits 0."
            " Through the admin API (POST /api/drain), or with --pid or"
            " --pidfile by sending the process SIGTERM."
        ),
    )
    where = stop.add_mutually_exclusive_group()
    admin_options(stop, where)
    where.add_argument(
        "--pid", type=int, metavar="PID", help="send SIGTERM to process PID"
    )
    where.add_argument(
        "--pidfile",
        metavar="PATH",
        help="send SIGTERM to the process named in twistd's PID file",
    )
    stop.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help=(
            "return once the gateway is gone, after at most SECONDS (exit"
            f" status {EXIT_STILL_RUNNING} if it is still running)"
        ),
    )
    stop.set_defaults(handler=stop_command)
    reload = commands.add_parser(
        "reload",
        help="reload the config file (users, keys, limits, certificate, log level)",
        description=(
            "Have a running gateway read its config file again, as SIGHUP"
            " does: new logins and connections get the new users, passwords,"
            " keys, permissions, quotas, limits, networks, TLS certificate"
            " and log level; sessions keep theirs.  A file that fails its"
            " checks is refused and the gateway keeps the config it has."
            " Through the admin API (POST /api/reload, which answers with the"
            " result), or with --pid or --pidfile by sending SIGHUP."
        ),
    )
    where = reload.add_mutually_exclusive_group()
    admin_options(reload, where)
    where.add_argument("--pid", type=int, metavar="PID", help="send SIGHUP to PID")
    where.add_argument(
        "--pidfile",
        metavar="PATH",
        help="send SIGHUP to the process named in twistd's PID file",
    )
    reload.set_defaults(handler=reload_command)


def stop_command(args: argparse.Namespace) -> int:
    try:
        if args.pid is not None or args.pidfile is not None:
            pid = args.pid if args.pid is not None else _read_pidfile(args.pidfile)
            _signal(pid, signal.SIGTERM)
            print(f"sent SIGTERM to process {pid}")
            gone: Callable[[], bool] = partial(_ended, pid)
        else:
            answer = api_request(args, "POST", "/api/drain")
            if args.json:
                print(json.dumps(answer, indent=2))
            else:
                print(_drain_text(answer))
            gone = partial(_silent, admin_url(args), args.timeout)
    except AdminError as e:
        print(f"cosgw stop: {e}", file=sys.stderr)
        return e.status
    if args.wait is None:
        return EXIT_OK
    return _wait(gone, args.wait)


def reload_command(args: argparse.Namespace) -> int:
    try:
        if args.pid is not None or args.pidfile is not None:
            pid = args.pid if args.pid is not None else _read_pidfile(args.pidfile)
            _signal(pid, signal.SIGHUP)
            print(f"sent SIGHUP to process {pid}; the gateway logs the result")
            return EXIT_OK
        answer = api_request(args, "POST", "/api/reload")
    except AdminError as e:
        print(f"cosgw reload: {e}", file=sys.stderr)
        return e.status
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer.get("status") == "failed":
        print(f"cosgw reload: refused: {answer.get('error')}", file=sys.stderr)
    else:
        print(_reload_text(answer))
    return EXIT_ERROR if answer.get("status") == "failed" else EXIT_OK


def _reload_text(answer: dict[str, Any]) -> str:
    """What a reload applied and what waits for a restart, for people."""
    lines = [f"reloaded {answer.get('config')}: {answer.get('status')}"]
    lines += [f"  changed: {change}" for change in answer.get("changes") or ()]
    lines += [
        f"  needs a restart: {change}" for change in answer.get("needs_restart") or ()
    ]
    return "\n".join(lines)


def _drain_text(answer: dict[str, Any]) -> str:
    """What the drain found, for people."""
    return (
        f"draining: {answer.get('sessions', '?')} sessions,"
        f" {answer.get('transfers', '?')} transfers in progress; transfers have"
        f" {answer.get('timeout', '?')} s to finish"
    )


def _read_pidfile(path: str) -> int:
    """The PID in twistd's PID file (its first line)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.readline().strip()
    except FileNotFoundError:
        raise AdminError(
            f"{path}: no such PID file (is the gateway running?)", EXIT_NOT_FOUND
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise AdminError(f"{path}: cannot read: {e}", EXIT_ERROR) from None
    if not text.isdigit() or int(text) <= 1:
        raise AdminError(f"{path}: holds no process ID", EXIT_ERROR)
    return int(text)


def _signal(pid: int, signum: int) -> None:
    """Send C{signum} (SIGTERM, SIGHUP) to C{pid}."""
    if pid <= 1:
        raise AdminError(f"not a gateway's process ID: {pid}", EXIT_ERROR)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise AdminError(f"no process {pid}", EXIT_NOT_FOUND) from None
    except PermissionError:
        raise AdminError(
            f"not allowed to signal process {pid} (run as its user or root)",
            EXIT_DENIED,
        ) from None


def _ended(pid: int) -> bool:
    """
    Whether process C{pid} has ended: it is gone, or it is a zombie (ended,
    its parent has not collected its status yet: Linux's /proc says so).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process: still there, unless a zombie
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) state ...": comm may hold spaces and parentheses.
            return f.read().rpartition(b")")[2].split()[:1] == [b"Z"]
    except OSError:
        return False


def _silent(base: str, timeout: float) -> bool:
    """Whether the admin listener at C{base} no longer answers (C{/healthz})."""
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=timeout):
            return False
    except urllib.error.HTTPError:
        return False  # an answer all the same
    except (urllib.error.URLError, OSError):
        return True


def _wait(gone: Callable[[], bool], seconds: float) -> int:
    """Poll C{gone} every L{POLL} seconds for at most C{seconds}."""
    started = time.monotonic()
    while True:
        if gone():
            print(f"stopped after {time.monotonic() - started:.1f} s")
            return EXIT_OK
        if time.monotonic() - started >= seconds:
            print(f"cosgw stop: still running after {seconds:g} s", file=sys.stderr)
            return EXIT_STILL_RUNNING
        time.sleep(POLL)
