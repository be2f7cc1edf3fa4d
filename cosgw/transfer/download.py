"""
A download: a push producer that streams an object from the store into a
consumer (the data connection).

It keeps at most C{read_ahead} chunks read from the store (one read in
flight at a time; the store's reads run in threads) and writes them to the
consumer while the consumer has not paused it.  When the client is slow,
the transport pauses us, the queue fills and we stop reading: memory stays
at read_ahead x chunk.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import IByteSource
from cosgw.transfer.errors import TransferStopped


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
    ) -> None:
        self._source = source
        self._consumer = consumer
        self._chunk = chunk_size
        self._read_ahead = max(1, read_ahead)
        self._queue: deque[bytes] = deque()
        self._reading = False
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
        self._reading = True
        d = self._source.read(self._chunk)
        d.addCallbacks(self._got, self._fail)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        if data:
            self._queue.append(data)
        else:
            self._eof = True
        self._flush()
        self._fill()

    def _flush(self) -> None:
        while self._queue and not self._paused and not self._finished:
            data = self._queue.popleft()
            self.sent += len(data)
            self._consumer.write(data)
        if self._eof and not self._queue and not self._finished:
            self._finished = True
            self._source.close()
            self._consumer.unregisterProducer()
            self._done.callback(self.sent)

    def _fail(self, failure: Failure) -> None:
        self._reading = False
        if self._finished:
            return
        self._finished = True
        self._queue.clear()
        self._source.close()
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
