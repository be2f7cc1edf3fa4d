"""
Tests for L{cosgw.frontends.sftp.transport}: the login, idle and closing
deadlines on an injected clock, the same over real sockets, admission, and
how packets are taken in (whole, none longer than 256 KiB).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Optional

import paramiko
from twisted.conch.ssh.common import NS
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cosgw.audit import AUDIT_NAMESPACE, audit_fields
from cosgw.auth.keys import KeyChecker
from cosgw.auth.realm import Realm
from cosgw.frontends.sftp.conchlog import ConchLogger, set_conch_verbose
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from cosgw.frontends.sftp.session import GatewayConnection, SFTPUser
from cosgw.frontends.sftp.userauth import GatewayUserAuthServer
from tests.sshtesting import (
    CLIENT_TIMEOUT,
    NO_OPENSSH,
    PASSWORD,
    USER,
    RootOnlySFTP,
    SSHServerMixin,
    ed25519_host_keys,
    paramiko_transport,
    parse_disconnect,
    password_login,
    raw_server_packets,
    sftp_realpath,
    user_key,
    wait_inactive,
)


class RecordingAdmission:
    """Admits (or refuses with C{refusal}) and records every call."""

    def __init__(self, refusal: Optional[str] = None) -> None:
        self.refusal = refusal
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.refuse_later: Optional[Callable[[str], None]] = None

    def open(
        self, ip: str, refuse: Optional[Callable[[str], None]] = None
    ) -> Optional[str]:
        self.opened.append(ip)
        self.refuse_later = refuse
        return self.refusal

    def close(self, ip: str) -> None:
        self.closed.append(ip)


class TransportClockTests(SynchronousTestCase):
    """
    The transport's deadlines, on a L{Clock} given as the reactor: nothing is
    scheduled on the global reactor (Conch's userauth would).
    """

    PEER = IPv4Address("TCP", "192.0.2.7", 50000)

    def build(self, **kwargs: Any) -> tuple[Clock, Any, StringTransport]:
        clock = Clock()
        factory = GatewaySSHFactory(
            Portal(Realm(), [KeyChecker({})]), ed25519_host_keys(), clock, **kwargs
        )
        proto = factory.buildProtocol(self.PEER)
        transport = StringTransport(peerAddress=self.PEER)
        global_calls = set(reactor.getDelayedCalls())
        proto.makeConnection(transport)
        self.assertEqual(set(reactor.getDelayedCalls()), global_calls)
        return clock, proto, transport

    def last_packet(self, transport: StringTransport) -> bytes:
        version, _, rest = transport.value().partition(b"\r\n")
        self.assertEqual(version, b"SSH-2.0-cosgw")
        payload = b""
        while len(rest) >= 5:
            length, padding = struct.unpack(">IB", rest[:5])
            payload = rest[5 : 4 + length - padding]
            rest = rest[4 + length :]
        return payload

    def test_login_deadline_then_abort(self) -> None:
        clock, proto, transport = self.build(login_timeout=30)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)), (11, "login timeout")
        )
        # Input after DISCONNECT is discarded; a peer that never closes is
        # aborted after the grace period.
        proto.dataReceived(b"SSH-2.0-late\r\n")
        self.assertFalse(transport.disconnected)
        clock.advance(10)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_userauth_uses_injected_clock(self) -> None:
        clock, proto, transport = self.build(login_timeout=30)
        proto.isEncrypted = lambda direction="out": True
        global_calls = set(reactor.getDelayedCalls())
        service = GatewayUserAuthServer()
        service.transport = proto
        service.serviceStarted()
        self.assertIs(service.clock, clock)
        self.assertEqual(service.supportedAuthentications, [b"publickey"])
        self.assertEqual(set(reactor.getDelayedCalls()), global_calls)
        # Conch's own deadline is cancelled: the transport's is the one.
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        service.serviceStopped()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_deadline(self) -> None:
        clock, proto, transport = self.build(login_timeout=30, idle_timeout=100)
        proto.avatar = SFTPUser(USER, RootOnlySFTP())
        proto.logoutFunction = proto.avatar.logout
        proto.setService(GatewayConnection())
        clock.advance(60)
        proto.dataReceived(b"")  # activity: the deadline moves
        clock.advance(99)
        self.assertFalse(transport.disconnecting)
        clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)), (11, "idle timeout")
        )
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_idle_deadline(self) -> None:
        clock, proto, transport = self.build(idle_timeout=None)
        proto.avatar = SFTPUser(USER, RootOnlySFTP())
        proto.logoutFunction = proto.avatar.logout
        proto.setService(GatewayConnection())
        self.assertEqual(clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(ConnectionDone()))


class AuditTests(SynchronousTestCase):
    """
    The connection's audit session: opened once admitted, closed with why;
    a client's normal logout is no error; a kick is a DISCONNECT; Conch's
    chatter is dropped unless asked for.
    """

    PEER = TransportClockTests.PEER
    build = TransportClockTests.build
    last_packet = TransportClockTests.last_packet

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def audit(self) -> list[tuple[str, str, str]]:
        """(event, status, reason) of every audit event so far."""
        found = [
            dict(audit_fields(e) or {})
            for e in self.events
            if e.get("log_namespace") == AUDIT_NAMESPACE
        ]
        return [(e["event"], e["status"], e.get("reason", "")) for e in found]

    def loud(self) -> list[str]:
        """The log lines at warn or above."""
        return [
            str(e.get("log_format"))
            for e in self.events
            if e["log_level"] >= LogLevel.warn
        ]

    def test_opened_once_admitted(self) -> None:
        _, refused, _ = self.build(admission=RecordingAdmission("full"))
        self.assertEqual((self.audit(), refused.factory.sessions.sessions), ([], {}))
        _, proto, _ = self.build(admission=RecordingAdmission())
        [session] = proto.factory.sessions.sessions.values()
        self.assertEqual(
            (session.protocol, session.host, session.port),
            ("sftp", "192.0.2.7", 50000),
        )
        self.assertEqual(self.audit(), [("session-open", "FX_OK", "")])

    def test_refused_later_by_the_cluster(self) -> None:
        """
        A connection admitted here that the cluster's count refuses once
        Redis answers is disconnected with SSH's too-many-connections code
        and the reason, and its session closes saying so.
        """
        admission = RecordingAdmission()
        _, proto, transport = self.build(admission=admission)
        self.assertEqual(admission.opened, ["192.0.2.7"])
        assert admission.refuse_later is not None
        admission.refuse_later("too many connections (cluster: 64)")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)),
            (12, "too many connections (cluster: 64)"),
        )
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.audit()[-1][::2],
            ("session-close", "refused: too many connections (cluster: 64)"),
        )

    def test_client_logout_is_no_error(self) -> None:
        _, proto, _ = self.build()
        proto.receiveError(11, b"disconnected by user")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.loud(), [])
        self.assertEqual(
            self.audit()[-1],
            ("session-close", "FX_OK", "client quit (disconnected by user)"),
        )

    def test_other_client_disconnect_is_a_warning(self) -> None:
        _, proto, _ = self.build()
        proto.receiveError(2, b"bad packet")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.loud(),
            ["SSH client at {peer} disconnected: code {code}, {description}"],
        )
        self.assertEqual(self.audit()[-1][2], "client disconnected: code 2, bad packet")

    def test_kick(self) -> None:
        clock, proto, transport = self.build()
        [session] = proto.factory.sessions.sessions.values()
        session.kick("maintenance")
        self.assertEqual(
            parse_disconnect(self.last_packet(transport)), (11, "maintenance")
        )
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            self.audit()[-1],
            ("session-close", "DISCONNECT_BY_APPLICATION", "kicked: maintenance"),
        )
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_conch_chatter_only_when_verbose(self) -> None:
        self.addCleanup(set_conch_verbose, False)
        logger = ConchLogger(namespace="twisted.conch.test")
        set_conch_verbose(False)
        logger.info("chatter")
        logger.debug("chatter")
        logger.warn("trouble")
        set_conch_verbose(True)
        logger.info("chatter")
        self.assertEqual(
            [(e["log_level"], e["log_format"]) for e in self.events],
            [(LogLevel.warn, "trouble"), (LogLevel.debug, "chatter")],
        )


class TimeoutTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_login_timeout_silent_client(self) -> Any:
        """A client that sends nothing at all is disconnected after login_timeout."""
        port = self.start_server(login_timeout=0.5)
        seen = yield self.in_thread(raw_server_packets, port, send_version=False)
        self.assertTrue(seen["closed"])
        self.assertGreater(seen["elapsed"], 0.4)
        self.assertLess(seen["elapsed"], 5)
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (11, "login timeout"))
        yield self.wait_until(lambda: "closed after" in self.log_text())
        self.assertIn(": login timeout (0.5 s)", self.log_text())

    @defer.inlineCallbacks
    def test_login_timeout_after_key_exchange(self) -> Any:
        """A client that exchanged keys but never authenticates is cut too."""
        port = self.start_server(login_timeout=0.5)

        def stall() -> bool:
            with paramiko_transport(port) as t:
                return wait_inactive(t, 5)

        self.assertTrue((yield self.in_thread(stall)))

    @defer.inlineCallbacks
    def test_login_timeout_spares_logged_in(self) -> Any:
        port = self.start_server(login_timeout=0.5, idle_timeout=None)

        def slow() -> str:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                time.sleep(1.0)
                return sftp_realpath(t)

        self.assertEqual((yield self.in_thread(slow)), "/")

    @defer.inlineCallbacks
    def test_idle_timeout(self) -> Any:
        port = self.start_server(idle_timeout=0.5)

        def idle() -> tuple[str, bool]:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                root = sftp_realpath(t)
                return root, wait_inactive(t, 5)

        root, ended = yield self.in_thread(idle)
        self.assertEqual(root, "/")
        self.assertTrue(ended)
        yield self.wait_until(lambda: self.logouts == [USER])
        yield self.wait_until(lambda: "closed after" in self.log_text())
        self.assertIn(": idle timeout (", self.log_text())

    @defer.inlineCallbacks
    def test_activity_keeps_connection(self) -> Any:
        port = self.start_server(idle_timeout=0.8)

        def busy() -> bool:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                sftp = paramiko.SFTPClient.from_transport(t)
                assert sftp is not None
                for _ in range(8):
                    sftp.normalize(".")
                    time.sleep(0.25)
                return t.is_active()

        self.assertTrue((yield self.in_thread(busy)))
        self.assertNotIn("idle timeout", self.log_text())


class AdmissionTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_admitted_then_closed_once(self) -> Any:
        admission = RecordingAdmission()
        port = self.start_server(admission=admission)
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.wait_until(lambda: admission.closed)
        yield self.close_all()
        self.assertEqual(admission.opened, ["127.0.0.1"])
        self.assertEqual(admission.closed, ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_refused_with_reason(self) -> Any:
        reason = "too many connections from your address (1)"
        admission = RecordingAdmission(reason)
        port = self.start_server(admission=admission)
        seen = yield self.in_thread(raw_server_packets, port)
        self.assertTrue(seen["closed"])
        self.assertEqual(seen["version"], b"SSH-2.0-cosgw")
        # SSH_DISCONNECT_TOO_MANY_CONNECTIONS, RFC 4253 section 11.1.
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (12, reason))
        yield self.close_all()
        self.assertEqual(admission.opened, ["127.0.0.1"])
        self.assertEqual(admission.closed, [])

    @defer.inlineCallbacks
    def test_refused_openssh_sees_reason(self) -> Any:
        reason = "your address is not allowed"
        port = self.start_server(admission=RecordingAdmission(reason))
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true", log_level="INFO"
        )
        self.assertEqual(result.returncode, 255)
        self.assertIn(b":12: " + reason.encode(), result.stderr)


def kexinit_packet() -> tuple[bytes, bytes]:
    """A client's clear-text KEXINIT: (its payload, the packet)."""
    names = [
        b"curve25519-sha256",
        b"ssh-ed25519",
        b"aes128-ctr",
        b"aes128-ctr",
        b"hmac-sha2-256",
        b"hmac-sha2-256",
        b"none",
        b"none",
        b"",
        b"",
    ]
    payload = b"\x14" + bytes(16) + b"".join(NS(n) for n in names) + b"\x00" + bytes(4)
    padding = 8 - (4 + 1 + len(payload)) % 8
    if padding < 4:
        padding += 8
    body = bytes([padding]) + payload + bytes(padding)
    return payload, struct.pack(">I", len(body)) + body


class PacketTests(SynchronousTestCase):
    """How the transport takes its input: whole packets, none too long."""

    def test_packet_in_small_pieces_waits_outside_conch(self) -> None:
        """
        A packet arriving a byte at a time waits in the transport's queue:
        Conch's buffer (which it copies whole on every read) holds at most
        the first cipher block until the packet is complete.
        """
        clock = Clock()
        factory = GatewaySSHFactory(Portal(Realm()), ed25519_host_keys(), clock)
        proto = factory.buildProtocol(TransportClockTests.PEER)
        proto.makeConnection(StringTransport(peerAddress=TransportClockTests.PEER))
        proto.dataReceived(b"SSH-2.0-cosgwtest\r\n")
        payload, packet = kexinit_packet()
        sizes = set()
        for i in range(len(packet) - 1):
            proto.dataReceived(packet[i : i + 1])
            sizes.add(len(proto.buf))
        self.assertEqual(sizes, {0, 8})
        self.assertIsNone(getattr(proto, "otherKexInitPayload", None))
        proto.dataReceived(packet[-1:])
        self.assertEqual(proto.otherKexInitPayload, payload)
        proto.connectionLost(Failure(ConnectionDone()))


class PacketLimitTests(SSHServerMixin, TestCase):
    @defer.inlineCallbacks
    def test_oversized_packet_disconnected(self) -> Any:
        """
        A packet declaring 300,000 bytes (OpenSSH's limit is 256 KiB, Conch's
        1 MiB) is refused as soon as its length is in, not buffered.
        """
        port = self.start_server()
        header = struct.pack(">IB", 300_000, 4) + bytes(1000)
        seen = yield self.in_thread(raw_server_packets, port, after_kexinit=header)
        self.assertTrue(seen["closed"])
        self.assertEqual(
            parse_disconnect(seen["packets"][-1]),
            (2, "bad packet length 300000 (the limit is 262144)"),
        )
        self.assertIn("disconnected: code 2, bad packet length 300000", self.log_text())


class SocketTests(SSHServerMixin, TestCase):
    @defer.inlineCallbacks
    def test_no_delay(self) -> Any:
        """
        The SSH connection's socket sends without Nagle's delay: a WRITE's
        short STATUS reply otherwise waited for the client's delayed ACK of
        the previous one, and uploads stalled.
        """
        port = self.start_server()
        client = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.addCleanup(client.close)
        yield self.wait_until(lambda: bool(self.factory.transports))
        handle = self.factory.transports[0].transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
