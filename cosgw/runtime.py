"""
The process-wide services every gateway runs beside its frontends: the
thread pool that every blocking call (store requests, local files, password
hashes) runs in, started with the gateway and stopped last; the daily log
file of COS FTP Server V5's C{log_dir}; and the xferlog.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Optional, cast

from twisted.application.service import Service
from twisted.logger import globalLogPublisher
from twisted.python.logfile import DailyLogFile
from twisted.python.threadpool import ThreadPool

from cosgw.logs import LineObserver, XferlogFile, output_observer, set_level


class ThreadPoolService(Service):
    """Starts the gateway's own thread pool with the service and stops it last."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        if not self.pool.joined:
            self.pool.stop()


class LogFileService(Service):
    """
    Writes the gateway's log, from C{level} up and in C{log_format}, to a
    daily-rotated C{cosgw.log} in C{directory} (V5's log_dir), beside
    whatever twistd logs.
    """

    def __init__(self, directory: Path, level: str, log_format: str) -> None:
        self.directory = directory
        self.level = level
        self.log_format = log_format
        self._observer: Optional[LineObserver] = None
        self._file: Optional[DailyLogFile] = None

    def startService(self) -> None:
        super().startService()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = DailyLogFile("cosgw.log", str(self.directory))
        # A DailyLogFile is a file in all but its stubs' name for it.
        self._observer = output_observer(
            cast(IO[Any], self._file), self.log_format, self.level
        )
        globalLogPublisher.addObserver(self._observer)

    def set_level(self, level: str) -> None:
        """A config reload's C{log_level}, from the next event on."""
        self.level = level
        if self._observer is not None:
            set_level(self._observer, level)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None


class XferlogService(Service):
    """
    Appends a line per finished transfer to C{path} in the xferlog format
    (L{cosgw.logs.xferlog}) while the gateway runs.  The file is opened
    when the service starts, after twistd gave up root, so it belongs to
    the gateway's user as log_dir's files do.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._observer: Optional[XferlogFile] = None

    def startService(self) -> None:
        super().startService()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._observer = XferlogFile(self.path)
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer.close()
            self._observer = None
