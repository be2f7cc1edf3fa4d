"""
FTP data connections: one connection per transfer, passive or active, and
the producer that streams a listing into one.

A data connection does not read until a consumer is attached (Twisted's DTP
buffers without limit), tells how it ended (a reset is an abort, never an
end of file), and a passive one is accepted only from the client's own
address (no port stealing, RFC 2577).  Open data connections are counted
per control connection, against a small limit, and for the gateway; one
that does not finish closing within the stall timeout is dropped.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Optional

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw import vfs
from cosgw.escaping import for_reply
from cosgw.frontends.ftp.tls import session_reused
from cosgw.interfaces import IListing

# The namespace these lines had before the FTP package existed.
log = Logger(namespace="cosgw.frontends.ftp_data")

#: Read size and write-buffer threshold of a data connection.
DATA_BUFFER_SIZE = 1024 * 1024


class DataConnectionRefused(Exception):
    """A data connection arrived but breaks the policy; the reply says how."""


class ChannelCount:
    """
    Open data connections: a control connection's, whose limit bounds the
    descriptors one client holds, adding into the gateway's, which the FTP
    service reports (so the gateway's count is bounded by the sessions').
    """

    def __init__(
        self, limit: Optional[int] = None, parent: Optional[ChannelCount] = None
    ) -> None:
        #: Open now, and the most open at once.
        self.open = 0
        self.peak = 0
        self.limit = limit
        self._parent = parent

    def full(self) -> bool:
        """Whether one more connection would break a limit."""
        if self.limit is not None and self.open >= self.limit:
            return True
        return self._parent is not None and self._parent.full()

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        if self._parent is not None:
            self._parent.opened()

    def closed(self) -> None:
        self.open -= 1
        if self._parent is not None:
            self._parent.closed()


@functools.lru_cache(maxsize=256)
def normal_host(host: str) -> str:
    """
    Compare addresses as the IP they are (IPv4-mapped IPv6 unwrapped).
    Remembered: every PASV and every data connection asks again about the
    same few addresses, and parsing one costs more than the rest of the
    check.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


