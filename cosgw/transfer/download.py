"""
A download: a push producer that streams an object from the store into a
consumer (the data connection); and the read-ahead budget every download
of the gateway shares (C{download_buffer_budget}).

A download reads the store one chunk at a time (one read in flight; the
store's reads run in threads, each reading its slice of the GET's body)
and writes the chunks to the consumer while the consumer has not paused
it.  It always reads the next chunk for the consumer; chunks beyond that
one, up to C{read_ahead}, are read ahead only with room in
L{DownloadBuffers}.  When the client is slow the transport pauses the
download, its queue fills and it stops reading the store: it holds at most
C{read_ahead} chunks, and all downloads together hold the budget plus one
chunk each (and what each connection's own send buffer takes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import IByteSource
from cosgw.transfer.errors import TransferStopped

log = Logger()


class DownloadBuffers:
    """
    The bytes all downloads read ahead of their clients
    (C{download_buffer_budget}).

    What a download needs to go on (its next chunk; the bytes an SFTP read
    waits for) it reads without asking, so no download ever waits for
    another.  Reading further ahead (L{ahead}) needs room within C{limit}:
    those bytes are charged here until they are handed to the connection
    (or dropped), and downloads that found no room are told in turn, first
    come first served, when charges are given back.  So all downloads hold
    at most C{limit} plus what each needs at the time: one chunk, or the
    bytes its waiting reads ask for.  Reads at offsets charge what they
    need too (L{needed}), as long as they hold it: they keep a chunk after
    its first read for the reads that follow, so with many downloads it
    is their held chunks, not more read-ahead, that fill the budget.

    @ivar peak: the most bytes read ahead at once, for tests and benchmarks.
    @ivar refused: how many times a download found no room to read ahead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._waiting: deque[Callable[[], None]] = deque()
        self._turn: Optional[Callable[[], None]] = None

    @property
    def waiting(self) -> int:
        """Downloads waiting for room to read ahead."""
        return len(self._waiting)

    def discharge(self, size: int) -> None:
        """C{size} charged bytes are gone: handed on, dropped, or not read."""
        self.used -= size
        self._wake()

    def needed(self, size: int) -> None:
        """
        Charge C{size} bytes a download reads because it cannot go on
        without them, room or not: the reads at offsets waiting for them.
        Reading ahead waits until the charges are back under the limit.
        """
        self.used += size
        self.peak = max(self.peak, self.used)

    def ahead(self, size: int, wake: Callable[[], None]) -> bool:
        """
        Read C{size} bytes ahead, if there is room and no download waiting
        before this one: then they are charged.  Else C{wake()} is called
        when there may be room (the caller asks again then).
        """
        # == not is: a bound method is a new object at each lookup.
        turn = self._turn is not None and self._turn == wake
        if (turn or not self._waiting) and self.used + size <= self.limit:
            self.used += size
            self.peak = max(self.peak, self.used)
            return True
        if not turn and wake not in self._waiting:
            self._waiting.append(wake)
            self.refused += 1
        return False

    def spare(self, size: int) -> bool:
        """
        Charge C{size} bytes a download would read more than it must in
        one go (fewer reads, each a thread hand-off), if they leave three
        quarters of the budget free and no download waits for room; else
        it reads what it must, and no one is told later.  So only a few
        downloads at once read more: with many, what they need fills the
        budget (32 concurrent SFTP downloads that could spare the whole
        budget peaked at 145 MiB of RSS instead of 133).
        """
        if self._waiting or self.used + size > self.limit // 4:
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    def forget(self, wake: Callable[[], None]) -> None:
        """A download that waited for room has ended."""
        if wake in self._waiting:
            self._waiting.remove(wake)

    def _wake(self) -> None:
        """Tell waiting downloads in order while there is room."""
        if self._turn is not None:
            return  # a download being told gave bytes back; the loop goes on
        for _ in range(len(self._waiting)):
            if not self._waiting or self.used >= self.limit:
                return
            wake = self._turn = self._waiting.popleft()
            try:
                wake()
            except Exception:
                log.failure("a download failed to take its turn to read ahead")
            finally:
                self._turn = None


@implementer(IPushProducer)
class Download:
    """
    Streams an L{IByteSource} into a consumer with read-ahead and
    backpressure.  Use L{start}; the source is closed when it ends.
    """

    def __init__(
        self,
        source: IByteSource,
        consumer: IConsumer,
        chunk_size: int = 256 * 1024,
        read_ahead: int = 4,
        buffers: Optional[DownloadBuffers] = None,
    ) -> None:
        """
        @param read_ahead: chunks the download may hold, read and not yet
            written to the consumer; all but the next need room in
            C{buffers}.
        @param buffers: the budget of all downloads; None: C{read_ahead}
            alone bounds this one.
        """
        self._source = source
        self._consumer = consumer
        self._chunk = chunk_size
        self._read_ahead = max(1, read_ahead)
        self._buffers = buffers
        #: Chunks read, each with the bytes of it charged to the budget.
        self._queue: deque[tuple[bytes, int]] = deque()
        self._reading = False
        #: Bytes charged to the budget: read ahead, queued or being read.
        self._charged = 0
        self._read_charge = 0
        self._eof = False
        self._paused = False
        self._finished = False
        self._done: Deferred[int] = Deferred()
        self.sent = 0

    def start(self) -> Deferred[int]:
        """
        @return: A Deferred firing with the number of bytes written, after the
            consumer's C{unregisterProducer}; failing with L{TransferStopped}
            if the consumer stopped us, or with the store's error (such as
            L{IntegrityError}) if the stream broke.  On failure the producer
            is left registered: the caller must drop the connection, so the
            client cannot take a broken stream for a whole file.
        """
        self._consumer.registerProducer(self, True)
        self._fill()
        return self._done

    def _fill(self) -> None:
        if self._finished or self._reading or self._eof:
            return
        if len(self._queue) >= self._read_ahead:
            return
        charge = 0
        if self._buffers is not None and self._queue:  # not the next chunk
            if not self._buffers.ahead(self._chunk, self._fill):
                return
            charge = self._chunk
            self._charged += charge
        self._read_charge = charge
        self._reading = True
        d = self._source.read(self._chunk)
        d.addCallbacks(self._got, self._fail)

    def _discharge(self, size: int) -> None:
        if self._buffers is not None and size:
            self._charged -= size
            self._buffers.discharge(size)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        charge = min(self._read_charge, len(data))
        self._discharge(self._read_charge - charge)
        if data:
            self._queue.append((data, charge))
        else:
            self._eof = True
        self._flush()
        self._fill()

    def _flush(self) -> None:
        while self._queue and not self._paused and not self._finished:
            data, charge = self._queue.popleft()
            self.sent += len(data)
            self._consumer.write(data)
            # After the write: giving bytes back may let this very download
            # read its next chunk, and a store read that answers at once
            # would flush it (re-entering this loop) before this one.
            self._discharge(charge)
        if self._eof and not self._queue and not self._finished:
            self._end()
            self._consumer.unregisterProducer()
            self._done.callback(self.sent)

    def _end(self) -> None:
        """Nothing more is read: the source closes, the budget is given back."""
        self._finished = True
        self._queue.clear()
        self._source.close()
        if self._buffers is not None:
            self._buffers.forget(self._fill)
        self._discharge(self._charged)

    def _fail(self, failure: Failure) -> None:
        self._reading = False
        if self._finished:
            return
        self._end()
        self._done.errback(failure)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()
        self._fill()

    def stopProducing(self) -> None:
        if self._finished:
            return
        self._fail(Failure(TransferStopped("the client connection closed")))
