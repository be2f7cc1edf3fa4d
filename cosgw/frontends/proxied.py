"""
Listeners behind a load balancer: the PROXY protocol header (v1 or v2) read
before the protocol is even built, so that the client's address in it is
the one every rule, limit, ban, log line and audit event sees.

A listener expects the header when its endpoint string starts with
C{haproxy:}, or names C{proxy_protocol=yes}, or the server's
C{proxy_protocol = yes} holds and the listener does not say
C{proxy_protocol=no} (L{ProxySettings.listener}).  Twisted's own
C{haproxy:} wrapper is not used: it builds the protocol (and so admits the
connection, counts it per address and opens its session) on connect, with
the balancer's address, and only later answers C{getPeer} with the
client's; and under C{ssl:} or our implicit-TLS factory it would sit inside
TLS, where HAProxy's header is not (it comes in clear, before the
ClientHello).

L{ProxiedFactory} wraps the listener's factory, whatever it is (FTP, the
implicit-FTPS TLS factory around FTP, SSH, WebDAV's), so the order on the
wire is always: header, then the protocol (TLS included).  Per connection
(L{ProxiedConnection}):

  1. On connect, the real peer must be in C{proxy_trusted_networks} (a
     UNIX-socket peer is local, trusted): anyone else could claim any
     address.  Otherwise the connection is closed at once and logged: one
     line per peer per L{UNTRUSTED_LOG_EVERY} seconds with the count of the
     others (a balancer left out of the networks refuses every client, and
     must not write a line for each).
  2. The header must arrive within L{ProxySettings.header_timeout} seconds
     and be valid (L{cosgw.frontends.proxyheader}; its size is capped, and
     a first byte that starts no header refuses at once: an SSH version
     line or a TLS ClientHello sent straight to the gateway).  Otherwise the
     connection is closed without a word and logged once, with the real
     peer.
     Until then the connection is not the listener's protocol's: it is
     not counted by C{max_connections} or C{max_connections_per_ip} (of
     the balancer's address or any other) and opens no session, so
     connections that never send a header cannot crowd out clients; only
     trusted peers can hold one, for the deadline at most.
  3. Then the wrapped factory builds the protocol for the client's address
     from the header (the balancer's own for C{LOCAL} and C{UNKNOWN}, such
     as HAProxy's health checks), the protocol is connected with
     C{getPeer()} answering that address, and the bytes that followed the
     header are its first.  C{getHost()} stays the real local address: a
     passive FTP listener binds there.

Nothing is written before the header: an SSH server's version line and an
FTP greeting come after it.  HAProxy sends the header as soon as it has
connected and relays whatever comes back, so clients see no difference.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Optional, Union, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.python.failure import Failure
from zope.interface import alsoProvides, directlyProvides, providedBy

from cosgw.config import ConfigError, ServerConfig, parse_bool
from cosgw.config.model import DEFAULT_PROXY_TRUSTED
from cosgw.frontends.proxyheader import BadHeader, HeaderParser, ProxyHeader

__all__ = [
    "HEADER_TIMEOUT",
    "UNTRUSTED_LOG_EVERY",
    "ProxiedConnection",
    "ProxiedFactory",
    "ProxySettings",
    "relay_of",
]

log = Logger(namespace="cosgw.frontends.proxy")

#: Seconds a connection has to send its header.  A balancer sends it with
#: its first packet; a client that reached the gateway directly and waits
#: for a greeting (FTP) is closed after this.
HEADER_TIMEOUT = 5.0

#: Seconds between two warnings about connections from one untrusted peer.
UNTRUSTED_LOG_EVERY = 60.0
#: Untrusted peers whose last warning is remembered, at most.
_UNTRUSTED_REMEMBERED = 1024

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _ip(host: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """C{host} as an address, IPv4-mapped IPv6 unwrapped; None if not an IP."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _host(address: IAddress) -> str:
    """An address as log lines show it."""
    if isinstance(address, UNIXAddress):
        name = address.name
        return "unix:" + (name.decode("utf-8", "replace") if name else "?")
    return str(getattr(address, "host", address))


