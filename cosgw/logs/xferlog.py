"""
C{[server] xferlog}: one line per finished transfer in the wu-ftpd xferlog
format (xferlog(5)) that vsftpd and ProFTPD also write, for the tools that
read it (xferstats, log analysers, accounting scripts).

A line, fields separated by single spaces::

    Mon Jan  6 14:03:07 2025 1 192.0.2.7 1048576 /in/report.csv b _ i r alice ftp 0 * c

current time (local, C{asctime} form), transfer time in whole seconds (at
least 1, as vsftpd writes it), client address, bytes moved, file name,
transfer type (always C{b}: the gateway moves bytes unchanged), special
action (C{_}: none), direction (C{i} upload, C{o} download), access mode
(C{r}: a real, authenticated user), user name, service (C{ftp} for FTP and
FTPS as vsftpd writes it, C{sftp} for SFTP), authentication method (C{0}:
none), authenticated user id (C{*}), completion (C{c} complete, C{i}
incomplete: failed or interrupted).

As vsftpd does, a space in the file name becomes C{_} and any other
character that is not printable (control characters, newlines) C{?}, so
every line has the same fields and no client can forge one; the user name
gets the same treatment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Optional

from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from cosgw.audit.events import TRANSFER_EVENTS, audit_fields

__all__ = ["XferlogFile", "xferlog_line"]

#: Permissions of a new xferlog: the gateway's user writes it, its group
#: (log readers) reads it, nobody else sees who moved what.
FILE_MODE = 0o640


def _word(text: str) -> str:
    """C{text} as one field: spaces to C{_}, anything unprintable to C{?}."""
    if text.isprintable() and " " not in text:
        return text or "-"
    return (
        "".join("_" if c == " " else c if c.isprintable() else "?" for c in text) or "-"
    )


def xferlog_line(fields: Mapping[str, Any], when: float) -> Optional[str]:
    """
    The xferlog line (with its newline) of an audit event's fields, or None
    for an event that does not finish a transfer.
    """
    event = fields.get("event")
    if event not in TRANSFER_EVENTS:
        return None
    direction = fields.get("direction") or event
    complete = event != "abort" and fields.get("outcome") == "ok"
    seconds = max(1, round(float(fields.get("duration") or 0)))
    return (
        " ".join(
            (
                time.asctime(time.localtime(when)),
                str(seconds),
                _word(str(fields.get("client_ip", "-"))),
                str(int(fields.get("bytes") or 0)),
                _word(str(fields.get("path", "-"))),
                "b",
                "_",
                "i" if direction == "upload" else "o",
                "r",
                _word(str(fields.get("user", ""))),
                "sftp" if fields.get("protocol") == "sftp" else "ftp",
                "0",
                "*",
                "c" if complete else "i",
            )
        )
        + "\n"
    )


@implementer(ILogObserver)
class XferlogFile:
    """
    Appends the xferlog line of every finished transfer to C{path}: opened
    for appending, created with L{FILE_MODE}, each line written whole at
    once.  When the file was moved or deleted (logrotate without
    copytruncate), the next line goes to a new file under C{path}.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Optional[IO[str]] = None
        self._identity: tuple[int, int] = (0, 0)
        self._open()

    def _open(self) -> None:
        fd = os.open(
            self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
        )
        stat = os.fstat(fd)
        self._identity = (stat.st_dev, stat.st_ino)
        self._file = open(fd, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115

    def _moved(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def __call__(self, event: LogEvent) -> None:
        fields = audit_fields(event)
        if fields is None or self._file is None:
            return
        try:
            line = xferlog_line(fields, event.get("log_time") or time.time())
            if line is None:
                return
            if self._moved():
                self._file.close()
                self._open()
            self._file.write(line)
        except (OSError, ValueError, TypeError):
            # Disk full, a directory gone, a field of the wrong type: the
            # line is lost, the gateway goes on.
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
