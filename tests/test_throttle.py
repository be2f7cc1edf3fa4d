"""
Tests for L{cosgw.policy.throttle}: the token bucket on a L{Clock}, the pause gate,
the receiver and consumer with L{StringTransport}, and one real loopback
TCP transfer measured against the rate.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cosgw.policy.throttle import (
    PauseGate,
    RateLimit,
    ThrottledConsumer,
    ThrottledReceiver,
)

KiB = 1024
MiB = 1024 * KiB


@implementer(IPushProducer)
class RecordingProducer:
    """A push producer that records what it is told, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        self.state = "producing"

    def stopProducing(self) -> None:
        self.calls.append("stop")
        self.state = "stopped"


class RateLimitTests(unittest.TestCase):
    """The token bucket, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_default_burst(self) -> None:
        """The burst defaults to an eighth of the rate, at least 64 KiB."""
        self.assertEqual(RateLimit(1000, self.clock).burst, 64 * KiB)
        self.assertEqual(RateLimit(8 * MiB, self.clock).burst, MiB)
        self.assertEqual(RateLimit(8 * MiB, self.clock, burst=10).burst, 10)

    def test_bad_arguments(self) -> None:
        """A rate must be positive; bytes taken must not be negative."""
        self.assertRaises(ValueError, RateLimit, 0, self.clock)
        self.assertRaises(ValueError, RateLimit, 10, self.clock, burst=-1)
        self.assertRaises(ValueError, RateLimit(10, self.clock).take, -1)

    def test_within_burst(self) -> None:
        """Bytes within the full bucket pass without delay."""
        limit = RateLimit(1000, self.clock, burst=500)
        self.assertEqual(limit.take(200), 0.0)
        self.assertEqual(limit.take(300), 0.0)

    def test_debt(self) -> None:
        """
        Over the bucket, the delay is the time to pay back the debt; debt
        accumulates, and the bucket refills at the rate.
        """
        limit = RateLimit(1000, self.clock, burst=500)
        self.assertAlmostEqual(limit.take(700), 0.2)
        self.assertAlmostEqual(limit.take(100), 0.3)
        self.clock.advance(0.3)
        self.assertEqual(limit.take(0), 0.0)
        self.clock.advance(0.1)
        # 100 tokens refilled: 100 bytes pass, 50 more are 0.05 s of debt.
        self.assertEqual(limit.take(100), 0.0)
        self.assertAlmostEqual(limit.take(50), 0.05)

    def test_refill_capped_at_burst(self) -> None:
        """A long quiet period refills the bucket to the burst, no more."""
        limit = RateLimit(1000, self.clock, burst=500)
        self.clock.advance(3600)
        self.assertEqual(limit.take(500), 0.0)
        self.assertAlmostEqual(limit.take(1), 0.001)

    def test_steady_rate(self) -> None:
        """A producer obeying the delays moves bytes at the rate."""
        limit = RateLimit(100_000, self.clock, burst=10_000)
        sent = 0
        while self.clock.seconds() < 10:
            sent += 4096
            self.clock.advance(max(limit.take(4096), 0.001))
        rate = sent / self.clock.seconds()
        self.assertTrue(95_000 < rate < 105_000, rate)

    def test_hold_no_delay(self) -> None:
        """Within budget, hold() returns an already fired Deferred."""
        limit = RateLimit(1000, self.clock, burst=500)
        self.assertEqual(self.successResultOf(limit.hold(100, "data")), "data")

    def test_hold_fires_after_delay(self) -> None:
        """Over budget, hold() fires with its result when the debt is paid."""
        limit = RateLimit(1000, self.clock, burst=500)
        d = limit.hold(1000, "ack")
        self.assertNoResult(d)
        self.clock.advance(0.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), "ack")

    def test_hold_queues(self) -> None:
        """Holds issued together fire one after another, at the rate."""
        limit = RateLimit(1000, self.clock, burst=0)
        first, second = limit.hold(100, 1), limit.hold(100, 2)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(second), 2)

    def test_hold_cancel(self) -> None:
        """Cancelling a hold cancels its delayed call."""
        limit = RateLimit(1000, self.clock, burst=0)
        d = limit.hold(100)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PauseGateTests(unittest.TestCase):
    """Several reasons pausing one producer."""

    def setUp(self) -> None:
        self.producer = RecordingProducer()
        self.gate = PauseGate(self.producer)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPushProducer, self.gate))

    def test_two_reasons(self) -> None:
        """The producer runs again only when every reason is lifted."""
        self.gate.pause("rate")
        self.gate.pauseProducing()
        self.assertEqual(self.gate.reasons, {"rate", "consumer"})
        self.gate.resumeProducing()
        self.assertEqual(self.producer.state, "paused")
        self.assertTrue(self.gate.paused)
        self.gate.resume("rate")
        self.assertEqual(self.producer.state, "producing")
        self.assertEqual(self.producer.calls, ["pause", "resume"])

    def test_idempotent(self) -> None:
        """
        Pausing for a held reason, or resuming one not held, passes nothing
        on.
        """
        self.gate.resume("rate")
        self.gate.pause("rate")
        self.gate.pause("rate")
        self.gate.resume("consumer")
        self.assertEqual(self.producer.calls, ["pause"])
        self.gate.resume("rate")
        self.gate.resume("rate")
        self.assertEqual(self.producer.calls, ["pause", "resume"])

    def test_stop(self) -> None:
        """stopProducing passes through once; nothing is passed on after."""
        self.gate.pause("rate")
        self.gate.stopProducing()
        self.gate.stopProducing()
        self.gate.resume("rate")
        self.gate.pause("consumer")
        self.assertEqual(self.producer.calls, ["pause", "stop"])


class ThrottledReceiverTests(unittest.TestCase):
    """Uploads: pausing a transport's reading while over the rate."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.gate = PauseGate(self.transport)
        self.limit = RateLimit(1000, self.clock, burst=500)
        self.receiver = ThrottledReceiver(self.gate, self.limit, self.clock)

    def test_within_budget(self) -> None:
        """Bytes within the budget do not pause the transport."""
        self.receiver.received(500)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pause_and_resume(self) -> None:
        """Over the rate, reading pauses until the debt is paid."""
        self.receiver.received(800)
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(0.29)
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(0.01)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_more_while_paused(self) -> None:
        """
        Bytes that arrive while paused (already read) push the resume later;
        one pending call at most.
        """
        self.receiver.received(800)
        self.clock.advance(0.1)
        self.receiver.received(300)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        # Debt: 300 - 100 refilled + 300 = 500 bytes, 0.5 s from now.
        self.clock.advance(0.49)
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(0.01)
        self.assertEqual(self.transport.producerState, "producing")

    def test_other_reason_holds(self) -> None:
        """The rate's resume does not undo another reason's pause."""
        self.receiver.received(800)
        self.gate.pause("store")
        self.clock.advance(1)
        self.assertEqual(self.transport.producerState, "paused")
        self.gate.resume("store")
        self.assertEqual(self.transport.producerState, "producing")

    def test_stop(self) -> None:
        """stop() cancels the pending resume and lifts the rate's pause."""
        self.receiver.received(800)
        self.receiver.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.transport.producerState, "producing")
        self.receiver.received(10_000)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shared_limit(self) -> None:
        """Two sessions of one user share the bucket."""
        other = StringTransport()
        receiver = ThrottledReceiver(PauseGate(other), self.limit, self.clock)
        self.receiver.received(400)
        receiver.received(400)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(other.producerState, "paused")
        self.clock.advance(0.3)
        self.assertEqual(other.producerState, "producing")


