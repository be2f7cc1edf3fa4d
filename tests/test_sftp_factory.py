"""
Tests for L{cosgw.frontends.sftp.factory}: what the factory refuses, the
group-exchange primes it reads, and ending every open connection.
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric import dsa
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cosgw.auth.realm import Realm
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from tests.sshtesting import (
    CLIENT_TIMEOUT,
    NO_OPENSSH,
    PASSWORD,
    USER,
    SSHServerMixin,
    host_keys,
    paramiko_transport,
    parse_disconnect,
    raw_server_packets,
    temporary_directory,
    wait_inactive,
)


class FactoryTests(SynchronousTestCase):
    def test_refusals(self) -> None:
        portal = Portal(Realm())
        self.assertRaises(ValueError, GatewaySSHFactory, portal, {}, reactor)
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, host_keys(), reactor, login_timeout=0
        )
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, host_keys(), reactor, idle_timeout=-1
        )
        public = {b"ssh-ed25519": host_keys()[b"ssh-ed25519"].public()}
        self.assertRaises(ValueError, GatewaySSHFactory, portal, public, reactor)
        dss = keys.Key(dsa.generate_private_key(key_size=1024))
        self.assertRaises(
            ValueError, GatewaySSHFactory, portal, {b"ssh-dss": dss}, reactor
        )

    def test_no_moduli_no_group_exchange(self) -> None:
        class Factory(GatewaySSHFactory):
            moduli_path = temporary_directory(self) / "moduli"

        self.assertIsNone(Factory(Portal(Realm()), host_keys(), reactor).primes)

    def test_small_moduli_dropped(self) -> None:
        path = temporary_directory(self) / "moduli"
        path.write_text("20240101000000 2 6 100 1023 2 " + "F" * 256 + "\n")

        class Factory(GatewaySSHFactory):
            moduli_path = path

        self.assertIsNone(Factory(Portal(Realm()), host_keys(), reactor).primes)


class DisconnectAllTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_disconnect_all(self) -> Any:
        """
        Every open connection, logged in or not, gets a DISCONNECT; the
        Deferred fires once all are gone.
        """
        port = self.start_server(login_timeout=30)
        ready = threading.Event()
        release = threading.Event()

        def session() -> bool:
            with paramiko_transport(port) as t:
                t.auth_password(USER, PASSWORD, fallback=False)
                ready.set()
                release.wait(CLIENT_TIMEOUT)
                return wait_inactive(t, CLIENT_TIMEOUT)

        logged_in = self.in_thread(session)
        unauthenticated = self.in_thread(raw_server_packets, port)
        yield self.in_thread(ready.wait, CLIENT_TIMEOUT)
        yield self.wait_until(lambda: len(self.factory.connections) == 2)
        yield self.factory.disconnect_all("maintenance")
        release.set()
        self.assertEqual(self.factory.connections, set())
        self.assertTrue((yield logged_in))
        seen = yield unauthenticated
        self.assertEqual(parse_disconnect(seen["packets"][-1]), (11, "maintenance"))
        self.assertEqual(self.logouts, [USER])
