"""
Tests for L{cosgw.frontends.ftp.service.FTPFrontend}: built from the config
and the shared parts it is given, complete at construction (its factories
hold what they were given, nothing is set afterwards), the server's TLS,
and the user's file system as the FTP avatar.  Listening is on a
L{MemoryReactorClock}; the users' file systems are on a
L{cosgw.testing.MemoryStore}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.logger import formatEvent

from cosgw.auth.realm import Realm
from cosgw.config import (
    ALL_PERMISSIONS,
    ConfigError,
    UserConfig,
)
from cosgw.frontends.ftp.service import FTPFrontend
from cosgw.interfaces import IFileSystem
from cosgw.policy.accounts import LoginRefused
from tests.frontendtesting import FrontendTestCase
from tests.logevents import LogEvents

PEER = IPv4Address("TCP", "192.0.2.7", 50000)
PLAIN = ("tcp:2121:interface=127.0.0.1", "tcp:2122:interface=127.0.0.1")
IMPLICIT = ("tcp:990:interface=127.0.0.1",)


def user(name: str, **overrides: Any) -> UserConfig:
    return UserConfig(
        name=name,
        password=None,
        password_is_hashed=False,
        storage="store",
        home="",
        permissions=ALL_PERMISSIONS,
        **overrides,
    )


class FTPFrontendTests(FrontendTestCase):
    def build(self, **server: Any) -> FTPFrontend:
        settings: dict[str, Any] = {
            "ftp_listen": PLAIN,
            "ftps_listen": IMPLICIT,
            "login_timeout": 30,
            "idle_timeout": 90,
            "data_timeout": 45,
            "passive_ports": (50000, 50009),
            "masquerade_address": "203.0.113.5",
            "tls_required": True,
            "tls_session_reuse": True,
            **server,
        }
        users = {
            "alice": user("alice", tls_data_required=True),
            "bob": user("bob", tls_required=False),
        }
        return FTPFrontend(self.config(settings, users), self.parts())

    def test_complete_at_construction(self) -> None:
        frontend = self.build()
        for factory in (frontend.factory, frontend.implicit_factory):
            self.assertIs(factory.portal, self.portal)
            self.assertIs(factory.reactor, self.reactor)
            self.assertIs(factory.limits, self.limits)
            self.assertIs(factory.defender, self.defender)
            self.assertIs(factory.tls, frontend.tls)
            self.assertEqual(
                (factory.login_timeout, factory.timeOut, factory.stall_timeout),
                (30, 90, 45),
            )
            # The wait for a data connection and its handshake: at most 30 s.
            self.assertEqual(factory.data_timeout, 30)
            self.assertIs(factory.data_connections, frontend.data_connections)
            self.assertEqual(factory.passive_ports, (50000, 50009))
            self.assertEqual(factory.masquerade_address, "203.0.113.5")
            self.assertTrue(factory.tls_session_reuse)
            self.assertFalse(factory.trace_commands)
            self.assertEqual(factory.tls_policy("alice"), (True, True))
            self.assertEqual(factory.tls_policy("bob"), (False, False))
            self.assertEqual(factory.tls_policy("carol"), (True, False))
        self.assertFalse(frontend.factory.implicit)
        self.assertTrue(frontend.implicit_factory.implicit)
        self.assertEqual([x.description for x in frontend.listeners], list(PLAIN))
        self.assertEqual(
            [x.description for x in frontend.implicit_listeners], list(IMPLICIT)
        )
        self.assertEqual(
            list(frontend), frontend.listeners + frontend.implicit_listeners
        )
        for listener in frontend.listeners:
            self.assertIs(listener.factory, frontend.factory)
        (implicit,) = frontend.implicit_listeners
        self.assertIs(implicit.factory.wrappedFactory, frontend.implicit_factory)

    def test_short_data_timeout_bounds_the_data_connection_wait(self) -> None:
        frontend = self.build(data_timeout=7)
        for factory in (frontend.factory, frontend.implicit_factory):
            self.assertEqual((factory.stall_timeout, factory.data_timeout), (7, 7))

    def test_debug_traces_commands(self) -> None:
        frontend = self.build(log_level="debug")
        self.assertTrue(frontend.factory.trace_commands)
        self.assertTrue(frontend.implicit_factory.trace_commands)

    def test_listens_where_configured(self) -> None:
        frontend = self.build()
        frontend.startService()
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(2121, "127.0.0.1"), (2122, "127.0.0.1"), (990, "127.0.0.1")],
        )
        ports = self.successResultOf(frontend.ready())
        self.assertEqual([p.getHost().port for p in ports], [2121, 2122])

    def test_avatar_is_the_file_system(self) -> None:
        """
        The realm answers IFileSystem with the user's file system; its
        logout gives the session back once.
        """
        self.build()
        interface, fs, logout = self.realm.requestAvatar("alice", PEER, IFileSystem)
        self.assertIs(interface, IFileSystem)
        self.assertTrue(IFileSystem.providedBy(fs))
        self.assertEqual(fs.user, "alice")
        self.assertEqual(self.accounts.sessions.count("alice"), 1)
        self.assertRaises(
            LoginRefused, self.realm.requestAvatar, "alice", PEER, IFileSystem
        )
        logout()
        logout()
        self.assertEqual(self.accounts.sessions.count("alice"), 0)

    def test_certificate_generated_and_logged(self) -> None:
        events = LogEvents(self, "cosgw.service")
        frontend = self.build()
        certificate = self.state / "tls-cert.pem"
        self.assertTrue(certificate.exists())
        self.assertEqual(
            [formatEvent(e) for e in events.events],
            [
                f"FTPS certificate {certificate}, SHA-256 fingerprint "
                f"{frontend.tls.fingerprint}"
            ],
        )
        self.realm = Realm()  # one frontend per realm
        again = self.build()
        self.assertEqual(again.tls.fingerprint, frontend.tls.fingerprint)

    def test_bad_certificate(self) -> None:
        junk = Path(self.state / "junk.pem")
        junk.write_text("hello\n")
        e = self.assertRaises(
            ConfigError, self.build, tls_certificate=junk, tls_key=junk
        )
        self.assertIn(str(junk), str(e))
