"""
Setting up data connections: PASV and EPSV (a listener on the passive port
range), PORT and EPRT (a connection to the client), and the wait for the
one data connection a transfer gets.

PASV and EPSV answer at once instead of holding the control channel until
the data connection arrives (Twisted #4819); the transfer command waits for
it, with a timeout.  A passive listener accepts only the client's own
address (no port stealing), and PORT/EPRT may only name the client's own
address and an unprivileged port (no FTP bounce, RFC 2577).
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.internet import error as net_error
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger, LogLevel
from twisted.python import log as legacy_log

from cosgw import vfs
from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.data import (
    ChannelCount,
    DataChannel,
    DataChannelFactory,
    DataConnectionRefused,
    normal_host,
)
from cosgw.frontends.ftp.replies import Reply
from cosgw.frontends.listener import ListenerService, ListenFailed, listen_reason

if TYPE_CHECKING:
    from cosgw.frontends.ftp.factory import GatewayFTPFactory
    from cosgw.frontends.ftp.transfers import ActiveTransfer

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

#: Seconds a transfer command waits for its data connection, and then for
#: the TLS handshake on it (PROT P); at most the config's data_timeout.
DATA_CONNECTION_TIMEOUT = 30
#: Data connections one control connection may have open at once: the one
#: its transfer uses, and one more (a new one connecting while the last
#: one closes).
MAX_SESSION_DATA_CONNECTIONS = 2


class QuietPort(tcp.Port):
    """
    A passive data port: one per transfer, so Twisted's lines for each
    ("DataChannelFactory starting on N", "(TCP Port N Closed)") are debug.
    """

    def startListening(self) -> None:
        # tcp.Port logs its start through the legacy log, whose context
        # gives the event its level.
        legacy_log.callWithContext(
            {"log_level": LogLevel.debug, "log_namespace": log.namespace},
            super().startListening,
        )

    def _logConnectionLostMsg(self) -> None:
        log.debug("passive port {port} closed", port=self._realPortNumber)


def listen_passive(reactor: Any, port: int, factory: Any, interface: str) -> Any:
    """
    Listen on C{port} for a data connection: a L{QuietPort} on a reactor
    that watches real descriptors, the reactor's own port on any other (a
    test's MemoryReactor).

    @return: the L{IListeningPort}.
    @raise CannotListenError: the port cannot be had.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenTCP(port, factory, interface=interface)
    quiet = QuietPort(port, factory, interface=interface, reactor=reactor)
    quiet.startListening()
    return quiet


def check_passive_range(
    reactor: Any, ports: tuple[int, int], listeners: Iterable[ListenerService]
) -> None:
    """
    At start: that some port of the passive range C{ports} can be listened
    on, on each address the FTP C{listeners} listen on (where PASV
    listens), so that a range that is all taken stops the start instead of
    failing every PASV with 425.  Each port is bound as Twisted binds it
    (SO_REUSEADDR) and let go at once: at most one bind per port.  Not on
    a reactor without real sockets (a test's).

    @raise ListenFailed: no port of the range can be had on an address.
    """
    if not isinstance(reactor, PosixReactorBase):
        return
    hosts: set[str] = set()
    for listener in listeners:
        address = listener.port.getHost() if listener.port is not None else None
        if isinstance(address, (IPv4Address, IPv6Address)):
            hosts.add(address.host)
    low, high = ports
    for host in sorted(hosts):
        reason = "no port in the range"
        for port in range(low, high + 1):
            try:
                family, kind, _, _, where = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
                )[0]
                with socket.socket(family, kind) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind(where)
            except OSError as e:
                reason = listen_reason(e)
                continue
            break
        else:
            raise ListenFailed(
                "[server] passive_ports", f"any port of {low}-{high} on {host}", reason
            )


def decode_extended_address(address: str) -> tuple[str, str, int]:
    """
    RFC 2428 section 2: C{|protocol|address|port|}, any delimiter.

    @raise ValueError, IndexError: the address does not parse.
    """
    delimiter = address[0]
    protocol, host, port, _ = address[1:].split(delimiter)
    return protocol, host, int(port)


