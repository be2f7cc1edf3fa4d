"""
Unit tests of FTP data connections (L{cosgw.frontends.ftp.data}): which
connection a passive listener accepts, reading only once a consumer is
attached, telling a clean end from a reset, the stall timeout, and the
listing producer's bounded read-ahead.  Over the FakeTCP transport and a
MemoryReactorClock of tests/ftp_unit.py; the control connection's use of
them is tested in tests/test_ftp_protocol.py.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from cosgw import vfs
from cosgw.frontends.ftp.data import (
    DataChannel,
    DataChannelFactory,
    ListingSender,
    normal_host,
)
from cosgw.transfer import TransferStopped
from tests.ftp_unit import CLIENT_HOST, SERVER_HOST, FakeTCP

STALL = 120.0


@implementer(IConsumer)
class Sink:
    """A consumer that keeps what it is given and who produces it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: Any = None
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.data += data


class Producer:
    """A push producer that records what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class LingeringTCP(FakeTCP):
    """
    A connection whose clean close never completes: the client reads
    nothing more, or (over TLS) never answers the close_notify.
    """

    def loseConnection(self) -> None:
        self.disconnecting = True


class ChannelTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.factory = DataChannelFactory(
            CLIENT_HOST, clock=self.clock, stall_timeout=STALL
        )

    def connect(
        self,
        host: str = CLIENT_HOST,
        send_buffer: Optional[int] = None,
        kind: type[FakeTCP] = FakeTCP,
    ) -> tuple[DataChannel, FakeTCP]:
        peer = IPv4Address("TCP", host, 40001)
        channel = self.factory.buildProtocol(peer)
        assert channel is not None
        transport = kind(
            self.clock, IPv4Address("TCP", SERVER_HOST, 61000), peer, send_buffer
        )
        transport.connect(channel)
        return channel, transport

    def receive(self, channel: DataChannel, sink: Sink) -> Deferred[None]:
        return ensureDeferred(channel.receive(sink))


class NormalHostTests(unittest.TestCase):
    def test_ipv4_mapped_is_ipv4(self) -> None:
        self.assertEqual(normal_host("::ffff:192.0.2.1"), "192.0.2.1")

    def test_scope_dropped_and_canonical(self) -> None:
        self.assertEqual(normal_host("FE80:0::1%eth0"), "fe80::1")

    def test_not_an_address(self) -> None:
        self.assertEqual(normal_host("example.com"), "example.com")


class FactoryTests(ChannelTestCase):
    def test_only_the_client_may_connect(self) -> None:
        """RFC 2577: a connection from another host gets nothing."""
        stranger = self.factory.buildProtocol(IPv4Address("TCP", "203.0.113.9", 1))
        self.assertIsNone(stranger)
        self.assertNoResult(self.factory.deferred)
        channel, _ = self.connect()
        self.assertIs(self.successResultOf(self.factory.deferred), channel)

    def test_one_connection_only(self) -> None:
        self.connect()
        self.assertIsNone(
            self.factory.buildProtocol(IPv4Address("TCP", CLIENT_HOST, 40002))
        )

    def test_ipv4_mapped_client(self) -> None:
        factory = DataChannelFactory("::ffff:192.0.2.10", clock=self.clock)
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", CLIENT_HOST, 1)))
        factory = DataChannelFactory(CLIENT_HOST, clock=self.clock)
        self.assertIsNotNone(
            factory.buildProtocol(IPv6Address("TCP", "::ffff:192.0.2.10", 1))
        )

    def test_active_connection_failure(self) -> None:
        self.factory.clientConnectionFailed(
            None, Failure(error.ConnectionRefusedError())
        )
        self.failureResultOf(self.factory.deferred, error.ConnectionRefusedError)


class ReceiveTests(ChannelTestCase):
    def test_nothing_read_before_a_consumer(self) -> None:
        """Early bytes wait in the socket; then arrive in order."""
        channel, transport = self.connect()
        self.assertEqual(transport.producerState, "paused")
        self.successResultOf(channel.ready())
        transport.receive(b"early ")
        self.assertEqual(channel.received, 0)
        sink = Sink()
        done = self.receive(channel, sink)
        self.assertEqual(transport.producerState, "producing")
        transport.receive(b"late")
        self.assertEqual(bytes(sink.data), b"early late")
        self.assertIs(sink.producer, channel)
        self.assertNoResult(done)
        transport.peer_close()
        self.assertIsNone(self.successResultOf(done))
        self.assertTrue(sink.unregistered)
        self.assertIsNone(self.successResultOf(channel.closed()))

    def test_reset_is_not_an_end_of_file(self) -> None:
        channel, transport = self.connect()
        sink = Sink()
        done = self.receive(channel, sink)
        transport.receive(b"part")
        transport.peer_reset()
        self.failureResultOf(done, TransferStopped)
        self.assertIsInstance(
            self.successResultOf(channel.closed()), error.ConnectionLost
        )

    def test_stall_timeout(self) -> None:
        channel, transport = self.connect()
        done = self.receive(channel, Sink())
        self.clock.advance(STALL - 1)
        transport.receive(b"x")  # a byte restarts the count
        self.clock.advance(STALL - 1)
        self.assertNoResult(done)
        self.clock.advance(1)
        self.failureResultOf(done, TransferStopped)
        self.assertIsInstance(transport.reason.value, error.ConnectionAborted)

    def test_paused_by_the_gateway_is_not_a_stall(self) -> None:
        """The store holding the upload back pauses reading, not the clock."""
        channel, transport = self.connect()
        sink = Sink()
        done = self.receive(channel, sink)
        sink.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        transport.receive(b"waits")
        self.clock.advance(10 * STALL)
        self.assertNoResult(done)
        self.assertEqual(bytes(sink.data), b"")
        sink.producer.resumeProducing()
        self.assertEqual(bytes(sink.data), b"waits")
        self.clock.advance(STALL)
        self.failureResultOf(done, TransferStopped)

    def test_abort_resets(self) -> None:
        channel, transport = self.connect()
        done = self.receive(channel, Sink())
        channel.abort()
        self.clock.advance(0)
        self.failureResultOf(done, TransferStopped)
        self.assertIsInstance(transport.reason.value, error.ConnectionAborted)


class SendTests(ChannelTestCase):
    def test_send_and_close_cleanly(self) -> None:
        channel, transport = self.connect()
        producer = Producer()
        channel.registerProducer(producer, True)
        self.assertIs(transport.producer, producer)
        self.assertEqual(transport.producerState, "producing", "reads for the end")
        transport.receive(b"ignored")
        channel.write(b"data")
        channel.unregisterProducer()
        self.assertTrue(transport.disconnecting)
        self.clock.advance(0)
        self.assertEqual(transport.read(), b"data")
        self.assertIsNone(self.successResultOf(channel.closed()))
        self.assertEqual(producer.calls, [])

    def test_close_that_never_completes_is_dropped(self) -> None:
        """After the last byte, the close may take the stall time, no more."""
        channel, transport = self.connect(kind=LingeringTCP)
        channel.registerProducer(Producer(), True)
        channel.write(b"data")
        channel.unregisterProducer()
        self.clock.advance(STALL - 1)
        self.assertFalse(transport.ended)
        self.clock.advance(1)
        self.assertIsInstance(transport.reason.value, error.ConnectionAborted)
        self.assertIsInstance(
            self.successResultOf(channel.closed()), error.ConnectionAborted
        )

    def test_slow_reader_stalls(self) -> None:
        """A client that reads nothing for the stall time loses the download."""
        channel, transport = self.connect(send_buffer=4)
        producer = Producer()
        channel.registerProducer(producer, True)
        channel.write(b"more than four bytes")
        self.assertEqual(producer.calls, ["pause"])
        self.clock.advance(STALL - 1)
        transport.read()  # the client reads: the producer resumes
        self.assertEqual(producer.calls, ["pause", "resume"])
        channel.write(b"more than four bytes")
        self.clock.advance(STALL - 1)
        self.assertFalse(transport.ended)
        self.clock.advance(1)
        self.assertIsInstance(transport.reason.value, error.ConnectionAborted)
        self.assertEqual(producer.calls, ["pause", "resume", "pause", "stop"])
        self.assertIsInstance(
            self.successResultOf(channel.closed()), error.ConnectionAborted
        )


class PagedListing:
    """A listing whose pages the test hands out one fetch at a time."""

    def __init__(self, pages: list[list[str]]) -> None:
        self.pages = [
            [vfs.Entry(name=n, is_dir=False, size=0, mtime=0.0) for n in page]
            for page in pages
        ]
        self.fetches: list[Deferred[Optional[list[vfs.Entry]]]] = []

    def next_page(self) -> Deferred[Optional[list[vfs.Entry]]]:
        d: Deferred[Optional[list[vfs.Entry]]] = Deferred()
        self.fetches.append(d)
        return d

    def answer(self) -> None:
        """Answer the latest fetch with the next page, or the end."""
        page = self.pages.pop(0) if self.pages else None
        self.fetches[-1].callback(page)


class ListingSenderTests(ChannelTestCase):
    def sender(
        self, listing: Any, first: list[str], send_buffer: Optional[int] = None
    ) -> tuple[ListingSender, FakeTCP]:
        channel, transport = self.connect(send_buffer=send_buffer)
        entries = [vfs.Entry(name=n, is_dir=False, size=0, mtime=0.0) for n in first]
        return ListingSender(listing, entries, channel, lambda e: e.name), transport

    def test_streams_pages_then_closes(self) -> None:
        listing = PagedListing([["c", "d"], ["e"]])
        sender, transport = self.sender(listing, ["a", "b"])
        done = sender.start()
        self.assertEqual(transport.value(), b"a\r\nb\r\n", "the first page at once")
        self.assertEqual(len(listing.fetches), 1, "the next page is being fetched")
        listing.answer()
        listing.answer()
        listing.answer()
        self.assertEqual(self.successResultOf(done), 5)
        self.clock.advance(0)
        self.assertEqual(transport.read(), b"a\r\nb\r\nc\r\nd\r\ne\r\n")
        self.assertIsInstance(transport.reason.value, error.ConnectionDone)

    def test_slow_client_holds_at_most_two_pages(self) -> None:
        listing = PagedListing([["p1"], ["p2"], ["p3"], ["p4"]])
        sender, transport = self.sender(listing, ["p0"], send_buffer=1)
        done = sender.start()
        listing.answer()  # p1 held: the client has not read p0
        listing.answer()  # p2 held
        self.assertEqual(len(listing.fetches), 2, "no third page while paused")
        self.assertEqual(transport.read(), b"p0\r\n")
        self.assertEqual(len(listing.fetches), 3)
        while not done.called:
            transport.read()
            if not listing.fetches[-1].called:
                listing.answer()
        self.assertEqual(self.successResultOf(done), 5)

    def test_client_gone(self) -> None:
        listing = PagedListing([["b"]])
        sender, transport = self.sender(listing, ["a"])
        done = sender.start()
        transport.peer_reset()
        self.failureResultOf(done, TransferStopped)

    def test_store_failure(self) -> None:
        listing = PagedListing([])
        sender, _ = self.sender(listing, ["a"])
        done = sender.start()
        listing.fetches[-1].errback(vfs.StoreFailure("/", "store down"))
        self.failureResultOf(done, vfs.StoreFailure)
