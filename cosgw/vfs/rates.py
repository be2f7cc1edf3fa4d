"""
A user's bandwidth limits, applied in one place below the protocols.

The limits (L{cosgw.policy.throttle.RateLimit}, one per user and
direction, shared by all their sessions) are applied by pausing something
that already knows how to pause, never by sleeping:

  - a download stream: L{ThrottledConsumer} shapes the bytes on their way
    to the consumer and pauses the download meanwhile;
  - an upload stream: L{ThrottledReceiver} pauses the producer (the data
    connection's reading) while the user is over the rate;
  - SFTP's requests at offsets: the reply waits (L{Rates.hold_read},
    L{ReplyHold}), since the client waits for replies; a client that does
    not wait is held by pausing its input as well.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime

from cosgw.policy.throttle import (
    RATE,
    PauseGate,
    RateLimit,
    ThrottledConsumer,
    ThrottledReceiver,
)


class Rates:
    """The upload and download limits of one user (None: unlimited)."""

    def __init__(
        self,
        upload: Optional[RateLimit],
        download: Optional[RateLimit],
        clock: Optional[IReactorTime],
    ) -> None:
        """
        @param clock: times the pauses of streams.
        @raise ValueError: a limit without a clock.
        """
        if (upload is not None or download is not None) and clock is None:
            raise ValueError("rate limits need a clock")
        self.upload = upload
        self.download = download
        self.clock = clock

    def sending(self, consumer: IConsumer) -> Optional[ThrottledConsumer]:
        """
        C{consumer} shaped to the download rate, or None when unlimited.
        Stop it (C{stop}) when the transfer is over.
        """
        if self.download is None:
            return None
        assert self.clock is not None
        return ThrottledConsumer(consumer, self.download, self.clock)

    def receiving(self, gate: PauseGate) -> Optional[ThrottledReceiver]:
        """
        What pauses C{gate} (the producer of an upload) while over the
        upload rate, or None when unlimited.
        """
        if self.upload is None:
            return None
        assert self.clock is not None
        return ThrottledReceiver(gate, self.upload, self.clock)

    def hold_read(self, data: bytes) -> Deferred[bytes]:
        """C{data}, once the download rate lets it go out."""
        if self.download is None:
            return succeed(data)
        return self.download.hold(len(data), data)


class ReplyHold:
    """
    The upload rate of writes at offsets: each write's reply waits until
    the rate allows it, and while any does, C{gate} (the client's input) is
    paused for the reason C{"rate"}, so a client that does not wait for
    replies is held too.
    """

    def __init__(self, limit: Optional[RateLimit], gate: Optional[PauseGate]) -> None:
        self.limit = limit
        self.gate = gate
        self._holds = 0

    def hold(self, n: int) -> Optional[Deferred[None]]:
        """
        Account C{n} bytes written.

        @return: None when the reply may go at once, else a Deferred firing
            when it may.
        """
        if self.limit is None:
            return None
        held: Deferred[None] = self.limit.hold(n)
        if held.called:
            return None
        self._holds += 1
        if self._holds == 1 and self.gate is not None:
            self.gate.pause(RATE)
        held.addBoth(self._released)
        return held

    def _released(self, result: Any) -> Any:
        self._holds -= 1
        if not self._holds and self.gate is not None:
            self.gate.resume(RATE)
        return result
