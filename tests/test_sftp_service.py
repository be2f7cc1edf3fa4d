"""
Tests for L{cosgw.frontends.sftp.service.SFTPFrontend}: built from the
config and the shared parts it is given, complete at construction (its SSH
factory holds the portal it was given, nothing is set afterwards), and
ending the open SSH sessions when it stops.  Listening is on a
L{MemoryReactorClock}; the users' file systems are on a
L{cosgw.testing.MemoryStore}.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.interfaces import IConchUser, ISFTPServer
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.logger import formatEvent

from cosgw.auth.keys import KeyChecker, fingerprint
from cosgw.config import (
    ConfigError,
)
from cosgw.frontends.sftp.server import GatewaySFTPServer
from cosgw.frontends.sftp.service import SFTPFrontend
from cosgw.frontends.sftp.session import SFTPUser
from cosgw.policy.accounts import LoginRefused
from tests.frontendtesting import FrontendTestCase
from tests.logevents import LogEvents
from tests.sshtesting import host_key_files, host_keys

PEER = IPv4Address("TCP", "192.0.2.7", 50000)
ENDPOINTS = ("tcp:2222:interface=127.0.0.1", "tcp:2223:interface=127.0.0.1")


class FakeConnection:
    """An open SSH transport as the factory keeps it."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[int, Any]] = []

    def sendDisconnect(self, reason: int, description: Any) -> None:
        self.disconnects.append((reason, description))

    def when_lost(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class SFTPFrontendTests(FrontendTestCase):
    checkers = (KeyChecker({}),)

    def build(self, **server: Any) -> SFTPFrontend:
        settings: dict[str, Any] = {
            "sftp_listen": ENDPOINTS,
            "ssh_host_keys": host_key_files(),
            "login_timeout": 30,
            "idle_timeout": 90,
            **server,
        }
        return SFTPFrontend(self.config(settings), self.parts())

    def test_complete_at_construction(self) -> None:
        frontend = self.build()
        factory = frontend.factory
        self.assertIs(factory.portal, self.portal)
        self.assertIs(factory.reactor, self.reactor)
        self.assertIs(factory.admission, self.limits)
        self.assertIs(factory.login_guard, self.defender)
        self.assertEqual((factory.login_timeout, factory.idle_timeout), (30, 90))
        self.assertEqual(set(factory.privateKeys), {b"ssh-ed25519", b"ssh-rsa"})
        self.assertEqual(
            [listener.description for listener in frontend.listeners], list(ENDPOINTS)
        )
        self.assertEqual(list(frontend), frontend.listeners)
        for listener in frontend.listeners:
            self.assertIs(listener.factory, factory)

    def test_listens_where_configured(self) -> None:
        frontend = self.build()
        frontend.startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(2222, "127.0.0.1"), (2223, "127.0.0.1")],
        )
        for listener in frontend.listeners:
            self.successResultOf(listener.listening)

    def test_avatar(self) -> None:
        """
        The realm answers IConchUser with the user's SFTP avatar, over their
        own file system; its logout gives the session back once.
        """
        frontend = self.build()
        interface, avatar, logout = self.realm.requestAvatar("alice", PEER, IConchUser)
        self.assertIs(interface, IConchUser)
        self.assertIsInstance(avatar, SFTPUser)
        server = ISFTPServer(avatar)
        self.assertIsInstance(server, GatewaySFTPServer)
        self.assertEqual(server.fs.user, "alice")
        self.assertEqual(server.settings.spool_dir, str(self.state / "spool"))
        self.assertIs(frontend.accounts, self.accounts)
        self.assertEqual(self.accounts.sessions.count("alice"), 1)
        self.assertRaises(
            LoginRefused, self.realm.requestAvatar, "alice", PEER, IConchUser
        )
        logout()
        logout()
        self.assertEqual(self.accounts.sessions.count("alice"), 0)

    def test_host_keys_logged(self) -> None:
        """Each host key's fingerprint is logged, as cosgw.service did."""
        events = LogEvents(self, "cosgw.service")
        self.build()
        self.assertEqual(
            sorted(formatEvent(e) for e in events.events),
            sorted(
                f"SSH host key {key.sshType().decode()}: {fingerprint(key)}"
                for key in host_keys().values()
            ),
        )

    def test_bad_host_key(self) -> None:
        path = self.state / "junk"
        path.write_text("hello\n")
        e = self.assertRaises(ConfigError, self.build, ssh_host_keys=(path,))
        self.assertIn(str(path), str(e))

    def test_stop_ends_sessions(self) -> None:
        """Stopping stops listening, then disconnects every open connection."""
        frontend = self.build()
        frontend.startService()
        connection = FakeConnection()
        frontend.factory.connections.add(connection)
        self.successResultOf(frontend.stopService())
        self.assertEqual(connection.disconnects, [(11, "server shutting down")])
        self.assertFalse(any(listener.running for listener in frontend.listeners))
