"""
C{cosgw sessions} and C{cosgw kick ID}: the live sessions of a running
gateway, through its admin listener's JSON API (C{GET /api/sessions},
C{POST /api/sessions/ID/kick}).

The listener is found from C{--admin URL}, or from C{admin_listen} in
C{--config FILE}, else at its default address.  With C{--user NAME} the
requests carry HTTP basic auth; the password comes from the
C{COSGW_ADMIN_PASSWORD} environment variable or a prompt, never from the
command line, where other users of the host could read it.

These are single requests with nothing else to do meanwhile, so they are
plain blocking HTTP (C{urllib}) with a timeout, not a reactor.
"""

from __future__ import annotations

import argparse
import base64
import errno
import getpass
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional
from urllib.parse import quote

from cosgw.cli.text import format_address, format_duration, format_time, table
from cosgw.config import ConfigError, load_config
from cosgw.escaping import for_reply

#: Where the admin listener listens unless the config says otherwise.
DEFAULT_ADMIN_URL = "http://127.0.0.1:9121"

#: The environment variable that holds the admin user's password.
PASSWORD_VARIABLE = "COSGW_ADMIN_PASSWORD"

#: Exit statuses.
EXIT_OK = 0
#: A bad answer, a config that names no usable listener, an unusable URL.
EXIT_ERROR = 1
#: The admin listener cannot be reached (refused, no answer in time).
EXIT_UNREACHABLE = 3
#: The listener refused: no or wrong credentials (401), not allowed from
#: here (403), too many failed logins (429).
EXIT_DENIED = 4
#: No such session (HTTP 404).
EXIT_NOT_FOUND = 5

#: Seconds to connect and for each answer, by default.
TIMEOUT = 10.0