def out_of_descriptors(e: BaseException) -> bool:
    """Whether a listen or connect failed because descriptors ran out."""
    cause = getattr(e, "socketError", None)  # CannotListenError
    number = getattr(cause, "errno", None) or getattr(e, "osError", None)
    return number in (errno.EMFILE, errno.ENFILE)


class DataConnections:
    """
    The data connection one control connection prepared for its next
    transfer: a passive listener and the connection it accepted, or the
    address PORT/EPRT named.  Each serves one transfer only.

    What no transfer takes does not stay open (TLS-wrapped or not, its
    handshake done or not): the next PASV/EPSV/PORT/EPRT, REIN, QUIT, the
    loss of the control connection and the unused timeout (the config's
    C{data_timeout}, from PASV and again from the connection) all close
    it.  A listener stops once it has its connection, so a session holds
    at most one listener and one unused connection; its open connections
    are counted against L{MAX_SESSION_DATA_CONNECTIONS}.
    """

    def __init__(
        self, factory: GatewayFTPFactory, peer_host: str, relay: Optional[str] = None
    ) -> None:
        """
        @param relay: the balancer the control connection came through
            (L{cosgw.frontends.proxied.relay_of}), which passive data
            connections may come from too, when it forwards the range.
        """
        self._factory = factory
        self._peer_host = peer_host
        self._relay = relay
        #: The session's TLS (AUTH TLS, PROT P): the factory's when the
        #: control connection began.  A config reload gives the factory a
        #: new certificate for new connections only: a data connection must
        #: resume the control connection's TLS session (require_ssl_reuse).
        self.tls = factory.tls
        self._pending: Optional[DataChannelFactory] = None
        self._port: Optional[IListeningPort] = None
        self._active: Optional[tuple[str, int]] = None
        self._expiry: Optional[IDelayedCall] = None
        #: This session's open data connections.
        self.channels = ChannelCount(
            MAX_SESSION_DATA_CONNECTIONS, parent=factory.data_connections
        )

    def close(self) -> None:
        """Forget what was prepared: stop listening, drop an unused connection."""
        self._cancel_expiry()
        self._stop_listening()
        pending, self._pending = self._pending, None
        self._active = None
        _discard(pending, None)

    def _stop_listening(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()

    def _cancel_expiry(self) -> None:
        expiry, self._expiry = self._expiry, None
        if expiry is not None and expiry.active():
            expiry.cancel()

    def _expire_later(self) -> None:
        """(Re)start the unused timeout (the running one moved, not replaced)."""
        timeout = self._factory.stall_timeout
        expiry = self._expiry
        if timeout is not None and expiry is not None and expiry.active():
            expiry.reset(timeout)
            return
        self._cancel_expiry()
        if timeout is not None:
            self._expiry = self._factory.reactor.callLater(timeout, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        pending = self._pending
        log.info(
            "closed the unused passive {what} of {peer} after {seconds} s",
            what="listener"
            if pending is None or pending.channel is None
            else "data connection",
            peer=self._peer_host,
            seconds=self._factory.stall_timeout,
        )
        self.close()

    def _accepted(self, channel: DataChannel, factory: DataChannelFactory) -> Any:
        """The passive connection arrived: no more listening for it."""
        if self._pending is factory:
            self._stop_listening()
            self._expire_later()
        return channel

    def _new_factory(self, host: str, protect: bool) -> DataChannelFactory:
        return DataChannelFactory(
            host,
            relay=self._relay,
            tls=protect,
            require_reuse=self._factory.tls_session_reuse,
            clock=self._factory.reactor,
            stall_timeout=self._factory.stall_timeout,
            count=self.channels,
        )

    def _wrapped(self, factory: DataChannelFactory) -> Any:
        """The factory to listen or connect with: TLS around it for PROT P."""
        if factory.tls:
            assert self.tls is not None
            return self.tls.wrap_data(factory, self._factory.reactor)
        return factory

    def passive(self, interface: str, protect: bool) -> int:
        """
        Listen on a free port of the passive range, on C{interface}.

        @return: the port.
        @raise Reply: 425, no port of the range is free, or the gateway is
            out of file descriptors.
        """
        self.close()
        factory = self._new_factory(self._peer_host, protect)
        low, high = self._factory.passive_ports
        count = high - low + 1
        start = random.randrange(count)
        reactor = self._factory.reactor
        for i in range(count):
            candidate = low + (start + i) % count
            try:
                port = listen_passive(
                    reactor, candidate, self._wrapped(factory), interface
                )
            except net_error.CannotListenError as e:
                if out_of_descriptors(e):
                    log.error(
                        "no passive port for {peer}: out of file descriptors",
                        peer=self._peer_host,
                    )
                    raise Reply(
                        425, "Can't open passive connection: server busy, try later"
                    ) from None
                continue
            self._pending, self._port = factory, port
            factory.deferred.addCallback(self._accepted, factory)
            self._expire_later()
            return port.getHost().port
        log.warn("no free passive port for {peer}", peer=self._peer_host)
        raise Reply(425, "No passive port available; try again")

    def active(self, host: str, port: int) -> None:
        """Connect to C{host}:C{port} for the next transfer (PORT, EPRT)."""
        self.close()
        self._active = (host, port)

    def _take(
        self, protect: bool, protection_required: bool
    ) -> tuple[DataChannelFactory, Optional[IListeningPort]]:
        """
        What PASV/EPSV/PORT/EPRT prepared, now the transfer's: the factory
        of its connection and the listener, if passive.

        @raise Reply: 521, 425: nothing usable was prepared (and what was
            is closed).
        """
        factory, active, port = self._pending, self._active, self._port
        self._pending, self._port, self._active = None, None, None
        self._cancel_expiry()
        refusal = None
        if not protect and protection_required:
            refusal = Reply(521, "Data connections must be protected: send PROT P")
        elif factory is None and active is None:
            refusal = Reply(425, "Use PASV, EPSV, PORT or EPRT first")
        elif factory is not None and factory.tls != protect:
            # PROT changed after PASV: the listener speaks the old level.
            refusal = Reply(425, "PROT changed after PASV; send PASV again")
        if refusal is not None:
            _discard(factory, port)
            raise refusal
        if factory is None:
            assert active is not None
            factory = self._new_factory(active[0], protect)
            self._factory.reactor.connectTCP(
                active[0],
                active[1],
                self._wrapped(factory),
                timeout=self._factory.data_timeout,
            )
        return factory, port

    async def open(
        self, transfer: ActiveTransfer, protect: bool, protection_required: bool
    ) -> DataChannel:
        """
        Wait for the data connection that PASV/EPSV announced, or open the
        one PORT/EPRT asked for; either way only for this one transfer.  ABOR
        (or the client leaving) cancels the wait.

        @param protect: PROT P is in force.
        @param protection_required: the policy wants PROT P.
        @raise Reply: 521, 425: no data connection.
        @raise TransferStopped: the transfer was aborted meanwhile.
        """
        factory, port = self._take(protect, protection_required)
        settings = self._factory
        d = factory.deferred
        if not d.called:
            # Clients connect before they send the command (ftplib, curl,
            # lftp): then there is nothing to time, and no timer to set.
            d.addTimeout(settings.data_timeout, settings.reactor)
        transfer.waiting = d
        try:
            channel = await d
        except Exception as e:
            if transfer.aborted or transfer.client_gone:
                raise vfs.TransferStopped(
                    "aborted before the data connection"
                ) from None
            if out_of_descriptors(e):
                log.error(
                    "no data connection to {peer}: out of file descriptors",
                    peer=self._peer_host,
                )
                raise Reply(425, "Can't open data connection: server busy") from None
            log.info(
                "no data connection from {peer}: {error}",
                peer=self._peer_host,
                error=str(e) or type(e).__name__,
            )
            raise Reply(425, "Can't open data connection") from None
        finally:
            transfer.waiting = None
            if port is not None:
                port.stopListening()
        transfer.channel = channel
        if transfer.aborted or transfer.client_gone:
            channel.abort()
            raise vfs.TransferStopped("aborted")
        return channel

    async def ready(self, channel: DataChannel) -> None:
        """
        After the 150: wait until data may flow (over TLS, the handshake,
        which clients start only now, within the data connection timeout).
        A policy refusal or a failed handshake is the transfer's final reply
        (522, RFC 4217).
        """
        ready = channel.ready()
        if not ready.called:  # a TLS handshake to wait for
            ready.addTimeout(self._factory.data_timeout, self._factory.reactor)
        try:
            await ready
        except DataConnectionRefused as e:
            channel.abort()
            raise Reply(int(str(e)[:3]), str(e)[4:]) from None
        except Exception as e:
            channel.abort()
            raise Reply(
                522, f"TLS negotiation on the data connection failed: {e}"
            ) from None


def _ipv4(name: str) -> Optional[str]:
    """C{name} as an IPv4 address, or None when it is not one."""
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        return None


def _discard(
    factory: Optional[DataChannelFactory], port: Optional[IListeningPort]
) -> None:
    """Close what was prepared for a transfer that will not use it."""
    if port is not None:
        port.stopListening()
    if factory is not None and factory.channel is not None:
        factory.channel.abort()


class PortCommands(CommandContext):
    """PASV, EPSV, PORT and EPRT."""

    def _passive(self) -> int:
        interface = self.transport.getHost().host
        return self.data.passive(interface, protect=self.session.prot == "P")

    def ftp_PASV(self) -> Union[Reply, Deferred[Reply]]:
        """
        The IPv4 address PASV announces: the masquerade address (resolved
        now, so a dynamic-DNS name follows its changes) or the address the
        client reached.  Answered at once unless a name must be resolved:
        PASV runs before every transfer.
        """
        if self.session.epsv_all:
            return Reply(503, "PASV not allowed after EPSV ALL")
        name = self.factory.masquerade_address
        if name is None:
            name = normal_host(self.transport.getHost().host)
        address = _ipv4(name)
        if address is not None or self.factory.masquerade_address is None:
            return self._pasv_reply(address)
        return ensureDeferred(self._resolve(name)).addCallback(self._pasv_reply)

    def _pasv_reply(self, address: Optional[str]) -> Reply:
        if address is None:
            return Reply(522, "PASV needs IPv4; use EPSV (1,2)")
        port = self._passive()
        numbers = ",".join(address.split(".") + [str(port >> 8), str(port & 0xFF)])
        return Reply(227, f"Entering Passive Mode ({numbers})")

    async def _resolve(self, name: str) -> str:
        """The masquerade address C{name}, resolved; or a 425 reply."""
        try:
            resolved = await self.reactor.resolve(name, timeout=(2, 5))
            return str(ipaddress.IPv4Address(resolved))
        except Exception:
            log.failure("cannot resolve masquerade_address {name}", name=name)
            raise Reply(425, "Cannot determine the passive address") from None

    def ftp_EPSV(self, protocol: str) -> Reply:
        if protocol.upper() == "ALL":
            self.session.epsv_all = True
            return Reply(200, "EPSV ALL ok")
        family = "2" if ":" in normal_host(self.transport.getHost().host) else "1"
        if protocol and protocol != family:
            # RFC 2428 3: the listener must use the protocol asked for; this
            # connection only has the address family it arrived on.
            return Reply(522, f"Network protocol not supported, use ({family})")
        port = self._passive()
        return Reply(229, f"Entering Extended Passive Mode (|||{port}|)")

    def _set_active(self, host: str, port: int) -> Reply:
        if self.session.epsv_all:
            return Reply(503, "PORT and EPRT are not allowed after EPSV ALL")
        if normal_host(host) != normal_host(self.peer.host) or port < 1024:
            log.warn(
                "refused PORT to {host}:{port} from {peer}",
                host=host,
                port=port,
                peer=self.peer.host,
            )
            return Reply(
                504, "Data connections go only to your own address and a port >= 1024"
            )
        self.data.active(host, port)
        return Reply(200, "PORT command successful")

    def ftp_PORT(self, address: str) -> Reply:
        try:
            numbers = [int(n) for n in address.split(",")]
            if len(numbers) != 6 or not all(0 <= n <= 255 for n in numbers):
                raise ValueError(address)
        except ValueError:
            return Reply(501, "Syntax error in PORT address")
        host = ".".join(str(n) for n in numbers[:4])
        return self._set_active(host, numbers[4] << 8 | numbers[5])

    def ftp_EPRT(self, address: str) -> Reply:
        try:
            protocol, host, port = decode_extended_address(address)
            ipaddress.ip_address(host)
        except (ValueError, IndexError):
            return Reply(501, "Syntax error in EPRT address")
        if protocol not in ("1", "2"):
            return Reply(522, "Network protocol not supported, use (1,2)")
        return self._set_active(host, port)
