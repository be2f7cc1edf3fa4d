"""
One listening endpoint as a service, shared by the FTP and SFTP frontends,
and what a listener does when the process has no file descriptor left.

Out of descriptors, C{accept()} fails with C{EMFILE} (or C{ENFILE}, the
system's table) and the connection stays in the kernel's queue, so the
listening socket stays readable.  Twisted's C{tcp.Port} keeps one spare
descriptor for this: it closes it, accepts the waiting clients and closes
them at once, with no word to the client and one log line per socket; and
when the spare is gone (another thread took the freed number) it logs
"Could not accept" and returns, with the socket still readable: the
reactor calls it again at once, a busy loop.

Our TCP listeners do better, with the same spare-descriptor technique: the
listening socket's C{accept} catches the C{EMFILE}, closes its own spare
descriptor, accepts one waiting client, sends it a short refusal (FTP:
C{421 Too many open files, try again later}; SSH: its version line and a
DISCONNECT, which clients show as the reason) and closes its side, and
tells Twisted there is nothing more to accept.  The client's socket is then
read and discarded until the client closes too (at most L{_LINGER}
seconds): an SSH client sends its KEXINIT once it has our version line,
and closing at once would answer that with a reset, which destroys the
DISCONNECT before the client reads it.  Meanwhile the listener does not
read; once the client is gone the spare is taken again and the next
waiting client is refused the same way (or served, if descriptors were
freed).  If the spare cannot be had, the listener stops reading for a
moment (L{_PAUSE}) instead of spinning; clients wait in the kernel's queue.
Refusals are logged as one warning per L{_LOG_EVERY} seconds per listener,
with the count.

Endpoint strings are still parsed by Twisted (C{tcp:}, C{tcp6:} ...); only
the reactor that the endpoints see is adapted, so that C{listenTCP} builds
our port.  Other kinds (C{unix:}, C{systemd:}) keep Twisted's own
behaviour.  A C{haproxy:} prefix, like the C{proxy_protocol} option, makes
the listener read a PROXY header first with L{cosgw.frontends.proxied}
instead of Twisted's wrapper; on an C{ssl:} endpoint the header is read
before the TLS handshake, as balancers send it.

A listener that cannot listen stops the start: L{ListenerService} listens
in C{privilegedStartService} (twistd binds there, before it drops
privileges and before the reactor runs, so nothing could stop a reactor
that is not running yet) and raises L{ListenFailed}, one line naming the
config key, the endpoint and the reason; C{twistd cosftp} prints that line
and exits 1 (L{cosgw.tap}).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IReadDescriptor,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.config import ConfigError, endpoint_error, split_listener
from cosgw.frontends.proxied import ProxiedFactory, ProxySettings

__all__ = [
    "FTP_REFUSAL",
    "ListenFailed",
    "ListenerService",
    "ReservingPort",
    "listen_reason",
    "ssh_refusal",
]

# The gateway's start-up lines share the namespace of makeService's.
log = Logger(namespace="cosgw.service")

#: What an FTP client is told when the gateway has no descriptor left for
#: it (RFC 959: 421, service not available, closing control connection).
FTP_REFUSAL = b"421 Too many open files, try again later\r\n"

#: Seconds a listener stops accepting when it has no spare descriptor.
_PAUSE = 0.25
#: Seconds between two warnings of one listener about refused clients.
_LOG_EVERY = 10.0
#: Seconds a refused client may take to close its side after ours.
_LINGER = 2.0
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)

# SSH (RFC 4253): message number and reason code of a disconnect.
_MSG_DISCONNECT = 1
_DISCONNECT_TOO_MANY_CONNECTIONS = 12


def ssh_refusal(version: bytes, description: bytes) -> bytes:
    """
    What an SSH client understands before key exchange: the server's
    version line (RFC 4253 section 4.2) and an unencrypted binary packet
    (section 6: no MAC yet, padding to a multiple of 8, at least 4) holding
    SSH_MSG_DISCONNECT (section 11.1) with C{description}.
    """
    payload = (
        struct.pack(">BL", _MSG_DISCONNECT, _DISCONNECT_TOO_MANY_CONNECTIONS)
        + struct.pack(">L", len(description))
        + description
        + struct.pack(">L", 0)  # language tag: none
    )
    padding = 8 - (5 + len(payload)) % 8
    if padding < 4:
        padding += 8
    packet = struct.pack(">LB", 1 + len(payload) + padding, padding)
    return version + b"\r\n" + packet + payload + b"\0" * padding


class _Reserve:
    """One spare descriptor (of /dev/null), to be given up for a client."""

    def __init__(self) -> None:
        self._fd: Optional[int] = None

    def take(self) -> bool:
        """Hold the spare; False when the process has no descriptor left."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                if e.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                return False
        return True

    def give_up(self) -> bool:
        """Close the spare, so its number is free; False if none was held."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True


@implementer(IReadDescriptor)
class _Lingering:
    """
    A refused client whose side is still open: what it sends is read and
    discarded until it closes, or for L{_LINGER} seconds at most, so that
    closing ours does not reset the connection (see the module docstring).
    """

    def __init__(
        self, client: socket.socket, reactor: Any, done: Callable[[], None]
    ) -> None:
        self._client: Optional[socket.socket] = client
        self._reactor = reactor
        self._done = done
        self._deadline = reactor.callLater(_LINGER, self.close)
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self._client is None else self._client.fileno()

    def logPrefix(self) -> str:
        return "refused client"

    def doRead(self) -> None:
        if self._client is None:
            return
        try:
            while self._client.recv(65536):
                pass
        except BlockingIOError:
            return  # more to come
        except OSError:
            pass  # reset by the client: gone as well
        self.close()

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's socket (once) and say so."""
        client, self._client = self._client, None
        if client is None:
            return
        self._reactor.removeReader(self)
        if self._deadline.active():
            self._deadline.cancel()
        client.close()
        self._done()