class AdminError(Exception):
    """A request to the admin API failed; C{str} says why, for the operator."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_parsers(commands: Any) -> None:
    sessions = commands.add_parser(
        "sessions",
        help="list the live sessions of a running gateway",
        description="List the live sessions through the admin API.",
    )
    kick = commands.add_parser(
        "kick",
        help="end a session (FTP 421, SFTP disconnect)",
        description=(
            "End session ID through the admin API: an FTP client gets 421, an"
            " SFTP client a disconnect, and an upload in progress is aborted."
        ),
    )
    kick.add_argument("session", metavar="ID", help="as `cosgw sessions` shows")
    for parser in (sessions, kick):
        admin_options(parser, parser.add_mutually_exclusive_group())
    sessions.set_defaults(handler=sessions_command)
    kick.set_defaults(handler=kick_command)


def admin_options(parser: Any, where: Any) -> None:
    """
    The options of a command that asks the admin API: C{--admin} and
    C{--config} in C{where} (a group of C{parser}'s that may hold more
    ways to find the gateway), C{--user}, C{--json}, C{--timeout}.
    """
    where.add_argument(
        "--admin",
        metavar="URL",
        help=f"the admin listener (default {DEFAULT_ADMIN_URL})",
    )
    where.add_argument(
        "--config",
        metavar="FILE",
        help="find the admin listener from admin_listen in FILE",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help=f"an admin user; the password from ${PASSWORD_VARIABLE} or a prompt",
    )
    parser.add_argument("--json", action="store_true", help="JSON for scripts")
    parser.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        metavar="SECONDS",
        help=f"to connect and for the answer (default {TIMEOUT:g})",
    )


def sessions_command(args: argparse.Namespace) -> int:
    try:
        answer = api_request(args, "GET", "/api/sessions")
        sessions = answer["sessions"]
    except AdminError as e:
        print(f"cosgw sessions: {e}", file=sys.stderr)
        return e.status
    except (KeyError, TypeError):
        print("cosgw sessions: the answer holds no session list", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(answer, indent=2))
    elif sessions:
        print(sessions_table(sessions, time.time()))
    else:
        print("no sessions")
    return EXIT_OK


def sessions_table(sessions: list[dict[str, Any]], now: float) -> str:
    """The sessions as a table, oldest first."""
    rows = []
    for s in sorted(sessions, key=lambda s: s.get("since") or 0):
        since = float(s.get("since") or now)
        rows.append(
            [
                s.get("id", "?"),
                s.get("protocol", "?"),
                s.get("user") or "-",
                format_address(str(s.get("client_ip", "?")), s.get("client_port")),
                format_time(since),
                format_duration(now - since),
                format_duration(float(s.get("idle") or 0)),
                len(s.get("transfers") or ()),
            ]
        )
    headers = ["ID", "PROTOCOL", "USER", "CLIENT", "SINCE", "FOR", "IDLE", "TRANSFERS"]
    return table(headers, rows)


def kick_command(args: argparse.Namespace) -> int:
    path = f"/api/sessions/{quote(args.session, safe='')}/kick"
    try:
        answer = api_request(args, "POST", path)
    except AdminError as e:
        print(f"cosgw kick: {e}", file=sys.stderr)
        return e.status
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"kicked session {answer.get('kicked', args.session)}")
    return EXIT_OK


# -- where the listener is ---------------------------------------------------


def admin_url(args: argparse.Namespace) -> str:
    """
    The base URL of the admin listener: C{--admin}, or the address that
    C{admin_listen} in C{--config} names, or the default.

    @raise AdminError: the config cannot be read or has no listener this
        command can reach.
    """
    if args.admin:
        return str(args.admin).rstrip("/")
    if not args.config:
        return DEFAULT_ADMIN_URL
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise AdminError(str(e), EXIT_ERROR) from None
    listen = config.server.admin_listen
    if not listen:
        raise AdminError(
            f"{args.config}: the admin listener is off (admin_listen is empty)",
            EXIT_ERROR,
        )
    return url_of_endpoint(listen)


#: Arguments of an endpoint string are separated by colons not escaped.
_FIELDS = re.compile(r"(?<!\\):")


def url_of_endpoint(description: str) -> str:
    """
    The URL that reaches a listener given as a Twisted endpoint string:
    C{tcp:9121:interface=127.0.0.1} -> C{http://127.0.0.1:9121}.  A
    listener on every interface (no C{interface=}, C{0.0.0.0}, C{::}) is
    reached over loopback.

    @raise AdminError: for endpoints other than C{tcp}, C{tcp6} and C{ssl}.
    """
    fields = [f.replace("\\:", ":") for f in _FIELDS.split(description)]
    kind = fields[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        raise AdminError(
            f"admin_listen {description!r}: cannot connect to a {kind!r} endpoint;"
            " give --admin URL",
            EXIT_ERROR,
        )
    named = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    positional = [f for f in fields[1:] if "=" not in f]
    port = named.get("port") or (positional[0] if positional else "")
    if not port.isdigit():
        raise AdminError(f"admin_listen {description!r}: no port", EXIT_ERROR)
    host = named.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = "::1" if kind == "tcp6" or host == "::" else "127.0.0.1"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{format_address(host, int(port))}"


# -- the request ------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> Optional[str]:
    """The Authorization header's value for C{--user}, or None."""
    if not args.user:
        return None
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        try:
            password = getpass.getpass(f"Admin password for {args.user}: ")
        except (EOFError, KeyboardInterrupt):
            raise AdminError("no password read", EXIT_ERROR) from None
    token = base64.b64encode(f"{args.user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def api_request(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    """
    One request to the admin API.

    @return: the JSON object it answered.
    @raise AdminError: with the exit status that fits the failure.
    """
    base = admin_url(args)
    request = urllib.request.Request(base + path, method=method, data=b"")
    if method == "GET":
        request.data = None
    request.add_header("Accept", "application/json")
    authorization = _credentials(args)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise _refusal(e, base, path, args) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            reason = f"no answer in {args.timeout:g} s"
        elif isinstance(reason, OSError) and reason.errno and reason.strerror:
            name = errno.errorcode.get(reason.errno, str(reason.errno))
            reason = f"{reason.strerror.lower()} ({name})"
        raise AdminError(
            f"cannot reach the admin listener at {base}: {reason}", EXIT_UNREACHABLE
        ) from None
    except ValueError as e:
        raise AdminError(f"bad admin URL {base!r}: {e}", EXIT_ERROR) from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise AdminError(f"{base}{path} did not answer a JSON object", EXIT_ERROR)
    return answer


def _refusal(
    e: urllib.error.HTTPError, base: str, path: str, args: argparse.Namespace
) -> AdminError:
    """The error to report for an HTTP error answer, in the listener's words."""
    reason = _reason(e)
    if e.code == 401:
        if args.user:
            why = f"the admin listener refused user {args.user!r} (401)"
        else:
            why = (
                "the admin listener asks for a user (401): give --user NAME"
                f" (password from ${PASSWORD_VARIABLE} or a prompt)"
            )
        return AdminError(why, EXIT_DENIED)
    if e.code in (403, 429):
        retry = e.headers.get("Retry-After")
        later = f"; try again in {retry} s" if retry else ""
        return AdminError(f"refused ({e.code}): {reason}{later}", EXIT_DENIED)
    if e.code == 404:
        if getattr(args, "session", None) is not None:
            return AdminError(f"no session {args.session!r}", EXIT_NOT_FOUND)
        return AdminError(f"{base}{path}: not found (404)", EXIT_NOT_FOUND)
    return AdminError(f"{base}{path}: HTTP {e.code}: {reason}", EXIT_ERROR)


def _reason(e: urllib.error.HTTPError) -> str:
    """What an error answer says: its JSON C{error}, its text, or the status."""
    try:
        body = e.read(1000).decode("utf-8", "replace").strip()
    except OSError:
        body = ""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        body = answer["error"]
    return for_reply(body.splitlines()[0] if body else str(e.reason))
