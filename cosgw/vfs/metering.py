"""
The live record of every upload and download the file system hands out
(an audit L{Transfer} of the session), and its one event when it ends.

Recorded here because every protocol's transfer goes through an object the
file system hands out (L{cosgw.vfs.Upload}, L{cosgw.vfs.Reader},
L{cosgw.vfs.RandomAccessFile}), so no frontend can forget one.  A record
is started when its object is handed out, dated from when the open began;
an open that fails is recorded and finished at once with its error (a
refused STOR, a RETR of a missing file are events too).  Without a session
(unit tests, embedded uses) nothing is recorded and the data path does no
extra work at all.

The data path pays one call per chunk: L{Meter.progress} is the record's
own C{progress}.  Store wait is measured per pause, per store read and per
commit, never per byte:

  - upload: the open (its checks); the time the upload writer held the
    client's input (its parts in flight full, or its turn in the upload
    buffer budget, which earlier parts free as the store takes them); the
    commit (the last parts and the final call);
  - download: the open (the GET); stream reads in flight while the client
    was not holding the download back (L{SendMeter}); for reads at
    offsets, the time at least one read waited for the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from cosgw.audit import Session, Transfer
from cosgw.interfaces import IByteSource
from cosgw.transfer import TransferStopped

__all__ = [
    "COMMIT",
    "HELD",
    "MAX_REQUEST_IDS",
    "READ",
    "Meter",
    "SendMeter",
    "StoreHold",
]

#: At most this many store request ids per transfer: a client that seeks
#: around a file opens a GET per jump.
MAX_REQUEST_IDS = 8


#: What a transfer waits on the store for (L{Meter.wait_start}): the upload
#: writer holds the client's input; a commit; a store read the client
#: waits for.
HELD = "held"
COMMIT = "commit"
READ = "read"


def _ignore(count: int) -> None:
    """The progress of a transfer nobody records."""


class Meter:
    """
    One transfer's record, or nothing when the file system has no session:
    every method is then a no-op, and L{progress} a function that does
    nothing.

    @ivar progress: C{count} more bytes moved between client and gateway
        (the record's own C{progress}, not a wrapper: one call per chunk).
    """

    def __init__(
        self,
        session: Optional[Session],
        direction: str,
        path: str,
        size: Optional[int] = None,
        offset: int = 0,
        since: Optional[float] = None,
    ) -> None:
        """
        @param since: when the open began (the clock's seconds): the
            record's start, and store wait until now.
        """
        self.finished = False
        self.record: Optional[Transfer] = None
        self.progress: Callable[[int], None] = _ignore
        self._clock = session.table.clock if session is not None else None
        self._waiting_since: Optional[float] = None
        self._waiting_for: set[str] = set()
        if session is not None:
            record = session.start_transfer(direction, path, size, offset)
            if since is not None:
                record.started = since
                record.store_wait += max(self.now() - since, 0.0)
            self.record = record
            self.progress = record.progress

    @property
    def recording(self) -> bool:
        """Whether anything is recorded (the file system has a session)."""
        return self.record is not None

    def now(self) -> float:
        """The clock's seconds (0.0 when nothing is recorded)."""
        return self._clock.seconds() if self._clock is not None else 0.0

    def wait_start(self, reason: str) -> None:
        """
        The transfer waits on the store for C{reason}; waits for several
        reasons at once count once (a commit while the client is held).
        """
        if self.record is not None and reason not in self._waiting_for:
            if not self._waiting_for:
                self._waiting_since = self.now()
            self._waiting_for.add(reason)

    def wait_end(self, reason: Optional[str] = None) -> None:
        """The wait for C{reason} (None: every reason) is over."""
        if reason is None:
            self._waiting_for.clear()
        else:
            self._waiting_for.discard(reason)
        if not self._waiting_for and self._waiting_since is not None:
            assert self.record is not None
            self.record.store_wait += max(self.now() - self._waiting_since, 0.0)
            self._waiting_since = None

    def update(self, size: Optional[int] = None, offset: Optional[int] = None) -> None:
        """What became known after the start: the whole size, the offset."""
        if self.record is not None:
            if size is not None:
                self.record.size = size
            if offset is not None:
                self.record.offset = offset

    def counted(self, parts: int = 0, retries: int = 0) -> None:
        """Parts stored and store retries made for this transfer."""
        if self.record is not None:
            self.record.parts += parts
            self.record.retries += retries

    def request_id(self, request_id: Optional[str]) -> None:
        """A store request id of this transfer (its GET, PUT, completion)."""
        record = self.record
        if (
            record is not None
            and request_id
            and request_id not in record.request_ids
            and len(record.request_ids) < MAX_REQUEST_IDS
        ):
            record.request_ids.append(request_id)

    def finish(
        self,
        error: Optional[BaseException] = None,
        interrupted: bool = False,
        **fields: Any,
    ) -> None:
        """
        The transfer ended (see L{Transfer.finish}); only the first call
        counts.  A L{TransferStopped} error (the client went, an ABOR, a
        lost session) is always an interruption.
        """
        if self.finished:
            return
        self.finished = True
        self.wait_end()
        if self.record is None or self.record.finished:
            return  # nothing recorded, or the session's close ended it
        if error is not None:
            self.request_id(getattr(error, "request_id", None))
        interrupted = interrupted or isinstance(error, TransferStopped)
        self.record.finish(error, interrupted=interrupted, **fields)


@implementer(IPushProducer)
class StoreHold:
    """
    Registered with an upload writer in place of the producer it pauses
    (the client's input), so the time the writer holds it, waiting for the
    store to take earlier parts, counts as store wait.
    """

    def __init__(self, producer: IPushProducer, meter: Meter) -> None:
        self._producer = producer
        self._meter = meter

    def pauseProducing(self) -> None:
        self._meter.wait_start(HELD)
        self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._meter.wait_end(HELD)
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self._meter.wait_end(HELD)
        self._producer.stopProducing()


@implementer(IConsumer, IPushProducer)
class SendMeter:
    """
    Between a download and its consumer: counts the bytes handed on, and
    times the store reads (through L{source}) that the consumer was ready
    for: a read while the consumer has paused the download is read-ahead,
    not a wait.
    """

    def __init__(self, consumer: IConsumer, meter: Meter) -> None:
        self._consumer = consumer
        self._meter = meter
        self._progress = meter.progress
        self._producer: Optional[IPushProducer] = None
        self._paused = False
        self._reading = False

    def source(self, source: IByteSource) -> IByteSource:
        """C{source}, its reads timed."""
        return _TimedSource(source, self)

    # IConsumer: the download's side

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = IPushProducer(producer)
        self._consumer.registerProducer(self, True)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        self._progress(len(data))
        self._consumer.write(data)

    # IPushProducer: the consumer's side

    def pauseProducing(self) -> None:
        self._paused = True
        self._meter.wait_end(READ)
        if self._producer is not None:
            self._producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._reading:
            self._meter.wait_start(READ)
        if self._producer is not None:
            self._producer.resumeProducing()

    def stopProducing(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()

    # the source's reads

    def reading(self) -> None:
        self._reading = True
        if not self._paused:
            self._meter.wait_start(READ)

    def read_done(self, result: Any) -> Any:
        self._reading = False
        self._meter.wait_end(READ)
        return result


@implementer(IByteSource)
class _TimedSource:
    """A store stream whose reads a L{SendMeter} times."""

    def __init__(self, source: IByteSource, meter: SendMeter) -> None:
        self._source = source
        self._meter = meter
        self.info = source.info
        self.offset = source.offset
        self.length = source.length

    def read(self, size: int) -> Deferred[bytes]:
        self._meter.reading()
        d = self._source.read(size)
        d.addBoth(self._meter.read_done)
        return d

    def close(self) -> Deferred[None]:
        return self._source.close()