class ThrottledConsumerTests(unittest.TestCase):
    """Downloads: pausing the producer feeding a transport."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.limit = RateLimit(1000, self.clock, burst=500)
        self.consumer = ThrottledConsumer(self.transport, self.limit, self.clock)
        self.producer = RecordingProducer()

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IConsumer, self.consumer))

    def test_registers_gate(self) -> None:
        """The real consumer gets a gate around the producer, streaming."""
        self.consumer.registerProducer(self.producer, True)
        gate = self.transport.producer
        self.assertIsInstance(gate, PauseGate)
        self.assertIs(gate.producer, self.producer)
        self.assertTrue(self.transport.streaming)
        self.consumer.unregisterProducer()
        self.assertIsNone(self.transport.producer)

    def test_pull_producer_refused(self) -> None:
        """A pull producer is refused with a clear error."""
        error = self.assertRaises(
            TypeError, self.consumer.registerProducer, self.producer, False
        )
        self.assertIn("push producers only", str(error))
        self.assertIsNone(self.transport.producer)

    def test_writes_pass_through(self) -> None:
        """Data reaches the transport unchanged, throttled or not."""
        self.consumer.registerProducer(self.producer, True)
        self.consumer.write(b"a" * 400)
        self.consumer.write(b"b" * 400)
        self.assertEqual(self.transport.value(), b"a" * 400 + b"b" * 400)

    def test_pause_and_resume(self) -> None:
        """Over the rate, the producer pauses until the debt is paid."""
        self.consumer.registerProducer(self.producer, True)
        self.consumer.write(b"x" * 400)
        self.assertEqual(self.producer.calls, [])
        self.consumer.write(b"x" * 400)
        self.assertEqual(self.producer.calls, ["pause"])
        self.clock.advance(0.29)
        self.assertEqual(self.producer.calls, ["pause"])
        self.clock.advance(0.01)
        self.assertEqual(self.producer.calls, ["pause", "resume"])

    def test_transport_pause_interplay(self) -> None:
        """
        The transport's own pause and the rate's pause are independent:
        the producer resumes only when both are lifted, whichever is last.
        """
        self.consumer.registerProducer(self.producer, True)
        gate = self.transport.producer
        # The transport's buffer fills, then the rate is exceeded.
        gate.pauseProducing()
        self.consumer.write(b"x" * 800)
        self.clock.advance(0.3)
        self.assertEqual(self.producer.state, "paused")
        gate.resumeProducing()
        self.assertEqual(self.producer.calls, ["pause", "resume"])
        # The rate is exceeded, then the transport's buffer fills and
        # drains while the rate still holds.
        self.consumer.write(b"x" * 1000)
        gate.pauseProducing()
        gate.resumeProducing()
        self.assertEqual(self.producer.state, "paused")
        self.clock.advance(1)
        self.assertEqual(self.producer.calls, ["pause", "resume"] * 2)

    def test_stop(self) -> None:
        """stop() cancels the pending resume; later writes pass freely."""
        self.consumer.registerProducer(self.producer, True)
        self.consumer.write(b"x" * 800)
        self.consumer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.consumer.write(b"x" * 10_000)
        self.assertEqual(self.producer.calls, ["pause", "resume"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unregister_cancels(self) -> None:
        """Unregistering the producer cancels its pending resume."""
        self.consumer.registerProducer(self.producer, True)
        self.consumer.write(b"x" * 800)
        self.consumer.unregisterProducer()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.consumer.write(b"x" * 800)
        self.assertEqual(self.producer.calls, ["pause"])

    def test_last_chunk_written_from_inside_a_resume(self) -> None:
        """
        A download writes its next chunk, and then unregisters, from inside
        the resume the rate gives it: every byte of that last chunk still
        goes out before the real consumer is unregistered (which ends an
        FTP data connection).  Before, the resume's caller unregistered at
        once and the chunk's tail was lost behind a 226.
        """
        # Chunks of several pieces (16 KiB each at least), as a download's.
        chunks = [b"a" * 40 * KiB, b"b" * 40 * KiB, b"c" * 30 * KiB]
        limit = RateLimit(100 * KiB, self.clock, burst=20 * KiB)
        consumer = ThrottledConsumer(self.transport, limit, self.clock)

        @implementer(IPushProducer)
        class Download:
            paused = False

            def pauseProducing(self) -> None:
                self.paused = True

            def resumeProducing(self) -> None:
                self.paused = False
                while chunks and not self.paused:
                    consumer.write(chunks.pop(0))
                if not chunks:
                    consumer.unregisterProducer()

            def stopProducing(self) -> None:
                raise AssertionError("not stopped")

        producer = Download()
        consumer.registerProducer(producer, True)
        producer.resumeProducing()
        for _ in range(100):
            if self.transport.producer is None:
                break
            self.clock.advance(0.1)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(
            self.transport.value(), b"a" * 40 * KiB + b"b" * 40 * KiB + b"c" * 30 * KiB
        )

    def test_stopped_by_transport(self) -> None:
        """The transport stopping the gate stops the producer, once."""
        self.consumer.registerProducer(self.producer, True)
        self.consumer.write(b"x" * 800)
        self.transport.producer.stopProducing()
        self.clock.advance(1)
        self.assertEqual(self.producer.calls, ["pause", "stop"])


class _Sink(Protocol):
    """Counts bytes received at a limited rate; fires when all arrived."""

    def __init__(self, total: int, limit: RateLimit, clock: Any) -> None:
        self.total = total
        self.limit = limit
        self.clock = clock
        self.received = 0
        self.done: Deferred[float] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self.receiver: Optional[ThrottledReceiver] = None

    def connectionMade(self) -> None:
        self.started = self.clock.seconds()
        self.receiver = ThrottledReceiver(
            PauseGate(self.transport), self.limit, self.clock
        )

    def dataReceived(self, data: bytes) -> None:
        assert self.receiver is not None
        self.received += len(data)
        self.receiver.received(len(data))
        if self.received >= self.total and not self.done.called:
            self.done.callback(self.clock.seconds() - self.started)

    def connectionLost(self, reason: Failure) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)


class _Source(Protocol):
    """Writes everything at once, as fast as the kernel takes it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class LoopbackRateTests(unittest.TestCase):
    """A real TCP upload over loopback, throttled by pausing reads."""

    timeout = 30

    async def test_upload_rate(self) -> None:
        """1.5 MiB pushed at full speed arrives at 512 KiB/s, within 20%."""
        from twisted.internet import reactor
        from twisted.internet.protocol import ClientCreator

        rate = 512 * KiB
        total = 3 * MiB // 2
        limit = RateLimit(rate, reactor)
        accepted: Deferred[_Sink] = Deferred()

        def build() -> _Sink:
            sink = _Sink(total, limit, reactor)
            accepted.callback(sink)
            return sink

        port = reactor.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        source = await ClientCreator(reactor, _Source, b"\0" * total).connectTCP(
            "127.0.0.1", port.getHost().port
        )
        sink = None
        try:
            # The accept and the connect complete in either order.
            sink = await accepted.addTimeout(5, reactor)
            elapsed = await sink.done.addTimeout(20, reactor)
        finally:
            source.transport.loseConnection()
            await source.lost
            if sink is not None:
                await sink.lost
        measured = total / elapsed
        self.assertTrue(
            0.8 * rate <= measured <= 1.2 * rate,
            f"{measured / KiB:.0f} KiB/s for a {rate / KiB:.0f} KiB/s limit"
            f" ({elapsed:.2f} s)",
        )
