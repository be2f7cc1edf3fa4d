"""
One WebDAV client connection: Twisted's HTTP/1.1 channel with the
gateway's rules around it, and the request that reads its body as it
arrives.

The channel (L{DAVChannel}):

  - is admitted by the shared connection limits (network rules, totals,
    per address) or told 503 and closed; while the gateway drains, new
    connections are told 503 with the reason;
  - is one audit session (C{webdav}, or C{webdavs} over TLS) from connect
    to close, whatever users log in on it (L{cosgw.frontends.webdav.auth});
  - has a login deadline (login_timeout from the connection, until a
    request authenticates) and Twisted's idle timeout between requests
    (idle_timeout);
  - stops reading the socket while anyone holds its input
    (L{DAVChannel.hold_input}): the PUT body being streamed into an upload
    with no room, whatever Twisted's own response backpressure does;
  - answers C{Expect: 100-continue} on a PUT only once the PUT is logged
    in and its upload open (Twisted's own answers as soon as the headers
    are in): a refused PUT is told so before its body is sent;
  - answers what Twisted refuses with a bare 400 and a close (a request
    line or header over 16 KiB, over 500 headers, broken framing) with a
    status that says why (431 or 400), a log line and the session's close
    reason.

The request (L{DAVRequest}) replaces Twisted's body buffer (a file in
memory or on disk holding the whole body before the resource sees it): a
PUT's body goes to L{PutBody}, which streams it into the file system's
upload as it arrives; any other body is an XML document of at most
L{MAX_BODY} bytes, refused with 413 (and the connection closed) as soon as
it is known to be longer.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Optional, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server

from cosgw.frontends.webdav.putting import PutBody
from cosgw.frontends.webdav.xmlbody import MAX_BODY

if TYPE_CHECKING:
    from cosgw.audit import Session
    from cosgw.frontends.webdav.resource import DAVServer

__all__ = ["DAVChannel", "DAVRequest", "DAVSite", "raw_response"]

log = Logger(namespace="cosgw.webdav")


#: Reason phrases Twisted lacks (RFC 4918 section 11).
REASONS = {
    207: "Multi-Status",
    431: "Request Header Fields Too Large",
    422: "Unprocessable Entity",
    423: "Locked",
    424: "Failed Dependency",
    507: "Insufficient Storage",
}


def raw_response(
    status: int, text: str, headers: Optional[dict[str, str]] = None
) -> bytes:
    """
    A whole response with C{Connection: close}, for a connection that is
    closed right after it: before a request object can answer (admission,
    a body too long, a PUT refused while its body arrives).
    """
    body = (text + "\n").encode("utf-8")
    reason = REASONS.get(status) or http.RESPONSES.get(status, b"Error").decode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Server: cosgw",
        "Connection: close",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


class _CappedBody(io.BytesIO):
    """An XML body, in memory up to L{MAX_BODY}; beyond that, a 413."""

    def __init__(self, request: DAVRequest) -> None:
        super().__init__()
        self._request = request

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > MAX_BODY:
            self._request.channel.close_with(
                413, f"request body over {MAX_BODY} bytes", "body too long"
            )
            return 0
        return super().write(data)


class DAVRequest(server.Request):
    """A request whose body is streamed (PUT) or capped (the rest)."""

    channel: DAVChannel
    #: The request line's path, known from C{gotLength} on (Twisted sets
    #: C{path} only once the body is in).
    target = b""

    def gotLength(self, length: Optional[int]) -> None:
        channel = self.channel
        command = getattr(channel, "_command", b"")
        self.target = getattr(channel, "_path", b"")
        if command == b"PUT":
            self.content = channel.dav.put_body(self, length)
        elif length is not None and length > MAX_BODY:
            self.content = io.BytesIO()
            channel.close_with(
                413, f"request body over {MAX_BODY} bytes", "body too long"
            )
        else:
            self.content = _CappedBody(self)

    def handleContentChunk(self, data: bytes) -> None:
        if self.content is not None and not self.channel.closing:
            self.content.write(data)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        lost = getattr(self.content, "connection_lost", None)
        if lost is not None:
            lost(reason)


class DAVChannel(http.HTTPChannel):
    """One client connection; see the module."""

    site: DAVSite
    requestFactory = DAVRequest
    peer = "?"
    port = 0
    audit: Optional[Session] = None
    #: Why the connection ends, once known (the first reason stands).
    close_reason: Optional[str] = None
    #: Closing: what the client still sends is ignored.
    closing = False
    _admitted = False
    _login_timer: Optional[IDelayedCall] = None

    def __init__(self) -> None:
        super().__init__()
        self._holds: set[object] = set()
        #: The credentials this connection logged in with (a salted digest),
        #: their file system and its logout; see L{cosgw.frontends.webdav.auth}.
        self.login: Optional[tuple[bytes, Any, Any]] = None

    @property
    def tcp(self) -> Any:
        """The connection's transport (TCP, or TLS over it)."""
        return self.transport

    @property
    def dav(self) -> DAVServer:
        return self.site.dav

    @property
    def secure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        address = self.tcp.getPeer()
        self.peer = str(getattr(address, "host", address))
        self.port = int(getattr(address, "port", 0))
        site = self.site
        site.connections.add(self)
        if site.refusing is not None:
            site.refused += 1
            self.close_with(503, site.refusing, "refused: " + site.refusing)
            return
        if site.limits is not None:
            refusal = site.limits.open(self.peer, self._refused_later)
            if refusal is not None:
                self.close_with(503, refusal, "refused: " + refusal)
                return
            self._admitted = True
        protocol = "webdavs" if self.secure else "webdav"
        self.audit = site.audit_sessions.open(
            protocol, self.peer, self.port, self.kick, self.dav.status_of
        )
        self.audit.drain = self.drain
        self._login_timer = site.clock.callLater(
            site.login_timeout, self._login_timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.audit is not None:
            self.audit.touch()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        # What one read brought after a refusal is not a request.
        if not self.closing:
            super().lineReceived(line)

    def allContentReceived(self) -> None:
        if not self.closing:
            super().allContentReceived()

    def _send100Continue(self) -> None:
        # Twisted's, called once the headers are in: a PUT's waits for its
        # login and upload (PutBody.expect_continue calls send_continue).
        content = self.requests[-1].content if self.requests else None
        if isinstance(content, PutBody):
            content.expect_continue()
        else:
            super()._send100Continue()

    def send_continue(self) -> None:
        """Tell a client waiting with its body to send it (RFC 9110 10.1.1)."""
        if not self.closing and self.transport is not None:
            self.tcp.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_request(431, "a request line or header is over 16384 bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's bare "400" for the request line, a header or chunked
        # framing it cannot take.
        if (
            self._receivedHeaderSize > self.totalHeadersSize
            or self._receivedHeaderCount > self.maxHeaders
        ):
            self._refuse_request(431, "the request's headers are too large or many")
        else:
            self._refuse_request(400, "malformed HTTP request")

    def _refuse_request(self, status: int, text: str) -> None:
        if not self.closing:
            log.info("WebDAV client {peer}: {text}", peer=self.peer, text=text)
        self.close_with(status, text, text)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._holds.clear()
        self.site.connections.discard(self)
        try:
            super().connectionLost(reason)
        finally:
            self.logged_in(None)
            if self._login_timer is not None and self._login_timer.active():
                self._login_timer.cancel()
            if self._admitted:
                self._admitted = False
                assert self.site.limits is not None
                self.site.limits.close(self.peer)
            if self.audit is not None:
                lost = "connection lost"
                if reason is not None and reason.check(ConnectionDone):
                    lost = "connection closed by the client"
                self.site.audit_sessions.close(self.audit, self.close_reason or lost)

    # -- logins ------------------------------------------------------------

    def logged_in(self, login: Optional[tuple[bytes, Any, Any]]) -> None:
        """This connection's login is now C{login}; the one before ends."""
        old, self.login = self.login, login
        if old is not None:
            old[2]()
        if login is not None and self._login_timer is not None:
            if self._login_timer.active():
                self._login_timer.cancel()
            self._login_timer = None

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.login is None:
            self.end_reason("login timeout")
            self.loseConnection()

    # -- ending --------------------------------------------------------------

    def end_reason(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    def close_with(
        self,
        status: int,
        text: str,
        reason: str,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        """
        Answer C{status} with C{text} (and C{headers}: a 401's challenge)
        and close, ignoring what the client still sends.  The answer goes
        out in the next reactor turn, after whatever Twisted writes in
        this one.
        """
        if self.closing:
            return
        self.closing = True
        self.end_reason(reason)
        self._holds.clear()
        data = raw_response(status, text, headers)

        def send() -> None:
            if self.transport is not None and self.tcp.connected:
                self.tcp.write(data)
                self.tcp.loseConnection()

        self.site.clock.callLater(0, send)

    def _refused_later(self, reason: str) -> None:
        """
        The cluster's count (shared state) refused this connection after it
        was admitted here, a Redis round trip later: a 503 when no answer
        has started, else the connection is cut (a half-sent answer cannot
        become another one).
        """
        if any(getattr(r, "startedWriting", False) for r in self.requests):
            self.end_reason(f"refused: {reason}")
            self.tcp.abortConnection()
            return
        self.close_with(503, reason, "refused: " + reason)

    def kick(self, reason: str) -> None:
        """The admin API ends the session: the connection is cut now."""
        self.end_reason(f"kicked: {reason}")
        self.tcp.abortConnection()

    def drain(self, reason: str, now: bool = False) -> None:
        """
        The gateway stops: close now when no request is in progress (or
        C{now}: an upload in progress is then aborted), else after the
        response to the one in progress.
        """
        self.end_reason(reason)
        if now:
            self.tcp.abortConnection()
        elif not self.requests:
            self.loseConnection()
        else:
            self.persistent = False

    # -- input ------------------------------------------------------------

    def hold_input(self, holder: object, on: bool) -> None:
        """
        C{holder} asks to stop (C{on}) or no longer stop reading the
        socket; it is read while nobody holds it.
        """
        before = bool(self._holds)
        if on:
            self._holds.add(holder)
        else:
            self._holds.discard(holder)
        if self.closing or before == bool(self._holds):
            return
        if self._holds:
            self.tcp.pauseProducing()
        elif not self._handlingRequest and not self._waitingForTransport:
            self.tcp.resumeProducing()

    def resumeProducing(self) -> None:
        # Twisted's resumes the socket whenever its output drained; not
        # while an upload holds the input.
        if self._holds:
            self._waitingForTransport = False
            if self._requestProducer is not None:
                self._requestProducer.resumeProducing()
            return
        super().resumeProducing()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self._holds and not self.closing:
            self.tcp.pauseProducing()


class DAVSite(server.Site):
    """The factory of a WebDAV listener's connections."""

    protocol = DAVChannel  # type: ignore[assignment]
    requestFactory = DAVRequest
    noisy = False
    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        dav: DAVServer,
        sessions: Any,
        clock: Any,
        limits: Any = None,
        login_timeout: float = 60,
        idle_timeout: Optional[float] = 600,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout or None, reactor=clock)
        self.dav = dav
        #: The gateway's audit sessions (Site's own C{sessions} are web
        #: sessions, unused here).
        self.audit_sessions = sessions
        self.clock = clock
        self.limits = limits
        self.login_timeout = login_timeout
        #: Why new connections are refused (the gateway drains), else None.
        self.refusing: Optional[str] = None
        self.refused = 0
        self.connections: set[DAVChannel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        # Site's own builds a channel that may become HTTP/2; ours is
        # HTTP/1.1, as every WebDAV client speaks.
        channel = DAVChannel()
        channel.factory = self
        channel.site = self
        channel.requestFactory = self.requestFactory
        channel.callLater = self.clock.callLater  # type: ignore[method-assign]
        channel.timeOut = cast(Optional[int], self.timeOut)
        return channel

    def log(self, request: Any) -> None:
        """No access log: every action is an audit event."""

    def close_all(self, reason: str) -> None:
        """Close every connection (the service stops)."""
        for channel in list(self.connections):
            channel.end_reason(reason)
            channel.tcp.abortConnection()
