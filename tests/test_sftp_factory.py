"""
Tests for L{cosgw.frontends.sftp.factory}: what the factory refuses, the
groups group exchange hands out, and ending every open connection.
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric import dsa
from twisted.conch.ssh import _kex, keys
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

    def test_group_exchange_groups(self) -> None:
        """
        Group exchange hands out the RFC 3526 groups of 2048, 3072 and 4096
        bits (generator 2), whose arithmetic is cheap; a client asking for
        8192 bits, as OpenSSH does, gets 4096, paramiko's 2048 gets 2048.
        """
        factory = GatewaySSHFactory(Portal(Realm()), host_keys(), reactor)
        assert factory.primes is not None
        self.assertEqual(sorted(factory.primes), [2048, 3072, 4096])
        for bits, groups in factory.primes.items():
            self.assertEqual(groups, [(2, rfc3526_prime(bits))])
        self.assertEqual(factory.getDHPrime(8192), (2, rfc3526_prime(4096)))
        self.assertEqual(factory.getDHPrime(2048), (2, rfc3526_prime(2048)))
        self.assertEqual(
            rfc3526_prime(2048),
            _kex.getDHGeneratorAndPrime(b"diffie-hellman-group14-sha1")[1],
        )


def rfc3526_prime(bits: int) -> int:
    """
    The MODP prime of RFC 3526 from its definition, 2^n - 2^(n-64) - 1 +
    2^64 * (floor(2^(n-130) * pi) + k), with pi from Machin's formula in
    integers.
    """
    k = {2048: 124476, 3072: 1690314, 4096: 240904}[bits]
    guard = 64
    scale = 1 << (bits - 130 + guard)

    def arctan_inverse(x: int) -> int:
        total, term, n, sign = 0, scale // x, 1, 1
        while term:
            total += sign * (term // n)
            term //= x * x
            n += 2
            sign = -sign
        return total

    pi_scaled = 4 * (4 * arctan_inverse(5) - arctan_inverse(239))
    return 2**bits - 2 ** (bits - 64) - 1 + 2**64 * ((pi_scaled >> guard) + k)


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