@implementer(IConsumer, IPushProducer, IHandshakeListener)
class DataChannel(protocol.Protocol, policies.TimeoutMixin):
    """
    One FTP data connection.  It does not read until a consumer is attached
    (so nothing is buffered without limit), and it tells how it ended
    (L{closed}): a clean close or a reset.  Over TLS (PROT P), L{ready} fires
    after the handshake, and fails (522) if the policy wants the control
    connection's TLS session resumed and the client did not.
    """

    #: A TCP or TLS transport: beyond L{ITransport} it is a producer, and
    #: has abortConnection and (over TLS) getHandle.
    transport: Any

    def __init__(self) -> None:
        #: None until known; then True, or why the channel cannot be used.
        self._secured: Optional[Literal[True] | BaseException] = None
        self._secure_waiters: list[Deferred[None]] = []
        self._early: list[bytes] = []
        self._sending = False
        self._consumer: Optional[IConsumer] = None
        self._ended = False
        self._end: Optional[BaseException] = None
        self._waiters: list[Deferred[Optional[BaseException]]] = []
        self._counted = False
        self.received = 0

    # connection

    def connectionMade(self) -> None:
        # Twisted's TCP transport reads, and pauses its producer, in units of
        # bufferSize (64 KiB); a data connection moves megabytes, and larger
        # units mean fewer trips through the reactor per MB.
        tcp = getattr(self.transport, "transport", self.transport)  # under TLS
        if hasattr(tcp, "bufferSize"):
            tcp.bufferSize = DATA_BUFFER_SIZE
        if hasattr(tcp, "SEND_LIMIT"):
            # Likewise for sends: up to 1 MiB per send() instead of 128 KiB.
            tcp.SEND_LIMIT = DATA_BUFFER_SIZE
        clock = self.factory.clock
        if clock is not None:
            # TimeoutMixin's hook for another clock (it is a method there).
            self.callLater = clock.callLater  # type: ignore[method-assign]
        if not self.factory.tls:
            self.transport.pauseProducing()
            self._set_secured(True)
        # Over TLS the handshake must read first (and clients start it only
        # after the 150 reply): see handshakeCompleted.
        self._counted = True
        self.factory.connected(self)

    def handshakeCompleted(self) -> None:
        self.transport.pauseProducing()
        if self.factory.require_reuse and not session_reused(self.transport):
            log.warn(
                "refused a data connection that did not resume the control "
                "connection's TLS session"
            )
            self._set_secured(
                DataConnectionRefused(
                    "522 The data connection must resume the control connection's"
                    " TLS session"
                )
            )
            self.abort()
            return
        self._set_secured(True)

    def _set_secured(self, outcome: Literal[True] | BaseException) -> None:
        if self._secured is not None:
            return
        self._secured = outcome
        waiters, self._secure_waiters = self._secure_waiters, []
        for d in waiters:
            if isinstance(outcome, BaseException):
                d.errback(outcome)
            else:
                d.callback(None)

    def ready(self) -> Deferred[None]:
        """
        Fires when data may flow: at once for a clear connection, after the
        TLS handshake for a protected one; fails with
        L{DataConnectionRefused} when the policy refuses the connection, or
        with the reason the connection ended first.
        """
        if self._secured is True:
            return succeed(None)
        if isinstance(self._secured, BaseException):
            return fail(self._secured)
        d: Deferred[None] = Deferred()
        self._secure_waiters.append(d)
        return d

    def timeoutConnection(self) -> None:
        log.info(
            "data connection from {peer} stalled for {seconds} s: aborted",
            peer=self.factory.peer_host,
            seconds=self.factory.stall_timeout,
        )
        self.abort()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._ended = True
        self.setTimeout(None)
        if self._counted:
            self._counted = False
            self.factory.lost(self)
        self._set_secured(reason.value or net_error.ConnectionDone())
        if reason.check(net_error.ConnectionDone) is None and not self._tls_closed():
            self._end = reason.value
        if self._consumer is not None:
            self._consumer.unregisterProducer()
            self._consumer = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self._end)

    def _tls_closed(self) -> bool:
        """
        Whether the client ended the TLS stream with close_notify.  It comes
        after all the data, so it proves the stream complete even if TCP
        then ends with a reset: a TLS 1.3 client that never read the
        server's session tickets (GnuTLS, so lftp) resets on close.
        """
        if not self.factory.tls:
            return False
        try:
            connection = self.transport.getHandle()
            return isinstance(connection, SSL.Connection) and bool(
                connection.get_shutdown() & SSL.RECEIVED_SHUTDOWN
            )
        except (AttributeError, SSL.Error):
            return False

    def closed(self) -> Deferred[Optional[BaseException]]:
        """
        @return: A Deferred firing when the connection has closed: with None
            after a clean close, with the exception (as a value, not a
            failure) after a reset, an abort or a timeout.
        """
        if self._ended:
            return succeed(self._end)
        d: Deferred[Optional[BaseException]] = Deferred()
        self._waiters.append(d)
        return d

    def abort(self) -> None:
        """Drop the connection (RST): the client must not see a clean end."""
        self.setTimeout(None)
        if not self._ended and self.transport is not None:
            self.transport.abortConnection()

    # receiving (STOR)

    async def receive(self, consumer: IConsumer) -> None:
        """
        Feed everything the client sends into C{consumer} (an upload, which
        pauses this channel for the store and the user's rate, and stops it
        if the store fails) until the client closes the connection.

        @raise TransferStopped: the connection ended other than cleanly.
        """
        self._consumer = consumer
        # Before registering: the consumer may pause us at once.
        self.setTimeout(self.factory.stall_timeout)
        consumer.registerProducer(self, True)
        early, self._early = self._early, []
        for data in early:
            consumer.write(data)
        if not self._ended:
            self.transport.resumeProducing()
        end = await self.closed()
        if end is not None:
            raise vfs.TransferStopped(str(end) or type(end).__name__)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.resetTimeout()
        if self._consumer is not None:
            self._consumer.write(data)
        elif self._sending:
            pass  # a client has nothing to say on a download connection
        else:
            # At most what arrived with the end of a TLS handshake: the
            # channel is paused until a consumer is attached.
            self._early.append(data)

    def pauseProducing(self) -> None:
        # Paused by the gateway (the store or a rate limit): not a stall.
        if not self._ended:
            self.setTimeout(None)
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._ended:
            self.setTimeout(self.factory.stall_timeout)
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    # sending (RETR, LIST)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)
        self.setTimeout(self.factory.stall_timeout)
        # Sending: keep reading, or a TLS close (which waits for the peer's
        # close_notify) and a client's reset would never be seen.
        self._sending = True
        if not self._ended:
            self.transport.resumeProducing()

    def unregisterProducer(self) -> None:
        """
        End of the data: close cleanly once the buffer is flushed.  A
        client that neither reads the rest nor ends TLS (close_notify)
        within the stall timeout is dropped rather than kept forever.
        """
        self.setTimeout(self.factory.stall_timeout)
        if not self._ended:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def write(self, data: bytes) -> None:
        if not self._ended:
            self.resetTimeout()
            self.transport.write(data)


