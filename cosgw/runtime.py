"""
The process-wide services every gateway runs beside its frontends: the
thread pool that every blocking call (store requests, local files, password
hashes) runs in, started with the gateway and stopped last; and the daily
log file of COS FTP Server V5's C{log_dir}.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Optional, cast

from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import DailyLogFile
from twisted.python.threadpool import ThreadPool


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
    Writes the gateway's log, from C{level} up, to a daily-rotated
    C{cosgw.log} in C{directory} (V5's log_dir), beside whatever twistd logs.
    """

    def __init__(self, directory: Path, level: str) -> None:
        self.directory = directory
        self.level = LogLevel.levelWithName(level)
        self._observer: Optional[FilteringLogObserver] = None
        self._file: Optional[DailyLogFile] = None

    def startService(self) -> None:
        super().startService()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = DailyLogFile("cosgw.log", str(self.directory))
        self._observer = FilteringLogObserver(
            # A DailyLogFile is a file in all but its stubs' name for it.
            textFileLogObserver(cast(IO[Any], self._file)),
            [LogLevelFilterPredicate(defaultLogLevel=self.level)],
        )
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
            self._observer = None
        if self._file is not None:
            self._file.close()
            self._file = None