@dataclass(frozen=True)
class ProxySettings:
    """
    The server's PROXY protocol policy, for every listener of the gateway.

    @ivar enabled: the server's C{proxy_protocol}: listeners expect a header
        unless they say C{proxy_protocol=no}.
    @ivar trusted: the networks whose headers are believed
        (C{proxy_trusted_networks}).
    @ivar header_timeout: seconds a connection has to send its header.
    """

    enabled: bool = False
    trusted: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    header_timeout: float = HEADER_TIMEOUT

    @classmethod
    def from_config(cls, server: ServerConfig) -> ProxySettings:
        """
        The server section's settings.  The header's deadline is
        L{HEADER_TIMEOUT}, or the login timeout when that is shorter: a
        client cannot log in before its header came.
        """
        return cls(
            enabled=server.proxy_protocol,
            trusted=server.proxy_trusted_networks,
            header_timeout=min(HEADER_TIMEOUT, float(server.login_timeout)),
        )

    def listener(self, endpoint: str, options: dict[str, str]) -> tuple[str, bool]:
        """
        A listener's endpoint string for Twisted (without C{haproxy:}) and
        whether the listener expects a header.

        @param options: the listener's own options (C{proxy_protocol}).
        @raise ConfigError: C{haproxy:} with C{proxy_protocol=no}.
        """
        wrapped = False
        while endpoint[:8].lower() == "haproxy:":
            endpoint, wrapped = endpoint[8:], True
        own = options.get("proxy_protocol")
        if own is None:
            return endpoint, wrapped or self.enabled
        try:
            expected = parse_bool(own)
        except ValueError:
            raise ConfigError("expected proxy_protocol=yes or =no") from None
        if wrapped and not expected:
            raise ConfigError("haproxy: and proxy_protocol=no contradict each other")
        return endpoint, expected

    def networks(self) -> tuple[_Network, ...]:
        """The trusted networks, parsed."""
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted)


class ProxiedConnection(policies.ProtocolWrapper):
    """
    One connection of a PROXY listener: the header first, then the wrapped
    protocol, built and connected only then (see the module docstring).
    """

    factory: ProxiedFactory
    wrappedProtocol: Optional[IProtocol]  # type: ignore[assignment]

    def __init__(self, factory: ProxiedFactory) -> None:
        self.factory = factory
        self.wrappedProtocol = None
        #: The real peer: the balancer (set on connect).
        self.relay: Optional[IAddress] = None
        #: The header read, once it has been.
        self.header: Optional[ProxyHeader] = None
        self._peer: Optional[IAddress] = None
        self._parser: Optional[HeaderParser] = HeaderParser()
        self._deadline: Optional[IDelayedCall] = None
        self._received = 0

    def logPrefix(self) -> str:
        if ILoggingContext.providedBy(self.wrappedProtocol):
            return str(self.wrappedProtocol.logPrefix())
        return "PROXY"

    def makeConnection(self, transport: Any) -> None:
        # Not ProtocolWrapper's: the wrapped protocol does not exist yet.
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.relay = self.transport.getPeer()
        if not self.factory.trusts(self.relay):
            self.factory.untrusted(self.relay)
            self._refuse()
            return
        self._deadline = self.factory.clock.callLater(
            self.factory.settings.header_timeout, self._timed_out
        )

    def _refuse(self) -> None:
        """Close without a word: whoever this is did not speak PROXY to us."""
        self._parser = None
        assert self.transport is not None
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._deadline = None
        log.warn(
            "Refused a connection from {peer}: no PROXY header within {seconds} s"
            " ({received} bytes received)",
            peer=_host(self.relay) if self.relay else "?",
            seconds=self.factory.settings.header_timeout,
            received=self._received,
        )
        self._parser = None
        assert self.transport is not None
        # Abort: a peer that does not read must not hold the socket either.
        cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        parser = self._parser
        if parser is None:
            return  # refused: closing
        self._received += len(data)
        try:
            done = parser.feed(data)
        except BadHeader as e:
            log.warn(
                "Refused a connection from {peer}: {reason}",
                peer=_host(self.relay) if self.relay else "?",
                reason=str(e),
            )
            self._cancel_deadline()
            self._refuse()
            return
        if done is not None:
            self._cancel_deadline()
            self._parser = None
            self._start(*done)

    def _start(self, header: ProxyHeader, rest: bytes) -> None:
        """The header is in: build and connect the protocol for its client."""
        assert self.transport is not None and self.relay is not None
        self.header = header
        self._peer = header.source if header.source is not None else self.relay
        log.debug(
            "Connection from {peer} through {relay} (PROXY v{version})",
            peer=_host(self._peer),
            relay=_host(self.relay),
            version=header.version,
        )
        inner = self.factory.wrappedFactory.buildProtocol(self._peer)
        if inner is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = inner
        directlyProvides(self, providedBy(self.transport))
        if IHandshakeListener.providedBy(inner):
            # TLS started on the TCP transport (FTP's AUTH TLS) tells the
            # protocol above it, which is this wrapper.
            alsoProvides(self, IHandshakeListener)
        self.factory.registerProtocol(self)
        inner.makeConnection(self)
        if rest and not getattr(self.transport, "disconnecting", False):
            inner.dataReceived(rest)

    def handshakeCompleted(self) -> None:
        """The TLS handshake under the wrapped protocol is done: tell it."""
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def _cancel_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        self.connected = 0
        inner = self.wrappedProtocol
        if inner is None:
            if self._parser is not None and self._received:
                log.info(
                    "Connection from {peer} closed within its PROXY header",
                    peer=_host(self.relay) if self.relay else "?",
                )
            self._parser = None
            return
        self.factory.unregisterProtocol(self)
        inner.connectionLost(reason)
        # Break the cycle the wrapped protocol's transport makes.
        self.wrappedProtocol = None

    def getPeer(self) -> IAddress:
        """The client from the header (the balancer before it came, or for
        C{LOCAL})."""
        if self._peer is not None:
            return self._peer
        assert self.transport is not None
        return self.transport.getPeer()


