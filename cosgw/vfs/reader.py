"""
A file opened for reading: what L{ObjectFileSystem.open_reader} hands a
frontend.  It streams the file into a consumer (FTP's RETR) or answers
reads at any offset (SFTP's READ), at the user's download rate, with store
errors already translated, reopening its stream through the file system
when reads jump (see L{cosgw.transfer.reader}).

A file is opened with its GET, whose reply carries what a HEAD would (size,
CRC-64, times, metadata): a RETR is that one GET (from the REST offset, to
the end), and a whole-file SFTP download too, whatever the client's pattern
of READs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.escaping import for_log
from cosgw.interfaces import Entry, IByteSource, IReader
from cosgw.policy.throttle import ThrottledConsumer
from cosgw.transfer import Download, RangedReader
from cosgw.transfer.reader import TooManyReads
from cosgw.transfer.settings import MiB
from cosgw.vfs.errors import NotSupported, translate
from cosgw.vfs.mtimes import client_mtime
from cosgw.vfs.names import display

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()


@implementer(IReader)
class Reader:
    """
    One open file, read either as a stream (L{send}) or at offsets
    (L{read}), not both.  L{close} it when done.
    """

    def __init__(
        self,
        fs: ObjectFileSystem,
        segments: Sequence[str],
        source: IByteSource,
        window: int,
    ) -> None:
        """
        @param source: the file's bytes from the offset it was opened at.
        @param window: how far reads at offsets look ahead of the stream.
        """
        self._fs = fs
        self.segments = list(segments)
        self.path = display(segments)
        info = source.info
        self.entry = Entry(
            self.segments[-1], False, info.size, client_mtime(info), info.crc64
        )
        self.offset: int = source.offset
        self.length: int = source.length
        self._source: Optional[IByteSource] = source
        self._window = window
        self._download: Optional[Download] = None
        self._throttle: Optional[ThrottledConsumer] = None
        self._ranged: Optional[RangedReader] = None

    @property
    def size(self) -> int:
        """The file's size."""
        return self.entry.size

    @property
    def sent(self) -> int:
        """Bytes L{send} has written to its consumer so far."""
        return self._download.sent if self._download is not None else 0

    def _take_source(self) -> IByteSource:
        source, self._source = self._source, None
        if source is None:
            raise RuntimeError(f"{self.path} is already being read or closed")
        return source

    def send(self, consumer: IConsumer) -> Deferred[int]:
        """
        Stream the file from the offset it was opened at to its end into
        C{consumer}, with read-ahead, backpressure and the user's download
        rate.

        @return: Deferred firing with the byte count once every byte is
            handed on (at a limited rate, the last ones may still be on
            their way: they go before the consumer is unregistered); failing
            with L{IntegrityFailure} or L{StoreFailure} when the stream
            broke (the consumer stays registered: drop the connection, so
            the client cannot take a broken stream for a whole file), or
            with L{TransferStopped} when the consumer went.
        """
        source = self._take_source()
        self._throttle = self._fs.rates.sending(consumer)
        settings = self._fs.settings
        self._download = Download(
            source,
            self._throttle or consumer,
            settings.read_chunk,
            settings.read_ahead,
        )
        d = self._download.start()
        d.addErrback(translate, self.path)
        return d

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """
        Up to C{length} bytes at C{offset}, once the user's download rate
        lets them go; C{b""} at or past the end.  Reads share one stream
        from the store, which moves only when they jump.

        @return: Deferred failing with L{IntegrityFailure} (the file changed
            while being read), L{StoreFailure}, L{NotSupported} when too
            many reads wait on the file at once, or L{TransferStopped} after
            L{close}.
        """
        if self._ranged is None:
            fs, segments = self._fs, self.segments
            self._ranged = RangedReader(
                self._take_source(),
                lambda at, end: fs._reopen(segments, at, end),
                window=self._window,
                chunk=min(fs.settings.read_chunk, MiB),
            )
        d = self._ranged.read(offset, length)
        d.addCallback(self._fs.rates.hold_read)
        d.addErrback(self._too_many)
        d.addErrback(translate, self.path)
        return d

    def _too_many(self, failure: Failure) -> Failure:
        if failure.check(TooManyReads):
            log.warn(
                "{path}: {error}", path=for_log(self.path), error=str(failure.value)
            )
            return Failure(NotSupported(self.path, f"{failure.value} on one file"))
        return failure

    def close(self) -> None:
        """Release the stream; a rate-limited send stops passing bytes on."""
        if self._throttle is not None:
            self._throttle.stop()
        if self._ranged is not None:
            self._ranged.close()
        if self._source is not None:
            self._source.close()
            self._source = None
