"""
The PROXY listener wrapper (L{cosgw.frontends.proxied}) over
StringTransport and a MemoryReactorClock: the protocol is built only once
the header is in, for the header's client, and gets the bytes after it;
untrusted peers, a missing, late or bad header are refused and logged once
with the real peer; LOCAL is the balancer; which listeners expect a header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from cosgw.audit import SessionTable
from cosgw.config import ConfigError, ServerConfig
from cosgw.frontends.listener import ListenerService
from cosgw.frontends.proxied import (
    HEADER_TIMEOUT,
    ProxiedFactory,
    ProxySettings,
    relay_of,
)
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from tests.logevents import LogEvents
from tests.proxytesting import v1_header, v2_header
from tests.sshtesting import host_keys

BALANCER = IPv4Address("TCP", "127.0.0.1", 51000)
LOCAL = IPv4Address("TCP", "127.0.0.1", 2121)
DEFAULTS = ProxySettings()


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False
        self.peer: Optional[IAddress] = None
        self.host: Optional[IAddress] = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.transport.write(b"hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


@implementer(IHandshakeListener)
class Handshaking(Recorder):
    handshakes = 0

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


class RecordingFactory(Factory):
    def __init__(self, protocol: type = Recorder, refuse: bool = False) -> None:
        self.protocol = protocol
        self.built: list[Any] = []
        self.refuse = refuse

    def buildProtocol(self, addr: Any) -> Any:
        self.built.append(addr)
        if self.refuse:
            return None
        self.made = super().buildProtocol(addr)
        return self.made


class WrapperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.inner = RecordingFactory()
        self.log = LogEvents(self, "cosgw.frontends.proxy")

    def connect(
        self,
        peer: IAddress = BALANCER,
        settings: ProxySettings = DEFAULTS,
        inner: Optional[Factory] = None,
    ) -> tuple[Any, StringTransport]:
        factory = ProxiedFactory(inner or self.inner, settings, self.clock)
        wrapper = factory.buildProtocol(peer)
        transport = StringTransport(hostAddress=LOCAL, peerAddress=peer)
        wrapper.makeConnection(transport)
        return wrapper, transport

    def warnings(self) -> list[dict[str, Any]]:
        return self.log.at(LogLevel.warn)

    def test_built_for_header_client_once_header_is_in(self) -> None:
        wrapper, transport = self.connect()
        data = v1_header(("203.0.113.5", 40001), ("192.0.2.1", 21)) + b"USER a\r\n"
        for i in range(len(data) - 9):
            wrapper.dataReceived(data[i : i + 1])
        self.assertEqual(self.inner.built, [])
        self.assertEqual(transport.value(), b"")  # nothing before the header
        wrapper.dataReceived(data[-9:])
        client = IPv4Address("TCP", "203.0.113.5", 40001)
        self.assertEqual(self.inner.built, [client])
        protocol = self.inner.made
        self.assertEqual((protocol.peer, protocol.host), (client, LOCAL))
        self.assertEqual(protocol.received, b"USER a\r\n")
        self.assertEqual(transport.value(), b"hello\r\n")
        self.assertEqual(relay_of(wrapper), "127.0.0.1")
        wrapper.dataReceived(b"PASS b\r\n")
        self.assertEqual(protocol.received, b"USER a\r\nPASS b\r\n")
        self.clock.advance(HEADER_TIMEOUT * 2)  # the deadline is over
        self.assertFalse(transport.disconnecting)
        wrapper.connectionLost(None)
        self.assertTrue(protocol.lost)
        self.assertEqual(self.warnings(), [])

    def test_ipv6_client(self) -> None:
        wrapper, _ = self.connect()
        wrapper.dataReceived(v2_header(("2001:db8::5", 7), ("2001:db8::1", 22)))
        self.assertEqual(self.inner.built, [IPv6Address("TCP", "2001:db8::5", 7)])

    def test_local_is_the_balancer(self) -> None:
        wrapper, _ = self.connect()
        wrapper.dataReceived(v2_header(None) + b"SSH-2.0-x\r\n")
        self.assertEqual(self.inner.built, [BALANCER])
        self.assertEqual(self.inner.made.received, b"SSH-2.0-x\r\n")
        self.assertIsNone(relay_of(wrapper))
        wrapper, _ = self.connect()
        wrapper.dataReceived(b"PROXY UNKNOWN\r\n")
        self.assertEqual(self.inner.built, [BALANCER, BALANCER])

    def test_untrusted_peer(self) -> None:
        stranger = IPv4Address("TCP", "192.0.2.66", 5)
        wrapper, transport = self.connect(stranger)
        self.assertTrue(transport.disconnecting)
        wrapper.dataReceived(v1_header(("203.0.113.5", 1), ("192.0.2.1", 21)))
        wrapper.connectionLost(None)
        self.assertEqual(self.inner.built, [])
        [warning] = self.warnings()
        self.assertEqual(warning["peer"], "192.0.2.66")
        self.assertIn("proxy_trusted_networks", warning["log_format"])

    def test_untrusted_peer_logged_once_a_minute(self) -> None:
        """
        A balancer left out of proxy_trusted_networks refuses every client:
        one warning for its first connection, then one a minute with the
        count refused since; another peer has its own line.
        """
        factory = ProxiedFactory(self.inner, DEFAULTS, self.clock)
        strangers = [IPv4Address("TCP", "192.0.2.66", p) for p in range(1, 12)]
        for i, stranger in enumerate(strangers):
            wrapper = factory.buildProtocol(stranger)
            transport = StringTransport(hostAddress=LOCAL, peerAddress=stranger)
            wrapper.makeConnection(transport)
            self.assertTrue(transport.disconnecting)
            wrapper.connectionLost(None)
            if i == 4:
                other = IPv4Address("TCP", "192.0.2.67", 1)
                factory.buildProtocol(other).makeConnection(
                    StringTransport(hostAddress=LOCAL, peerAddress=other)
                )
            if i == 9:
                self.clock.advance(60)
        self.assertEqual(self.inner.built, [])
        lines = [(w["peer"], w["refused_since"]) for w in self.warnings()]
        self.assertEqual(
            lines, [("192.0.2.66", 0), ("192.0.2.67", 0), ("192.0.2.66", 9)]
        )

    def test_trusted_networks(self) -> None:
        settings = ProxySettings(trusted=("10.0.0.0/8", "2001:db8::/32"))
        for peer, trusted in [
            (IPv4Address("TCP", "10.1.2.3", 1), True),
            (IPv6Address("TCP", "::ffff:10.1.2.3", 1), True),
            (IPv6Address("TCP", "2001:db8::9", 1), True),
            (IPv4Address("TCP", "127.0.0.1", 1), False),
            (UNIXAddress(b"/run/cosgw.sock"), True),
        ]:
            _, transport = self.connect(peer, settings)
            self.assertEqual(transport.disconnecting, not trusted, peer)

    def test_no_header_in_time(self) -> None:
        settings = ProxySettings(header_timeout=3.0)
        wrapper, transport = self.connect(settings=settings)
        wrapper.dataReceived(b"PROXY TCP4 1.2")
        self.clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(None)
        self.assertEqual(self.inner.built, [])
        [warning] = self.warnings()
        self.assertEqual((warning["peer"], warning["received"]), ("127.0.0.1", 14))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_header_logged_once(self) -> None:
        wrapper, transport = self.connect()
        wrapper.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
        self.assertTrue(transport.disconnecting)
        wrapper.dataReceived(b"more")
        wrapper.connectionLost(None)
        [warning] = self.warnings()
        self.assertIn("no PROXY header", warning["reason"])
        self.assertEqual(self.inner.built, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refused_by_wrapped_factory(self) -> None:
        inner = RecordingFactory(refuse=True)
        wrapper, transport = self.connect(inner=inner)
        wrapper.dataReceived(v1_header(("203.0.113.5", 1), ("192.0.2.1", 21)))
        self.assertEqual(len(inner.built), 1)
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(None)

    def test_handshake_listener_forwarded(self) -> None:
        """TLS started below the wrapper (AUTH TLS) reaches the protocol."""
        inner = RecordingFactory(Handshaking)
        wrapper, _ = self.connect(inner=inner)
        self.assertFalse(IHandshakeListener.providedBy(wrapper))
        wrapper.dataReceived(v2_header(("192.0.2.5", 1)))
        self.assertTrue(IHandshakeListener.providedBy(wrapper))
        wrapper.handshakeCompleted()
        self.assertEqual(inner.made.handshakes, 1)

    def test_ssh_version_after_header(self) -> None:
        """
        The SSH server writes its version line only once the header came,
        and its session is the header's client.
        """
        sessions = SessionTable(self.clock)
        ssh = GatewaySSHFactory(
            Portal(None),
            host_keys(),
            self.clock,
            sessions=sessions,  # type: ignore[arg-type]
        )
        ssh.doStart()
        self.addCleanup(ssh.doStop)
        wrapper, transport = self.connect(inner=ssh)
        self.assertEqual(transport.value(), b"")
        wrapper.dataReceived(v2_header(("198.51.100.4", 4242), ("192.0.2.1", 22)))
        self.assertTrue(transport.value().startswith(b"SSH-2.0-cosgw\r\n"))
        [session] = sessions.sessions.values()
        self.assertEqual((session.host, session.port), ("198.51.100.4", 4242))
        wrapper.connectionLost(None)


class ListenerTests(SynchronousTestCase):
    def settings(self, enabled: bool = False) -> ProxySettings:
        return ProxySettings(enabled=enabled)

    def test_which_listeners_expect_a_header(self) -> None:
        cases = [
            ("tcp:21", {}, False, "tcp:21", False),
            ("tcp:21", {}, True, "tcp:21", True),
            ("haproxy:tcp:21", {}, False, "tcp:21", True),
            ("HAProxy:tcp6:21", {}, False, "tcp6:21", True),
            ("tcp:21", {"proxy_protocol": "yes"}, False, "tcp:21", True),
            ("tcp:21", {"proxy_protocol": "no"}, True, "tcp:21", False),
            ("haproxy:tcp:21", {"proxy_protocol": "yes"}, False, "tcp:21", True),
        ]
        for endpoint, options, enabled, twisted, expected in cases:
            got = self.settings(enabled).listener(endpoint, options)
            self.assertEqual(got, (twisted, expected), (endpoint, options, enabled))
        self.assertRaises(
            ConfigError,
            self.settings().listener,
            "haproxy:tcp:21",
            {"proxy_protocol": "no"},
        )
        self.assertRaises(
            ConfigError, self.settings().listener, "tcp:21", {"proxy_protocol": "hm"}
        )

    def test_listener_wraps_its_factory(self) -> None:
        reactor = MemoryReactorClock()
        inner = RecordingFactory()
        for description, proxied in [
            ("haproxy:tcp:0:interface=127.0.0.1", True),
            ("tcp:0:interface=127.0.0.1:proxy_protocol=yes", True),
            ("tcp:0:interface=127.0.0.1", False),
        ]:
            listener = ListenerService(reactor, description, inner)
            listener.startService()
            self.assertEqual(listener.proxied, proxied)
            self.assertIs(listener.factory, inner)
        factories = [server[1] for server in reactor.tcpServers]
        self.assertIsInstance(factories[0], ProxiedFactory)
        self.assertIsInstance(factories[1], ProxiedFactory)
        self.assertIs(factories[2], inner)
        self.assertIs(factories[0].wrappedFactory, inner)

    def test_contradiction_names_the_key(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            ListenerService(
                MemoryReactorClock(),
                "haproxy:tcp:21:proxy_protocol=no",
                RecordingFactory(),
                key="[server] ftp_listen",
            )
        self.assertIn("[server] ftp_listen: cannot use haproxy:", str(caught.exception))

    def test_from_config(self) -> None:
        server = ServerConfig(
            state_dir=Path("state"),
            proxy_protocol=True,
            proxy_trusted_networks=("10.0.0.0/8",),
            login_timeout=2,
        )
        self.assertEqual(
            ProxySettings.from_config(server),
            ProxySettings(True, ("10.0.0.0/8",), 2.0),
        )
        default = ProxySettings.from_config(ServerConfig(state_dir=Path("state")))
        self.assertEqual(
            (default.enabled, default.header_timeout), (False, HEADER_TIMEOUT)
        )
