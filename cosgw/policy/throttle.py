"""
Per-user bandwidth limits, by flow control rather than by sleeping.

The flow-control design, before the code:

  - One L{RateLimit} per user and direction (upload, download), shared by
    all of that user's sessions, so opening more connections does not buy
    more bandwidth.  It is a token bucket with a debt model: bytes are
    always accounted at once (they have already arrived, or are about to be
    written), the bucket may go negative, and the answer is how long the
    caller should hold off until the bucket is back to zero.  Accounting
    first and delaying after keeps the byte stream untouched: nothing is
    ever split, buffered or dropped here.
  - The reactor never sleeps.  A delay is applied by pausing something
    that already knows how to pause: the transport's reading for an upload
    (L{ThrottledReceiver}), the producer feeding the transport for a
    download (L{ThrottledConsumer}), or the reply to an SFTP request
    (L{RateLimit.hold}), since SFTP multiplexes many requests over one
    channel and its replies are what the client waits for.
  - A producer can be paused for several independent reasons at once: the
    transport's write buffer is full, the rate is exceeded, the store has
    too many parts in flight.  Twisted's producers have a single paused
    flag, so the first resume would wrongly undo every pause.  L{PauseGate}
    keeps one flag per reason and lets the producer run only when none is
    held.

Accuracy: the bucket starts full, so a transfer gets C{burst} bytes ahead of
the rate at most; with the default burst (an eighth of a second's worth, at
least 64 KiB) a transfer of a few seconds stays well within 20% of the rate.
"""

from __future__ import annotations

from collections import deque
from typing import Optional, TypeVar, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.task import deferLater
from zope.interface import implementer

T = TypeVar("T")

#: The smallest default burst: one read of a Twisted TCP transport
#: (C{bufferSize}) so a single chunk never makes the bucket's first answer
#: a delay.
MIN_BURST = 64 * 1024

#: The reason L{ThrottledReceiver} and L{ThrottledConsumer} pause with.
RATE = "rate"
#: The reason a consumer's own flow control pauses with (see L{PauseGate}).
CONSUMER = "consumer"