class DataChannelFactory(protocol.ClientFactory):
    """
    Makes the one data connection of a transfer, passive or active.  For a
    passive one it accepts only a connection from C{peer_host} (the
    client's control-connection address), or from C{relay}, the trusted
    balancer that relayed the control connection with a PROXY header and
    may relay the data connection too: another host connecting first must
    not get the data (port stealing).  A connection it refuses is closed at
    once.
    """

    protocol = DataChannel
    noisy = False

    def __init__(
        self,
        peer_host: str,
        relay: Optional[str] = None,
        tls: bool = False,
        require_reuse: bool = False,
        clock: Optional[Any] = None,
        stall_timeout: Optional[float] = None,
        count: Optional[ChannelCount] = None,
    ) -> None:
        """
        @param stall_timeout: seconds without a byte either way (while the
            gateway is not itself holding the connection back) after which
            the transfer is aborted.
        @param count: where the connection is counted; when it is full the
            connection is refused.
        """
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.peer_host = normal_host(peer_host)
        self.relay = normal_host(relay) if relay is not None else None
        self.tls = tls
        self.require_reuse = require_reuse
        self.count = count if count is not None else ChannelCount()
        self.deferred: Deferred[DataChannel] = Deferred()
        self.channel: Optional[DataChannel] = None

    def buildProtocol(self, addr: Any) -> Optional[DataChannel]:
        if self.channel is not None:
            return None
        host = normal_host(getattr(addr, "host", ""))
        if host != self.peer_host and host != self.relay:
            log.warn(
                "refused a data connection from {host} (client is {peer})",
                host=host,
                peer=self.peer_host,
            )
            return None
        if self.count.full():
            log.warn(
                "refused a data connection from {host}: {open} already open",
                host=host,
                open=self.count.open,
            )
            return None
        channel = DataChannel()
        channel.factory = self
        self.channel = channel
        return channel

    def connected(self, channel: DataChannel) -> None:
        self.count.opened()
        if not self.deferred.called:
            self.deferred.callback(channel)

    def lost(self, channel: DataChannel) -> None:
        """A connection this factory made has closed."""
        self.count.closed()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)


@implementer(IPushProducer)
class ListingSender:
    """
    Streams a listing (L{IListing}) into a data channel page by page.  The next
    page is fetched while the current one is formatted and sent, and at most
    two pages are held: while the client is slow (the transport paused us)
    no page beyond them is fetched, so memory does not grow with the
    directory.
    """

    def __init__(
        self,
        listing: IListing,
        first: list[vfs.Entry],
        channel: DataChannel,
        format_line: Callable[[vfs.Entry], str],
        encode: Callable[[str], bytes] = str.encode,
    ) -> None:
        """
        @param encode: writes the lines in the session's encoding (by
            default UTF-8).
        """
        self._listing = listing
        self._channel = channel
        self._format = format_line
        self._encode = encode
        self._paused = False
        self._fetching = False
        self._stopped = False
        self._ended = False
        self._done: Deferred[int] = Deferred()
        self.count = 0
        self._ready: deque[list[vfs.Entry]] = deque([first] if first else [])

    def start(self) -> Deferred[int]:
        self._channel.registerProducer(self, True)
        self._pump()
        return self._done

    def _pump(self) -> None:
        if self._stopped or self._done.called:
            return
        if not self._ended and not self._fetching and len(self._ready) < 2:
            self._fetching = True
            self._listing.next_page().addCallbacks(self._got, self._failed)
        while self._ready and not self._paused and not self._stopped:
            # A name from another writer of the bucket may hold CR or LF:
            # one entry must stay one line.
            lines = [for_reply(self._format(e)) for e in self._ready.popleft()]
            if lines:
                self.count += len(lines)
                self._channel.write(self._encode("\r\n".join(lines) + "\r\n"))
            if not self._ended and not self._fetching:
                self._fetching = True
                self._listing.next_page().addCallbacks(self._got, self._failed)
        if self._ended and not self._ready and not self._done.called:
            self._channel.unregisterProducer()
            self._done.callback(self.count)

    def _got(self, page: Optional[list[vfs.Entry]]) -> None:
        self._fetching = False
        if page is None:
            self._ended = True
        else:
            self._ready.append(page)
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._fetching = False
        if not self._done.called:
            self._done.errback(failure)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True
        if not self._done.called:
            self._done.errback(Failure(vfs.TransferStopped("listing interrupted")))
