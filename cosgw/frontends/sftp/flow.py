"""
Flow control for SFTP sessions: one client never makes the reactor buffer,
copy or compute without bound (ARCHITECTURE rule 8).

SFTP has no flow control of its own: a client may send any number of
requests and leave the replies unread.  Conch would read every request,
answer each, and keep the answers its client does not take: in its
channel buffer (C{buf += data}, a quadratic copy) once the client's SSH
window is closed, and in the TCP transport's buffer while the window is
open but the client does not read its socket.  So a session's requests
pass through a L{RequestGate}, and the session stops taking new ones while

  - L{RequestGate.max_requests} requests are in flight (answered by no
    reply yet), or
  - the reply bytes it has promised (the lengths of the READs in flight)
    plus the replies not sent yet reach L{RequestGate.high_water}, or
  - the TCP transport's own buffer is full (its producer was paused),

and takes them again once in flight and waiting bytes are back under
three quarters of the count and L{RequestGate.low_water}.  What a stopped
session does with its connection depends on why it stopped:

  - replies wait only for the store or the client's socket: the session
    stops reading the connection (TCP backpressure) until they went;
  - replies wait for the client's SSH window: the connection must go on
    being read, or the client's WINDOW_ADJUST would never arrive.  The
    channel then holds back the client's window instead (SSH's own flow
    control): requests already received wait unparsed, and the client may
    send no more than the window (L{cosgw.frontends.sftp.session}).

Replies are encrypted only as the TCP transport takes them: a channel
sends nothing while the transport's buffer is over its limit
(L{OUTPUT_LIMIT}, 1 MiB; L{OutputWatch}), and its replies wait
unencrypted until the buffer has emptied; what the buffer may still take
is sealed and written at once (L{OutputWatch.room}).  So what a session
holds is bounded by its gate: the promised and unsent reply bytes
(C{high_water}, 512 KiB: enough for a download at full speed, measured),
the reader's chunks those reads need (L{cosgw.transfer.reader}), and at
most the limit plus a packet encrypted in the TCP transport.  (With
4 MiB promised and every reply encrypted as soon as the client's window
allowed, 32 OpenSSH downloads held 7 MiB each: 316 MiB of RSS.)

Every buffer on the way is a L{ChunkQueue}: appending and taking cost what
they move, never a copy of everything buffered.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol, Union

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["ChunkQueue", "OutputWatch", "RequestGate"]

KiB = 1024
MiB = 1024 * KiB

#: The encrypted bytes an SSH connection may have in its TCP transport's
#: buffer before it says it is full (L{OutputWatch}), at most, and what all
#: connections together may have before each gets less (down to Twisted's
#: 64 KiB).  Each time a buffer empties the reactor goes round once more
#: (stop writing, resume the producer, encrypt the next replies, start
#: writing: two epoll_ctl calls and a poll): at 64 KiB about ten rounds per
#: MiB downloaded, at 256 KiB three (gateway CPU per GB of one OpenSSH
#: download 2.4 -> 2.1 s), at 1 MiB about one (its reactor thread's CPU
#: per GB -8% again).  But one reactor turn encrypts a full buffer
#: for every connection whose buffer emptied: 32 downloads at 256 KiB each
#: made another session's NOOP wait 50 ms (p50) instead of 16 ms at 64 KiB;
#: so the connections share L{OUTPUT_TOTAL}.
OUTPUT_LIMIT = 1024 * KiB
OUTPUT_TOTAL = 2 * MiB
OUTPUT_FLOOR = 64 * KiB


class ChunkQueue:
    """
    Bytes in arrival order, kept as the chunks they came in.  Appending is
    O(1); taking or peeking at n bytes copies n bytes (plus at most one
    chunk boundary per chunk crossed), however much is queued.  This is
    what C{buf += data} / C{buf = buf[n:]} are not: both copy the whole
    buffer, so a packet arriving in many small pieces costs its length
    squared.
    """

    def __init__(self) -> None:
        self._chunks: deque[Union[bytes, memoryview]] = deque()
        #: Bytes of the first chunk already taken.
        self._offset = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, data: Union[bytes, memoryview]) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def peek(self, n: int) -> bytes:
        """The first C{min(n, len(self))} bytes, left in the queue."""
        n = min(n, self._size)
        pieces = []
        offset = self._offset
        for chunk in self._chunks:
            if n <= 0:
                break
            piece = chunk[offset : offset + n]
            pieces.append(piece)
            n -= len(piece)
            offset = 0
        return b"".join(pieces)

    def take(self, n: int) -> bytes:
        """Remove and return the first C{min(n, len(self))} bytes."""
        n = min(n, self._size)
        self._size -= n
        pieces = []
        while n > 0:
            chunk = self._chunks[0]
            available = len(chunk) - self._offset
            if available <= n:
                pieces.append(chunk[self._offset :] if self._offset else chunk)
                self._chunks.popleft()
                self._offset = 0
                n -= available
            else:
                pieces.append(chunk[self._offset : self._offset + n])
                self._offset += n
                n = 0
        first = pieces[0] if pieces else b""
        if len(pieces) == 1 and isinstance(first, bytes):
            return first
        return b"".join(pieces)

    def take_views(self, n: int) -> list[memoryview]:
        """
        Remove the first C{min(n, len(self))} bytes, as views of the chunks
        they are in: nothing is copied (the caller joins them once, into
        the packet that carries them).
        """
        n = min(n, self._size)
        self._size -= n
        views = []
        while n > 0:
            chunk = memoryview(self._chunks[0])
            available = len(chunk) - self._offset
            if available <= n:
                views.append(chunk[self._offset :])
                self._chunks.popleft()
                self._offset = 0
                n -= available
            else:
                views.append(chunk[self._offset : self._offset + n])
                self._offset += n
                n = 0
        return views

    def clear(self) -> None:
        self._chunks.clear()
        self._offset = 0
        self._size = 0


class RequestGate:
    """
    One SFTP session's requests in flight and the reply bytes they may
    still produce, and whether the session may take another request (see
    the module docstring).  Pure bookkeeping: the protocol tells it what it
    dispatched and sent, and asks L{accepting}.

    Each request in flight is counted under its request id (a client may
    reuse ids; each reply settles the oldest request under its id).
    """

    def __init__(
        self,
        max_requests: int = 128,
        high_water: int = 512 * KiB,
        low_water: int = 256 * KiB,
    ) -> None:
        """
        @param max_requests: requests in flight at which the session stops
            taking more (OpenSSH's client keeps 64 in flight, rclone 64).
        @param high_water: promised plus unsent reply bytes at which it
            stops (OpenSSH keeps 64 READs in flight, of up to 255 KiB with
            C{limits@openssh.com}: the gate, not the client, sets the pace).
        @param low_water: the bytes under which it takes requests again.
        """
        if not 0 < low_water <= high_water or max_requests < 1:
            raise ValueError("need 0 < low_water <= high_water, max_requests >= 1")
        self.max_requests = max_requests
        self.high_water = high_water
        self.low_water = low_water
        self._flight: dict[bytes, deque[int]] = {}
        #: Requests in flight.
        self.in_flight = 0
        #: Reply bytes promised to the requests in flight.
        self.promised = 0
        self._stopped = False

    def dispatched(self, request_id: bytes, promise: int = 0) -> None:
        """A request went to its handler; its reply may be C{promise} bytes."""
        self._flight.setdefault(request_id, deque()).append(promise)
        self.in_flight += 1
        self.promised += promise

    def answered(self, request_id: bytes) -> bool:
        """
        A reply for C{request_id} was sent: the oldest request under that id
        is settled.  False if none was in flight (a reply to a request that
        was never dispatched, such as one refused unparsed).
        """
        promises = self._flight.get(request_id)
        if not promises:
            return False
        self.promised -= promises.popleft()
        self.in_flight -= 1
        if not promises:
            del self._flight[request_id]
        return True

    def accepting(self, waiting: int, output_full: bool = False) -> bool:
        """
        May the session take another request, with C{waiting} reply bytes
        not sent yet (held back by the client's window or the TCP
        transport's buffer) and C{output_full} when the TCP transport's
        buffer is over its limit?  Stops at the high marks,
        starts again under the low ones.
        """
        pending = self.promised + waiting
        if self._stopped:
            self._stopped = (
                output_full
                or self.in_flight > self.max_requests * 3 // 4
                or pending > self.low_water
            )
        else:
            self._stopped = (
                output_full
                or self.in_flight >= self.max_requests
                or pending >= self.high_water
            )
        return not self._stopped

    def reset(self) -> None:
        """The session is gone: nothing is in flight any more."""
        self._flight.clear()
        self.in_flight = 0
        self.promised = 0
        self._stopped = False


class _Watched(Protocol):
    """What L{OutputWatch} needs of the SSH transport."""

    #: The TCP transport under it.
    transport: Any

    def output_changed(self, full: bool) -> None: ...

    def release_write_side(self) -> None: ...


@implementer(IPushProducer)
class OutputWatch:
    """
    The SSH transport's stand-in as its TCP transport's producer, which
    sets the SSH transport's C{output_full}: full once the transport is
    paused and more than its share of L{OUTPUT_TOTAL} (at most C{limit})
    was written since its buffer was last empty; no longer full once it is
    empty.

    Twisted pauses a producer once the buffer holds more than its
    C{bufferSize}, which is also the size of the transport's reads, so
    how much input one read takes past a hold: raised to 256 KiB it took
    32 OpenSSH uploads' peak RSS from 144 to 155 MiB.  So C{bufferSize}
    stays Twisted's 64 KiB, and the SSH transport reports what it writes
    (L{wrote}); the bytes written since the buffer was last empty bound
    what it holds.  A send may take twice the limit, so that a full buffer
    goes in one system call.
    """

    def __init__(self, ssh: _Watched, limit: int = OUTPUT_LIMIT) -> None:
        self._ssh = ssh
        #: The most, with few connections (L{share}).
        self.limit = limit
        self._share = self.share()
        self._paused = False
        #: Bytes written since the TCP transport's buffer was last empty
        #: (as far as the pause and resume tell).
        self._written = 0
        tcp = ssh.transport
        if hasattr(tcp, "SEND_LIMIT"):
            tcp.SEND_LIMIT = max(tcp.SEND_LIMIT, 2 * limit)

    def share(self) -> int:
        """
        This connection's limit: L{OUTPUT_TOTAL} shared by the factory's
        connections, between L{OUTPUT_FLOOR} and C{limit}.
        """
        factory = getattr(self._ssh, "factory", None)
        connections = len(getattr(factory, "connections", ())) or 1
        return max(OUTPUT_FLOOR, min(self.limit, OUTPUT_TOTAL // connections))

    def room(self) -> int:
        """
        The bytes the SSH transport may still write before it counts as
        full, once Twisted pauses it (at most the share; less than 1 when
        the next write makes it full): the output of one turn can be sealed
        and written at once.
        """
        return self._share - self._written

    def wrote(self, size: int) -> None:
        """The SSH transport wrote C{size} bytes to the TCP transport."""
        self._written += size
        if self._paused and self._written > self._share:
            self._ssh.output_changed(True)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._written > self._share:
            self._ssh.output_changed(True)

    def resumeProducing(self) -> None:
        self._paused = False
        self._written = 0
        self._share = self.share()
        if getattr(self._ssh.transport, "disconnecting", False):
            # Conch closed the socket itself (the client's DISCONNECT): the
            # socket closes only once it has no producer.
            self._ssh.release_write_side()
            return
        self._ssh.output_changed(False)

    def stopProducing(self) -> None:
        pass