class RateLimit:
    """
    A token bucket for one direction of one user, shared by all their
    sessions.

    C{rate} is in bytes per second; C{burst} is how many bytes may pass
    without delay after a quiet period, C{max(64 KiB, rate // 8)} by
    default: small relative to the rate, so measured throughput stays close
    to it even over transfers of a few seconds.
    """

    def __init__(
        self, rate: int, clock: IReactorTime, burst: Optional[int] = None
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be a positive number of bytes/s: {rate!r}")
        if burst is None:
            burst = max(MIN_BURST, rate // 8)
        if burst < 0:
            raise ValueError(f"burst must not be negative: {burst!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        # A wall clock may step backwards; never refill for negative time.
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)

    def take(self, n: int) -> float:
        """
        Account C{n} bytes now, whether or not there is budget for them:
        they have already arrived or are already on their way out.

        @return: the seconds the caller should hold off before passing more
            bytes: 0.0 while within budget, else the time until the bucket
            is back to zero (the debt divided by the rate).
        """
        if n < 0:
            raise ValueError(f"cannot take a negative number of bytes: {n!r}")
        self._refill()
        self._tokens -= n
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate

    # Without a result T is None; mypy cannot say so of a TypeVar default.
    def hold(self, n: int, result: T = None) -> Deferred[T]:  # type: ignore[assignment]
        """
        Account C{n} bytes and delay an answer by the time L{take} says.
        SFTP uses this to delay its replies (write acknowledgements, read
        data): the client waits for them, so delaying them limits the rate
        without pausing the channel every session of the connection shares.

        @return: a Deferred firing with C{result} after the delay, already
            fired when there is none.  Cancelling it cancels the delay (the
            bytes stay accounted).
        """
        delay = self.take(n)
        if delay <= 0:
            return succeed(result)
        return deferLater(self._clock, delay, lambda: result)


@implementer(IPushProducer)
class PauseGate:
    """
    Several independent reasons can pause one push producer; it runs only
    when none holds it.

    Register the gate, not the producer, with a consumer: the consumer's own
    pauses (L{pauseProducing}, L{resumeProducing}) then become the reason
    C{"consumer"} and cannot undo a pause for another reason, such as the
    rate (C{"rate"}) or the store's parts in flight.  Pausing for a reason
    already held, or resuming one not held, changes nothing.  After
    L{stopProducing} nothing is passed on any more.
    """

    def __init__(self, producer: IPushProducer) -> None:
        self.producer = producer
        self._reasons: set[str] = set()
        self._stopped = False

    @property
    def paused(self) -> bool:
        """Whether any reason holds the producer."""
        return bool(self._reasons)

    @property
    def reasons(self) -> frozenset[str]:
        """The reasons holding the producer now."""
        return frozenset(self._reasons)

    def pause(self, reason: str) -> None:
        """Hold the producer for C{reason}; pause it if it was running."""
        if reason in self._reasons:
            return
        self._reasons.add(reason)
        if len(self._reasons) == 1 and not self._stopped:
            self.producer.pauseProducing()

    def resume(self, reason: str) -> None:
        """Lift C{reason}; resume the producer if nothing else holds it."""
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and not self._stopped:
            self.producer.resumeProducing()

    def pauseProducing(self) -> None:
        """The consumer's flow control: the reason C{"consumer"}."""
        self.pause(CONSUMER)

    def resumeProducing(self) -> None:
        """The consumer's flow control: the reason C{"consumer"}."""
        self.resume(CONSUMER)

    def stopProducing(self) -> None:
        """Stop the producer for good; later pauses and resumes are ignored."""
        if self._stopped:
            return
        self._stopped = True
        self.producer.stopProducing()


class _Resumer:
    """
    At most one pending call that lifts the reason C{"rate"} from a gate,
    pushed later (never earlier) when more debt arrives.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._call: Optional[IDelayedCall] = None
        self._gate: Optional[PauseGate] = None

    def hold(self, gate: PauseGate, delay: float) -> None:
        """Pause C{gate} for the rate and resume it C{delay} seconds on."""
        if self._gate is not None and self._gate is not gate:
            self.release()
        self._gate = gate
        gate.pause(RATE)
        if self._call is not None and self._call.active():
            # The debt only grows while paused, so the new delay is never
            # shorter than what remains of the old one.
            self._call.reset(delay)
        else:
            self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.resume(RATE)

    def cancel(self) -> None:
        """Forget the pending resume, leaving the gate as it is."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._gate = None

    def release(self) -> None:
        """Cancel the pending resume and lift the reason now."""
        gate = self._gate
        self.cancel()
        if gate is not None:
            gate.resume(RATE)


class ThrottledReceiver:
    """
    Counts bytes arriving on a transport and pauses its reading while over
    the rate (uploads).

    C{gate} wraps the transport (an L{IPushProducer}: pausing it stops
    reading from the socket, so TCP's own window slows the sender).  Call
    L{received} from C{dataReceived}; data already read keeps flowing to the
    protocol untouched.
    """

    def __init__(self, gate: PauseGate, limit: RateLimit, clock: IReactorTime) -> None:
        self.gate = gate
        self.limit = limit
        self._resumer = _Resumer(clock)
        self._stopped = False

    def received(self, n: int) -> None:
        """
        Account C{n} bytes just received; when over the rate, pause the
        gate with the reason C{"rate"} until the bucket is back to zero.
        Ignored after L{stop}.
        """
        if self._stopped:
            return
        delay = self.limit.take(n)
        if delay > 0:
            self._resumer.hold(self.gate, delay)

    def stop(self) -> None:
        """
        The transfer is over: cancel the pending resume and lift the
        reason C{"rate"}, so a gate still in use is not left held by a
        reason nobody will lift (a stopped gate passes nothing on).
        """
        self._stopped = True
        self._resumer.release()


@implementer(IConsumer)
class ThrottledConsumer:
    """
    Wraps a consumer (a transport) for downloads and shapes what goes
    through it to the rate: writes are queued and passed on in pieces as the
    bucket allows, and the registered producer is paused (through a
    L{PauseGate}, reason C{"rate"}) while anything waits.  A producer writes
    whole chunks (4 MiB reads from the store); passing a chunk on at once
    and pausing afterwards would let every file smaller than a chunk out at
    full speed.  Memory: at most the chunk being written, since the producer
    is paused meanwhile.

    The gate, not the producer, is registered with the real consumer, so the
    transport's own pauses (its write buffer is full) are the reason
    C{"consumer"}: the producer runs again only when both are lifted.  Only
    push producers are supported.
    """

    def __init__(
        self, consumer: IConsumer, limit: RateLimit, clock: IReactorTime
    ) -> None:
        self.consumer = consumer
        self.limit = limit
        self.gate: Optional[PauseGate] = None
        self._clock = clock
        self._queue: deque[memoryview] = deque()
        self._call: Optional[IDelayedCall] = None
        self._unregister = False
        self._stopped = False
        #: Bytes passed on at a time: small against the rate, so the
        #: shaping is smooth, but not so small that it costs much.
        self._piece = max(16 * 1024, limit.burst // 4)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register C{producer} behind a new L{PauseGate}.

        @raise TypeError: C{streaming} is false (a pull producer).
        @raise RuntimeError: a producer is already registered.
        """
        if not streaming:
            raise TypeError(
                "ThrottledConsumer supports push producers only (streaming=True)"
            )
        if self.gate is not None:
            raise RuntimeError(
                f"a producer ({self.gate.producer!r}) is already registered"
            )
        # streaming=True: a push producer, whatever IConsumer's signature says.
        self.gate = PauseGate(cast(IPushProducer, producer))
        self.consumer.registerProducer(self.gate, True)

    def unregisterProducer(self) -> None:
        """
        The producer is done: unregister it from the real consumer once
        everything queued has gone out (unregistering ends a data
        connection).
        """
        if self._queue and not self._stopped:
            self._unregister = True
            return
        self._finish()

    def _finish(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._unregister = False
        self.gate = None
        self.consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        """Queue C{data}; it goes out as fast as the rate allows."""
        if self._stopped:
            self.consumer.write(data)
            return
        self._queue.append(memoryview(data))
        if self._call is None:
            self._drain()

    def _drain(self) -> None:
        self._call = None
        while self._queue and not self._stopped:
            head = self._queue[0]
            piece = head[: self._piece]
            if len(head) > self._piece:
                self._queue[0] = head[self._piece :]
            else:
                self._queue.popleft()
            self.consumer.write(bytes(piece))
            delay = self.limit.take(len(piece))
            if delay > 0:
                if self.gate is not None:
                    self.gate.pause(RATE)
                self._call = self._clock.callLater(delay, self._drain)
                return
        if self._stopped:
            return
        if self.gate is not None:
            # The producer may write its next chunk (and then unregister)
            # from inside this resume: that write drains itself, so the
            # queue may be full again and a call pending when it returns.
            self.gate.resume(RATE)
        if self._unregister and not self._queue and self._call is None:
            self._finish()

    def stop(self) -> None:
        """
        The transfer is over (or aborted): drop what is queued, cancel the
        pending call and lift the reason C{"rate"}; later writes pass
        through unaccounted.
        """
        self._stopped = True
        self._queue.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.gate is not None:
            self.gate.resume(RATE)