class ProxiedFactory(policies.WrappingFactory):
    """
    Wraps a listener's factory: every connection reads its PROXY header
    before C{wrappedFactory.buildProtocol} is called with the client's
    address.
    """

    protocol = ProxiedConnection
    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, settings: ProxySettings, clock: IReactorTime
    ) -> None:
        super().__init__(wrapped)
        self.settings = settings
        self.clock = clock
        self._trusted = settings.networks()
        #: Untrusted peer -> (time of its last warning, refused since).
        self._untrusted: dict[str, tuple[float, int]] = {}

    def logPrefix(self) -> str:
        inner = self.wrappedFactory
        name = (
            inner.logPrefix()
            if ILoggingContext.providedBy(inner)
            else type(inner).__name__
        )
        return f"{name} (PROXY)"

    def buildProtocol(self, addr: Optional[IAddress]) -> ProxiedConnection:
        return ProxiedConnection(self)

    def trusts(self, peer: IAddress) -> bool:
        """Whether a header from C{peer} is believed."""
        if isinstance(peer, UNIXAddress):
            return True  # a local process, let in by the socket's mode
        address = _ip(getattr(peer, "host", ""))
        if address is None:
            return False
        return any(address in network for network in self._trusted)

    def untrusted(self, peer: IAddress) -> None:
        """
        Log a connection refused from C{peer}, not in the trusted networks:
        its first, then one line per L{UNTRUSTED_LOG_EVERY} seconds saying
        how many were refused since.
        """
        host, now = _host(peer), self.clock.seconds()
        last, since = self._untrusted.get(host, (None, 0))
        if last is not None and now - last < UNTRUSTED_LOG_EVERY:
            self._untrusted[host] = (last, since + 1)
            return
        if len(self._untrusted) >= _UNTRUSTED_REMEMBERED:
            self._untrusted.clear()
        self._untrusted[host] = (now, 0)
        log.warn(
            "Refused a connection from {peer}: not in proxy_trusted_networks,"
            " so its PROXY header cannot be believed{since}",
            peer=host,
            refused_since=since,
            since=f" ({since} more refused since the last such line)" if since else "",
        )


def relay_of(transport: Any) -> Optional[str]:
    """
    The host of the balancer a connection came through (with a PROXY
    header naming another client), or None for a direct connection.  A
    protocol's transport may be TLS over the L{ProxiedConnection}, so the
    lookup goes through the wrappers' attributes.
    """
    relay = getattr(transport, "relay", None)
    peer = transport.getPeer() if relay is not None else None
    if not isinstance(relay, (IPv4Address, IPv6Address)) or relay == peer:
        return None
    return relay.host
