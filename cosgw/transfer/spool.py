"""
A bounded temporary file for bytes that cannot go to the store yet: writes
far ahead of an upload, or a whole file being changed in place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed

from cosgw.transfer.errors import SpoolFull, TransferStopped


class Spool:
    """
    A temporary file for bytes that cannot go to the store yet, bounded by
    C{limit} bytes written.  All file I/O runs in the gateway's thread pool
    (C{runner}), one operation at a time, so writes and reads apply in the
    order they were asked for.  The file has no name: it vanishes when
    closed, or with the process.
    """

    def __init__(
        self, runner: Optional[Any], directory: Optional[str], limit: int
    ) -> None:
        self.runner = runner
        self.directory = directory
        self.limit = limit
        self.used = 0
        self._file: Optional[Any] = None
        self._lock = DeferredLock()
        self._closed = False

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def run(_: object) -> Deferred[Any]:
            if self.runner is None:
                return maybeDeferred(f, *args)
            return self.runner.run(f, *args)

        return self._lock.run(lambda: succeed(None).addCallback(run))

    def _fd(self) -> int:
        if self._closed:
            raise TransferStopped("the spool is closed")
        if self._file is None:
            if self.directory:
                os.makedirs(self.directory, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory)
        return self._file.fileno()

    def write(self, offset: int, data: bytes) -> Deferred[None]:
        """@raise SpoolFull: (synchronously) over the limit."""
        if self.used + len(data) > self.limit:
            raise SpoolFull(
                f"out-of-order writes need more than {self.limit} bytes of "
                "temporary space"
            )
        self.used += len(data)

        def put() -> None:
            fd = self._fd()
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n

        return self._call(put)

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """Bytes at C{offset}; zeros where nothing was written."""

        def get() -> bytes:
            fd = self._fd()
            data = os.pread(fd, length, offset)
            return data + bytes(length - len(data))

        return self._call(get)

    def truncate(self, size: int) -> Deferred[None]:
        return self._call(lambda: os.ftruncate(self._fd(), size))

    def close(self) -> None:
        """Discard the file (after any operation in progress)."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._file is not None:
                self._file.close()
                self._file = None

        self._lock.run(lambda: succeed(None).addCallback(lambda _: close()))