def _refuse(client: socket.socket, refusal: bytes) -> None:
    """Send C{refusal} to a client accepted only to be refused; close our side."""
    client.setblocking(False)
    try:
        if refusal:
            client.send(refusal)  # a fresh socket's buffer takes it whole
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client is gone already


class _ReservingSocket(socket.socket):
    """
    A listening socket whose C{accept} refuses the waiting clients instead
    of failing when the process is out of descriptors (see the module
    docstring); Twisted's port calls it as it would any socket's.
    """

    exhausted: Callable[[Callable[[], tuple[socket.socket, Any]]], None]

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return super().accept()
        except OSError as e:
            if e.errno not in _OUT_OF_DESCRIPTORS:
                raise
        self.exhausted(super().accept)
        # Twisted's accept loop ends quietly on EAGAIN.
        raise BlockingIOError(errno.EAGAIN, "out of file descriptors")


class ReservingPort(tcp.Port):
    """
    A TCP port that answers clients with C{refusal} when the process is
    out of descriptors, and never spins (see the module docstring).
    """

    def __init__(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int,
        interface: str,
        reactor: Any,
        refusal: bytes,
    ) -> None:
        """
        @param reactor: the reactor, which also times pauses and log lines.
        @param refusal: what a client is sent when there is no descriptor
            for it.
        """
        super().__init__(port, factory, backlog, interface, reactor)
        self._clock: IReactorTime = reactor
        self.refusal = refusal
        #: Clients refused for want of descriptors, since the port opened.
        self.refused = 0
        self._reserve = _Reserve()
        self._paused: Optional[IDelayedCall] = None
        self._lingering: Optional[_Lingering] = None
        self._closing = False
        self._unlogged = 0
        self._paused_unlogged = False
        self._last_log = -_LOG_EVERY
        self._log_call: Optional[IDelayedCall] = None

    def createInternetSocket(self) -> socket.socket:
        plain = super().createInternetSocket()
        sock = _ReservingSocket(plain.family, plain.type, plain.proto, plain.detach())
        sock.setblocking(False)
        sock.exhausted = self._exhausted
        self._reserve.take()
        return sock

    def _exhausted(self, accept: Callable[[], tuple[socket.socket, Any]]) -> None:
        """C{accept} failed for want of descriptors: refuse one client."""
        if self._lingering is not None:
            # The spare's number is still the last refused client's.
            self.stopReading()
            return
        client = None
        if self._reserve.give_up():
            try:
                client, _ = accept()
            except OSError:
                self._reserve.take()  # none waits, or a thread was quicker
        if client is None:
            # No spare descriptor: the socket stays readable, so stop
            # reading it for a moment rather than spin.
            self.stopReading()
            self._paused = self._clock.callLater(_PAUSE, self._resume)
            self._count(0, True)
            return
        _refuse(client, self.refusal)
        self.stopReading()
        self._lingering = _Lingering(client, self._clock, self._lingered)
        self._count(1, False)

    def _lingered(self) -> None:
        """The refused client is gone: its number is the spare again."""
        self._lingering = None
        self._resume()

    def _resume(self) -> None:
        self._paused = None
        if self._closing:
            return
        self._reserve.take()
        if self._lingering is None:
            self.startReading()

    def _count(self, refused: int, paused: bool) -> None:
        """Log refusals and pauses at most once per L{_LOG_EVERY} seconds."""
        if not (refused or paused):
            return
        self.refused += refused
        self._unlogged += refused
        self._paused_unlogged = self._paused_unlogged or paused
        now = self._clock.seconds()
        if now - self._last_log >= _LOG_EVERY:
            self._log()
        elif self._log_call is None:
            delay = self._last_log + _LOG_EVERY - now
            self._log_call = self._clock.callLater(delay, self._log)

    def _log(self) -> None:
        self._log_call = None
        self._last_log = self._clock.seconds()
        log.warn(
            "Out of file descriptors: refused {refused} connections on port"
            " {port} within {seconds} seconds{paused}; raise the process's"
            " limit (LimitNOFILE) or lower max_connections",
            refused=self._unlogged,
            port=self._realPortNumber,
            seconds=_LOG_EVERY,
            paused=" (accepting paused for want of a spare descriptor)"
            if self._paused_unlogged
            else "",
        )
        self._unlogged = 0
        self._paused_unlogged = False

    def connectionLost(self, reason: Failure) -> None:
        self._closing = True
        for call in (self._paused, self._log_call):
            if call is not None and call.active():
                call.cancel()
        self._paused = self._log_call = None
        if self._lingering is not None:
            self._lingering.close()
        self._reserve.give_up()
        super().connectionLost(reason)


