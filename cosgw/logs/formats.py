"""
The two forms of a log line, C{[server] log_format}: C{text} and C{json}.

Text is Twisted's own classic line (C{"{time} [{namespace}#{level}]
{message}"}), so an operator who knows twistd's log knows cosgw's; an audit
event's message is its text line (L{cosgw.audit.events.EVENTS}).

JSON is one object per line, for log shippers: the fixed keys C{time} (ISO
8601, UTC, milliseconds), C{level}, C{namespace} and C{message} (the text
the text form shows), every audit field of an audit event as a key of its
own, and C{traceback} when the event carries a failure.  Values a log event
may hold that JSON cannot (bytes, exceptions, paths, NaN) become strings:
a line is always written, whatever a caller put in an event.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

from twisted.logger import (
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure

from cosgw.audit.events import audit_fields

__all__ = ["FORMATS", "json_line", "text_line", "utc_time"]

#: The fixed keys of a JSON line; an audit field of the same name (none
#: today) is written as C{audit_<name>} rather than hide one of them.
FIXED_KEYS = ("time", "level", "namespace", "message")

#: How deep a value is followed when it has to be made JSON-safe.
_MAX_DEPTH = 8


def text_line(event: LogEvent) -> Optional[str]:
    """
    The classic twistd text line (traceback lines indented), or None, with
    the time formatted once a second: formatting it was half the cost of
    the line, and every transfer writes two to four.
    """
    return formatEventAsClassicLogText(event, formatTime=_time_text)


class _SecondText:
    """
    Twisted's L{formatTime} (to the second, with the local UTC offset),
    remembered for the last second asked about.
    """

    def __init__(self) -> None:
        self._second: Optional[int] = None
        self._text = "-"

    def __call__(self, when: Optional[float]) -> str:
        if when is None:
            return "-"
        # As datetime rounds a timestamp: to the microsecond, then down.
        second = math.floor(round(when, 6))
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


_time_text = _SecondText()


def utc_time(when: Optional[float]) -> str:
    """C{2025-01-02T03:04:05.678Z}: ISO 8601 in UTC to the millisecond."""
    if when is None:
        when = time.time()
    seconds = math.floor(when)
    millis = min(int((when - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def json_line(event: LogEvent) -> Optional[str]:
    """
    The event as one JSON object and a newline, or None for an event with
    no text and no failure (as Twisted's text observer writes nothing).
    """
    message = formatEvent(event)
    failure = _failure_of(event)
    if not message and failure is None:
        return None
    if failure is not None and "log_failure" not in event:
        # A legacy log.err event's text already holds the traceback.
        message = message.split("\n", 1)[0]
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": utc_time(event.get("log_time")),
        "level": getattr(level, "name", "-"),
        "namespace": event.get("log_namespace", "-"),
        "message": message,
    }
    fields = audit_fields(event)
    if fields is not None:
        for key, value in fields.items():
            record[f"audit_{key}" if key in FIXED_KEYS else key] = value
    if failure is not None:
        record["traceback"] = _traceback(failure)
    try:
        text = json.dumps(record, default=_plain, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(_safe(record, 0))
    return text + "\n"


#: The line formatter for each value of C{log_format}.
FORMATS: Mapping[str, Callable[[LogEvent], Optional[str]]] = {
    "text": text_line,
    "json": json_line,
}


def _failure_of(event: LogEvent) -> Optional[Failure]:
    """The failure a new-style or a legacy (log.err) event carries."""
    failure = event.get("log_failure")
    if failure is None and event.get("isError"):
        failure = event.get("failure")
    return failure if isinstance(failure, Failure) else None


def _traceback(failure: Failure) -> str:
    try:
        return failure.getTraceback()
    except Exception as e:  # a failure whose traceback cannot be rendered
        return f"(traceback unavailable: {type(e).__name__}) {_plain(failure)}"


def _plain(value: Any) -> Any:
    """A value JSON has no form for, as text (json.dumps' default)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, Failure):
        return (
            f"{getattr(value.type, '__name__', 'Failure')}: {value.getErrorMessage()}"
        )
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _safe(value: Any, depth: int) -> Any:
    """C{value} made JSON-safe all the way down (when json.dumps refused)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    containers = (dict, list, tuple, set, frozenset)
    if depth >= _MAX_DEPTH:
        return "..." if isinstance(value, containers) else str(_plain(value))
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(_plain(k)): _safe(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_safe(v, depth + 1) for v in value]
    plain = _plain(value)
    return plain if isinstance(plain, str) else _safe(plain, depth + 1)
