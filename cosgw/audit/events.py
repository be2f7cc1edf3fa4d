"""
Audit events: one per action a client takes, whatever protocol it spoke.

An event is an ordinary L{twisted.logger} event in the C{cosgw.audit}
namespace whose C{audit} key holds a flat dict of plain values (the fields
below).  Emitting through twisted.logger, not to a file of our own, lets
every output (text, JSON lines, xferlog, metrics) be an observer that picks
what it needs, and lets tests watch events the way operators do.

Every event has C{event}, C{session}, C{protocol}, C{client_ip},
C{client_port}, C{user} (empty before login) and C{outcome}; an action on a
file adds C{path} (and C{path_to} for a rename); a transfer adds C{bytes},
C{duration}, C{size} (when known), C{offset}, C{rate}, C{store_wait},
C{parts}, C{retries} and C{request_ids}.  A failed action has C{outcome}
C{"error"}, C{error} (what went wrong, for people) and C{status} (the reply
code or SFTP status the client got).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger, LogLevel

from cosgw.escaping import for_log

__all__ = [
    "AUDIT_FORMAT",
    "AUDIT_KEY",
    "AUDIT_NAMESPACE",
    "EVENTS",
    "TRANSFER_EVENTS",
    "audit_fields",
    "emit",
]

#: The logger namespace of every audit event.
AUDIT_NAMESPACE = "cosgw.audit"

#: The key of a log event that holds the audit fields.
AUDIT_KEY = "audit"

#: The log format of every audit event: its text line, made once.
AUDIT_FORMAT = "{audit_text}"

#: Every event name, and the text line each is written as.  A text line
#: holds the client address in every event, so a log watcher (fail2ban)
#: needs no second line to know who did it.
EVENTS: Mapping[str, str] = {
    "session-open": "{protocol} session {session} opened from {client}",
    "session-close": "{protocol} session {session} of {user} from {client} closed"
    " after {duration}s: {reason}",
    "login": "{protocol} login of {user} from {client} (session {session})",
    # The address before anything the client chose (the user name), so a
    # log watcher's pattern cannot be fooled by a crafted name.
    "login-failed": "{protocol} login failed from {client_ip} port"
    " {client_port} for user {user} (session {session}): {error}",
    "upload": "{protocol} upload of {path} by {user} from {client}: {outcome},"
    " {bytes} bytes in {duration}s",
    "download": "{protocol} download of {path} by {user} from {client}:"
    " {outcome}, {bytes} bytes in {duration}s",
    "abort": "{protocol} {direction} of {path} by {user} from {client}"
    " interrupted after {bytes} bytes: {error}",
    "resume": "{protocol} {user} from {client} resumes {path} at {offset}",
    "delete": "{protocol} delete of {path} by {user} from {client}: {outcome}",
    "rename": "{protocol} rename of {path} to {path_to} by {user} from"
    " {client}: {outcome}",
    "copy": "{protocol} copy of {path} to {path_to} by {user} from {client}: {outcome}",
    "mkdir": "{protocol} mkdir {path} by {user} from {client}: {outcome}",
    "rmdir": "{protocol} rmdir {path} by {user} from {client}: {outcome}",
    "mtime": "{protocol} time of {path} set by {user} from {client}: {outcome}",
    "list": "{protocol} listing of {path} by {user} from {client}: {outcome}",
}

#: The events that end a transfer (for xferlog and the transfer metrics).
TRANSFER_EVENTS = frozenset({"upload", "download", "abort"})

_log = Logger(namespace=AUDIT_NAMESPACE)


def emit(fields: Mapping[str, Any], level: LogLevel = LogLevel.info) -> None:
    """
    Log one audit event.  C{fields} must hold C{event} (a key of
    L{EVENTS}) and the fields its text line names; the text line's
    C{client} is C{client_ip} and C{client_port} together, and a failed
    action's line adds its error.
    """
    event = fields["event"]
    template = EVENTS[event]
    if fields.get("outcome") == "error" and "{error}" not in template:
        template += " ({error})"
    values = dict(fields)
    values["user"] = fields.get("user") or "-"
    values["client"] = f"{fields.get('client_ip')}:{fields.get('client_port')}"
    text = template.format_map(_Escaped(values))
    _log.emit(level, AUDIT_FORMAT, audit_text=text, **{AUDIT_KEY: dict(fields)})


def audit_fields(event: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The audit fields of a log event, or None when it is not one."""
    fields = event.get(AUDIT_KEY)
    if event.get("log_namespace") != AUDIT_NAMESPACE or not isinstance(fields, dict):
        return None
    return fields


class _Escaped(dict[str, Any]):
    """
    Field values as a text line shows them: client-chosen strings (names,
    paths) with control characters escaped, so no client can forge a line;
    a missing field as "-".
    """

    def __getitem__(self, key: str) -> Any:
        value = super().get(key, "-")
        if isinstance(value, str):
            return for_log(value)
        if isinstance(value, float):
            return f"{value:.3f}"
        return value

    def __missing__(self, key: str) -> str:
        return "-"
