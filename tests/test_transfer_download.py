"""
Unit tests of L{cosgw.transfer.download}: the download producer's
read-ahead, backpressure and failures, over a fake source and consumer.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cosgw.interfaces import (
    IByteSource,
    IntegrityError,
    StoreUnavailable,
)
from cosgw.transfer import (
    Download,
    TransferStopped,
)
from tests.transfertesting import (
    FakeConsumer,
    FakeSource,
    random_bytes,
)


class DownloadTests(SynchronousTestCase):
    def make(
        self,
        data: bytes,
        auto: bool = True,
        chunk: int = 1000,
        read_ahead: int = 3,
        pause_on_write: bool = False,
    ) -> Download:
        self.source = FakeSource(data, auto)
        self.consumer = FakeConsumer(pause_on_write)
        self.download = Download(self.source, self.consumer, chunk, read_ahead)
        return self.download

    def test_provides_push_producer(self) -> None:
        self.make(b"")
        self.assertTrue(verifyObject(IPushProducer, self.download))
        self.assertTrue(verifyObject(IByteSource, self.source))

    def test_delivers_everything_in_order(self) -> None:
        """
        Every byte reaches the consumer in order, in chunks of at most the
        chunk size; then the producer is unregistered, the source closed,
        and start() fires with the byte count.
        """
        data = random_bytes(10_500)
        self.make(data)
        d = self.download.start()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)
        self.assertTrue(all(len(c) <= 1000 for c in self.consumer.chunks))
        self.assertEqual(self.consumer.events[0], ("register", True))
        self.assertEqual(self.consumer.events[-1], ("unregister",))
        self.assertEqual(self.consumer.events.count(("unregister",)), 1)
        self.assertEqual(self.source.closed, 1)
        self.assertEqual(self.download.sent, len(data))

    def test_empty(self) -> None:
        """An empty source: no write, unregistered, start() fires with 0."""
        self.make(b"")
        self.assertEqual(self.successResultOf(self.download.start()), 0)
        self.assertEqual(self.consumer.events, [("register", True), ("unregister",)])
        self.assertEqual(self.source.closed, 1)

    def test_fires_after_end_of_source(self) -> None:
        """start() fires only once the source said it was at its end."""
        data = random_bytes(2500)
        self.make(data, auto=False)
        d = self.download.start()
        for _ in range(3):
            self.assertNoResult(d)
            self.source.answer()
        self.assertEqual(self.consumer.received, data)
        self.assertNoResult(d)
        self.assertFalse(self.consumer.unregistered)
        self.source.answer()  # b""
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertTrue(self.consumer.unregistered)

    def test_read_ahead_while_paused(self) -> None:
        """
        While the consumer has paused the download, it reads ahead at most
        C{read_ahead} chunks, then stops reading; on resume it writes them
        and reads on.
        """
        data = random_bytes(10_000)
        self.make(data, auto=False, read_ahead=3)
        d = self.download.start()
        self.download.pauseProducing()
        while self.source.waiting is not None:
            self.source.answer()
            self.assertLessEqual(len(self.download._queue), 3)
        self.assertEqual(self.source.reads, 3)
        self.assertEqual(len(self.download._queue), 3)
        self.assertEqual(self.consumer.chunks, [])
        self.download.resumeProducing()
        self.assertEqual(self.consumer.received, data[:3000])
        self.assertIsNotNone(self.source.waiting)
        self.download.pauseProducing()
        while self.source.waiting is not None:
            self.source.answer()
        self.assertEqual(self.source.reads, 6)
        self.assertEqual(self.consumer.received, data[:3000])
        self.download.resumeProducing()
        while self.source.waiting is not None:
            self.source.answer()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)

    def test_consumer_pausing_in_write(self) -> None:
        """
        A consumer that pauses the download from inside write() gets no
        further write until it resumes it.
        """
        data = random_bytes(5000)
        self.make(data, pause_on_write=True, read_ahead=2)
        d = self.download.start()
        self.assertEqual(len(self.consumer.chunks), 1)
        for n in range(2, 6):
            self.download.resumeProducing()
            self.assertEqual(len(self.consumer.chunks), n)
        self.download.resumeProducing()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)

    def test_stop_producing(self) -> None:
        """
        stopProducing() fails start() with TransferStopped and closes the
        source; a read that lands afterwards is dropped.
        """
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.source.answer()
        self.download.stopProducing()
        self.failureResultOf(d, TransferStopped)
        self.assertEqual(self.source.closed, 1)
        self.source.answer()
        self.assertEqual(self.consumer.received, data[:1000])
        self.assertFalse(self.consumer.unregistered)
        self.download.resumeProducing()
        self.assertIsNone(self.source.waiting)
        self.assertEqual(self.source.reads, 2)

    def test_stop_after_end(self) -> None:
        """stopProducing() after the end changes nothing."""
        self.make(b"abc")
        d = self.download.start()
        self.download.stopProducing()
        self.assertEqual(self.successResultOf(d), 3)

    def test_source_failure(self) -> None:
        """
        A read that fails (a broken or corrupt stream) fails start() with
        its error; the producer stays registered, so the caller has to
        drop the connection; the source is closed.
        """
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.source.answer()
        self.source.answer()
        self.source.fail(IntegrityError("obj: stream ended after 2000 of 5000 bytes"))
        self.failureResultOf(d, IntegrityError)
        self.assertFalse(self.consumer.unregistered)
        self.assertEqual(self.source.closed, 1)
        self.assertEqual(self.consumer.received, data[:2000])

    def test_source_failure_while_paused(self) -> None:
        """A failure while chunks wait for the consumer drops them."""
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.download.pauseProducing()
        self.source.answer()
        self.source.fail(StoreUnavailable("connection reset"))
        self.failureResultOf(d, StoreUnavailable)
        self.download.resumeProducing()
        self.assertEqual(self.consumer.chunks, [])
        self.assertFalse(self.consumer.unregistered)
