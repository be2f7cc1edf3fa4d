"""
Log observers for every output the gateway writes to: standard output (or
twistd's --logfile), the daily file in C{log_dir}, syslog.

Each applies C{[server] log_level} itself, so no output shows what the
operator asked not to see, and none may raise: an observer that raised
would make Twisted's publisher log that failure to every other observer,
once per event.  A line that cannot be written (disk full, closed
standard output) is dropped; nothing else could be done with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, Optional

from twisted.logger import ILogObserver, LogEvent, LogLevel
from zope.interface import implementer

from cosgw.logs.formats import FORMATS

__all__ = ["AtLevel", "LineObserver", "output_observer", "set_level"]


@implementer(ILogObserver)
class AtLevel:
    """
    Passes to C{observer} the events from C{level} up: for an observer
    whose format is not ours (twistd's syslog observer).
    """

    def __init__(self, observer: ILogObserver, level: LogLevel) -> None:
        self.observer = observer
        self.level = level

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is None or level < self.level:
            return
        try:
            self.observer(event)
        except Exception:  # noqa: S110 - an observer must not raise
            pass


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event from C{level} up as one line of C{log_format} to
    C{out} (anything with C{write} and C{flush}: a stream, a LogFile),
    flushed at once so a line is on disk (or in the journal) when the
    event is over.
    """

    def __init__(self, out: IO[Any], log_format: str, level: LogLevel) -> None:
        self.out = out
        self.level = level
        self._line: Callable[[LogEvent], Optional[str]] = FORMATS[log_format]

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is None or level < self.level:
            return
        try:
            text = self._line(event)
        except Exception as e:  # a format bug must not lose the event
            namespace = str(event.get("log_namespace", "-"))
            text = f"unformattable log event in {namespace}: {type(e).__name__}\n"
        if not text:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass


def output_observer(out: IO[Any], log_format: str, log_level: str) -> LineObserver:
    """The observer for C{out} as C{[server] log_format} and C{log_level} say."""
    return LineObserver(out, log_format, LogLevel.levelWithName(log_level))


def set_level(observer: object, log_level: str) -> bool:
    """
    Apply a reloaded C{[server] log_level} to C{observer}, if it is one of
    the observers made here (the next event is filtered by it).

    @return: whether it was; any other observer (a .tac's own, the one
        twistd's C{--logger} names) keeps filtering as it did.
    """
    if not isinstance(observer, (LineObserver, AtLevel)):
        return False
    observer.level = LogLevel.levelWithName(log_level)
    return True
