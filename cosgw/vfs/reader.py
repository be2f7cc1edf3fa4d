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

A reader the file system handed out is a download in the session's live
transfers (L{Reader.metered}) until it is closed: complete when every byte
of the file from its offset was handed on (a RETR) or, for a file read at
offsets, unless a read failed; failed with a store error; interrupted when
the consumer went or the frontend closes it early, or with an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.escaping import for_log
from cosgw.interfaces import Entry, IByteSource, IReader
from cosgw.policy.throttle import ThrottledConsumer
from cosgw.transfer import Download, RangedReader, TransferStopped
from cosgw.transfer.reader import TooManyReads
from cosgw.transfer.settings import MiB
from cosgw.vfs.errors import NotSupported, translate
from cosgw.vfs.metering import READ, Meter, SendMeter
from cosgw.vfs.mtimes import read_time
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
        # The time a client set, when this process knows the directory's
        # markers (a stat before the open, as clients do); else the
        # object's own.
        mtime, _ = read_time(fs.times, info)
        self.entry = Entry(self.segments[-1], False, info.size, mtime, info.crc64)
        self._info = info
        self.offset: int = source.offset
        self.length: int = source.length
        self._source: Optional[IByteSource] = source
        self._window = window
        self._download: Optional[Download] = None
        self._throttle: Optional[ThrottledConsumer] = None
        self._ranged: Optional[RangedReader] = None
        self._meter = Meter(None, "download", self.path)
        #: How the download went: its first failure; whether a stream
        #: handed on its last byte; reads at offsets waiting for the store.
        self._failure: Optional[Failure] = None
        self._complete = False
        self._whole = False
        self._waiting = 0

    def metered(self, meter: Meter, whole: bool = False) -> None:
        """
        Record this reader as the download C{meter}; see the module.

        @param whole: the download is every byte from the offset (a RETR):
            closed before they were all handed on, it was cut short.
        """
        self._meter = meter
        self._whole = whole
        meter.request_id(self._info.request_id)
        meter.counted(retries=self._info.retries)

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
        target: IConsumer = self._throttle or consumer
        if self._meter.recording:
            # Counts the bytes and times the store reads the client waited
            # for; not there when nothing is recorded.
            meter = SendMeter(target, self._meter)
            source, target = meter.source(source), meter
        settings = self._fs.settings
        self._download = Download(
            source,
            target,
            settings.read_chunk,
            settings.read_ahead,
            settings.download_buffers,
        )
        d = self._download.start()
        d.addErrback(translate, self.path)
        d.addCallbacks(self._sent_all, self._broke)
        return d

    def _sent_all(self, count: int) -> int:
        self._complete = True
        return count

    def _broke(self, failure: Failure) -> Failure:
        """The stream failed or the consumer went: the download's end."""
        self._failure = failure
        self._meter.finish(failure.value)
        return failure

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
            fs, segments, meter = self._fs, self.segments, self._meter

            def reopen(at: int, end: int) -> Deferred[IByteSource]:
                return fs._reopen(segments, at, end).addCallback(_record, meter)

            # Reads of the stream are a chunk of at most 1 MiB (a client may
            # hold a few in this reader), two while the download buffer
            # budget has room to spare: one hand-off to a thread per 2 MiB
            # (gateway CPU per GB of one OpenSSH download -6%).
            chunk = min(fs.settings.read_chunk, MiB)
            self._ranged = RangedReader(
                self._take_source(),
                reopen,
                window=self._window,
                chunk=chunk,
                buffers=fs.settings.download_buffers,
                max_chunk=2 * chunk,
            )
        d = self._ranged.read(offset, length)
        if not d.called and self._meter.recording:
            self._waiting += 1
            self._meter.wait_start(READ)
            d.addBoth(self._answered)
        d.addCallback(self._fs.rates.hold_read)
        d.addErrback(self._too_many)
        d.addErrback(translate, self.path)
        if self._meter.recording:
            d.addCallbacks(self._delivered, self._read_failed)
        return d

    def _answered(self, result: Any) -> Any:
        """A read that waited for the stream has its bytes (or failed)."""
        self._waiting -= 1
        if not self._waiting:
            self._meter.wait_end(READ)
        return result

    def _delivered(self, data: bytes) -> bytes:
        self._meter.progress(len(data))
        return data

    def _read_failed(self, failure: Failure) -> Failure:
        if self._failure is None and not failure.check(TransferStopped):
            self._failure = failure
        return failure

    def _too_many(self, failure: Failure) -> Failure:
        if failure.check(TooManyReads):
            log.warn(
                "{path}: {error}", path=for_log(self.path), error=str(failure.value)
            )
            return Failure(NotSupported(self.path, f"{failure.value} on one file"))
        return failure

    def close(self, error: Optional[BaseException] = None) -> None:
        """
        Release the stream; a rate-limited send stops passing bytes on.
        The download ends here (see the module); C{error}: the frontend
        ends it early for that reason, an interruption.
        """
        if self._throttle is not None:
            self._throttle.stop()
        if self._ranged is not None:
            self._ranged.close()
        if self._source is not None:
            self._source.close()
            self._source = None
        if error is not None:
            self._meter.finish(error, interrupted=True)
        elif self._failure is not None:
            self._meter.finish(self._failure.value)
        elif self._whole and not self._complete:
            self._meter.finish(
                TransferStopped("closed before the end of the file"), interrupted=True
            )
        else:
            self._meter.finish(None)


def _record(source: IByteSource, meter: Meter) -> IByteSource:
    """A new stream of a file being read: its GET is the download's too."""
    meter.request_id(source.info.request_id)
    meter.counted(retries=source.info.retries)
    return source