class _ReservingReactor:
    """
    The reactor as endpoints see it: C{listenTCP} builds a
    L{ReservingPort} with the listener's refusal; everything else is the
    reactor's own.
    """

    def __init__(self, reactor: Any, refusal: bytes) -> None:
        self._reactor = reactor
        self._refusal = refusal

    def listenTCP(
        self,
        port: int,
        factory: IProtocolFactory,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        listening = ReservingPort(
            port, factory, backlog, interface, self._reactor, self._refusal
        )
        listening.startListening()
        return listening

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,
        backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """
        An C{ssl:} endpoint.  Under a PROXY listener the header comes first,
        in clear (HAProxy writes it before relaying the ClientHello), so TLS
        goes inside the header's wrapper, not around it as the reactor's own
        C{listenSSL} would put it; and a refusal out of descriptors sends
        nothing plain to a TLS client.
        """
        if not isinstance(factory, ProxiedFactory):
            listening: IListeningPort = self._reactor.listenSSL(
                port, factory, contextFactory, backlog, interface
            )
            return listening
        tls = TLSMemoryBIOFactory(contextFactory, False, factory.wrappedFactory)
        proxied = ProxiedFactory(tls, factory.settings, factory.clock)
        reserving = ReservingPort(port, proxied, backlog, interface, self._reactor, b"")
        reserving.startListening()
        return reserving

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def listen_reason(error: BaseException) -> str:
    """
    Why a listen failed, in the system's words: C{"Address already in
    use"}, not Twisted's C{CannotListenError} repr.
    """
    cause = getattr(error, "socketError", None)  # CannotListenError
    if isinstance(cause, BaseException):
        error = cause
    if isinstance(error, OSError) and error.strerror:
        if error.errno in (errno.EACCES, errno.EPERM):
            return (
                f"{error.strerror} (a port below 1024 needs root with"
                " --uid/--gid, or CAP_NET_BIND_SERVICE)"
            )
        return error.strerror
    return str(error) or type(error).__name__


class ListenFailed(Exception):
    """
    A listener (or the passive range) cannot listen where the config says.
    C{str(e)} is one line: the config key, what could not listen and why,
    e.g. C{"[server] ftp_listen: cannot listen on tcp:2121: Address
    already in use"}.
    """

    def __init__(self, key: Optional[str], what: str, reason: str) -> None:
        prefix = f"{key}: " if key else ""
        super().__init__(f"{prefix}cannot listen on {what}: {reason}")
        self.key = key


class ListenerService(Service):
    """
    Listens on one endpoint string.  Unlike StreamServerEndpointService it
    keeps the port, so the gateway can say where it listens (tcp:0 included).
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        refusal: bytes = b"",
        key: Optional[str] = None,
        proxy: Optional[ProxySettings] = None,
    ) -> None:
        """
        @param refusal: sent to a client the gateway has no descriptor for,
            before closing the connection (L{FTP_REFUSAL}, L{ssh_refusal});
            empty: close without a word (implicit TLS, where plain text
            would be noise).
        @param key: the config key that named C{description}, such as
            C{"[server] ftp_listen"}, for the errors.
        @param proxy: the server's PROXY protocol settings; by default
            none is expected unless the listener asks (C{haproxy:},
            C{proxy_protocol=yes}).
        @raise ConfigError: Twisted cannot use C{description} here (the
            config checked its form; a C{systemd:} socket may still be
            missing).
        """
        self._reactor = reactor
        self.description = description
        self.key = key
        prefix = f"{key}: " if key else ""
        endpoint_string, options = split_listener(description)
        #: cosgw's own options of this listener (C{proxy_protocol},
        #: C{ftp_encoding}), as written; Twisted sees the rest.
        self.options: dict[str, str] = options
        self.proxy = proxy if proxy is not None else ProxySettings()
        try:
            endpoint_string, proxied = self.proxy.listener(endpoint_string, options)
        except ConfigError as e:
            raise ConfigError(f"{prefix}cannot use {description}: {e}") from None
        #: Connections start with a PROXY header (L{cosgw.frontends.proxied}).
        self.proxied = proxied
        # ReservingPort is a tcp.Port: it needs a reactor that watches real
        # descriptors.  Any other (IOCP on Windows, a test's MemoryReactor)
        # listens its own way.
        if isinstance(reactor, PosixReactorBase):
            reactor = _ReservingReactor(reactor, refusal)
        try:
            self.endpoint = serverFromString(reactor, endpoint_string)
        except Exception as e:
            reason = endpoint_error(endpoint_string, e)
            raise ConfigError(f"{prefix}cannot use {description}: {reason}") from None
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        #: Fires with the port once it listens; fails with L{ListenFailed}
        #: only when the endpoint fails after the start returned (a start
        #: that fails at once raises it instead).
        self.listening: Deferred[IListeningPort] = Deferred()
        self._started = False

    def privilegedStartService(self) -> None:
        """
        Bind before twistd drops privileges (ports 21 and 990).

        @raise ListenFailed: the endpoint cannot listen.
        """
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """
        Listen, unless C{privilegedStartService} did.

        @raise ListenFailed: the endpoint cannot listen.
        """
        self._listen()
        super().startService()

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        starting = True
        failed: list[ListenFailed] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.listening.callback(port)
            return port

        def cannot(failure: Failure) -> None:
            assert failure.value is not None
            reason = listen_reason(failure.value)
            error = ListenFailed(self.key, self.description, reason)
            if starting:
                # Raised to the caller instead: a failed Deferred nobody
                # waits on would be logged again, with a traceback, when
                # it is collected as the process exits.
                failed.append(error)
                return
            # An endpoint that fails later (a plugin's; Twisted's own fail
            # at once): a gateway that cannot listen where it was told must
            # not look healthy.
            log.critical("{error}", error=str(error))
            self.listening.errback(error)
            self._reactor.callWhenRunning(self._reactor.stop)

        factory = self.factory
        if self.proxied:
            factory = ProxiedFactory(factory, self.proxy, self._reactor)
        self.endpoint.listen(factory).addCallbacks(listening, cannot)
        starting = False
        if failed:
            raise failed[0]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        self._started = False
        stopped = port.stopListening() if port is not None else None
        return stopped if stopped is not None else succeed(None)
