"""
The shared state's scripts and leases (L{cosgw.policy.shared}) against a
real redis-server: two L{SharedStore}s model two replicas, each with its
own clock (L{twisted.internet.task.Clock}), so that leases, windows and
bans expire when the test says, not when time passes.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from cosgw.frontends.ftp.tls import generate_self_signed
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits, SessionLimits
from cosgw.policy.shared import ReplicaCounts, SharedBans, SharedStore
from cosgw.policy.shared.connection import (
    RedisURL,
    SharedStateUnavailable,
    parse_url,
)
from cosgw.policy.shared.keys import Keys, quota_id
from tests.clitesting import PASSWORD, cosgw, write_config
from tests.daemons import REDIS_SERVER, RedisServer
from tests.logevents import LogEvents
from tests.processtesting import Child, free_port


async def connected(store: SharedStore, bound: float = 10.0) -> None:
    """Wait (bounded) until C{store} has its connection to Redis."""
    for _ in range(int(bound / 0.02)):
        if store.connected and store.up:
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"no connection to Redis at {store.where}")


class Replicas(unittest.TestCase):
    """Two replicas' stores on one Redis, each with its own clock."""

    def setUp(self) -> Any:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-redis-"))
        self.redis = RedisServer(self, directory)
        self.clocks = [Clock(), Clock()]
        for clock in self.clocks:
            clock.advance(1_000_000)
        self.stores = [
            self.replica(name, clock) for name, clock in zip("ab", self.clocks)
        ]
        return defer.gatherResults(
            [defer.Deferred.fromCoroutine(connected(s)) for s in self.stores]
        )

    def replica(self, name: str, clock: Clock, **options: Any) -> SharedStore:
        settings: dict[str, Any] = {"timeout": 2.0, "lease": 10.0, "heartbeat": 3.0}
        settings.update(options)
        store = SharedStore(
            self.redis.url, reactor, clock=clock, replica=name, prefix="t:", **settings
        )
        store.startService()
        self.addCleanup(lambda: store.running and store.stopService())
        return store

    def settled(self) -> Any:
        """Every call made so far has its answer (one connection: in order)."""
        return defer.gatherResults(
            [s.call(_PING, [], []) for s in self.stores if s.running]
        )


class KeyTests(unittest.TestCase):
    def test_layout(self) -> None:
        keys = Keys("cosgw:", "r1")
        self.assertEqual(keys.registry, "cosgw:replicas")
        self.assertEqual(keys.own, "cosgw:replica:r1")
        self.assertEqual(keys.failures("192.0.2.1"), "cosgw:failures:192.0.2.1")
        self.assertEqual(keys.ban("2001:db8::/64"), "cosgw:ban:2001:db8::/64")
        self.assertEqual(keys.quota("q"), "cosgw:quota:q")
        self.assertEqual(quota_id("s", "a/"), quota_id("s", "a/"))
        self.assertNotEqual(quota_id("s", "a/"), quota_id("s", "b/"))

    def test_url(self) -> None:
        self.assertEqual(
            parse_url("redis://h:6390/2"), RedisURL("h", 6390, 2, None, None, False)
        )
        tls = parse_url("rediss://gw:p%40ss@h")
        self.assertEqual(tls, RedisURL("h", 6379, 0, "gw", "p@ss", True))
        self.assertEqual(tls.where, "h:6379/0 (TLS)")


class CountTests(Replicas):
    @defer.inlineCallbacks
    def test_limit_across_replicas(self) -> Any:
        """
        A user limited to 2 sessions: one on each replica, then a third on
        either is refused (and not counted); a logout makes room.
        """
        a, b = (SessionLimits() for _ in range(2))
        a.shared, b.shared = (ReplicaCounts(s) for s in self.stores)
        self.assertIsNone((yield a.login_everywhere("alice", 2)))
        self.assertIsNone((yield b.login_everywhere("alice", 2)))
        refused = yield b.login_everywhere("alice", 2)
        self.assertEqual(refused, "too many sessions for alice (2); try again later")
        self.assertEqual((a.count("alice"), b.count("alice")), (1, 1))
        a.logout("alice")
        yield self.settled()
        self.assertIsNone((yield b.login_everywhere("alice", 2)))
        self.assertEqual(b.count("alice"), 2)

    @defer.inlineCallbacks
    def test_crashed_replica_expires(self) -> Any:
        """
        Replica a holds 2 sessions and stops renewing its lease (its clock
        stands still, as a crashed process's would): b is refused until
        b's clock passes a's lease, then admitted.
        """
        a, b = (SessionLimits() for _ in range(2))
        a.shared, b.shared = (ReplicaCounts(s) for s in self.stores)
        for _ in range(2):
            self.assertIsNone((yield a.login_everywhere("alice", 2)))
        self.assertIsNotNone((yield b.login_everywhere("alice", 2)))
        self.clocks[1].advance(9.9)
        self.assertIsNotNone((yield b.login_everywhere("alice", 2)))
        self.clocks[1].advance(0.2)
        self.assertIsNone((yield b.login_everywhere("alice", 2)))

    @defer.inlineCallbacks
    def test_heartbeat_keeps_lease(self) -> Any:
        """A replica whose heartbeat runs keeps its counts past a lease."""
        a, b = (SessionLimits() for _ in range(2))
        a.shared, b.shared = (ReplicaCounts(s) for s in self.stores)
        self.assertIsNone((yield a.login_everywhere("alice", 1)))
        for _ in range(5):
            for clock in self.clocks:
                clock.advance(3.0)  # the heartbeat's interval
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone((yield b.login_everywhere("alice", 1)))

    @defer.inlineCallbacks
    def test_stop_releases(self) -> Any:
        """A replica that stops leaves at once: its counts no longer count."""
        a, b = (SessionLimits() for _ in range(2))
        a.shared, b.shared = (ReplicaCounts(s) for s in self.stores)
        self.assertIsNone((yield a.login_everywhere("alice", 1)))
        self.assertIsNotNone((yield b.login_everywhere("alice", 1)))
        logged = LogEvents(self, "cosgw.policy.shared")
        yield self.stores[0].stopService()
        self.assertIsNone((yield b.login_everywhere("alice", 1)))
        # Leaving is no outage: nothing says Redis cannot be reached.
        self.assertEqual(logged.at(LogLevel.warn) + logged.at(LogLevel.error), [])

    @defer.inlineCallbacks
    def test_connections(self) -> Any:
        """
        Per address and in total, across replicas: the connection the
        cluster refuses is told why through its refuse callable.
        """
        a = ConnectionLimits(max_total=3, max_per_ip=2)
        b = ConnectionLimits(max_total=3, max_per_ip=2)
        a.shared, b.shared = (ReplicaCounts(s) for s in self.stores)
        told: list[str] = []
        self.assertIsNone(a.open("192.0.2.1", told.append))
        self.assertIsNone(b.open("192.0.2.1", told.append))
        self.assertIsNone(b.open("::ffff:192.0.2.1", told.append))
        yield self.settled()
        self.assertEqual(told, ["too many connections from your address (2)"])
        b.close("192.0.2.1")  # the refused one ends
        self.assertIsNone(b.open("192.0.2.2", told.append))
        yield self.settled()
        self.assertIsNone(a.open("192.0.2.3", told.append))
        yield self.settled()
        self.assertEqual(told[1:], ["too many connections (3), try again later"])


class BanTests(Replicas):
    @defer.inlineCallbacks
    def test_failures_add_up(self) -> Any:
        """
        max_failures = 3: two failures on a, one on b ban the address on
        both; b's defender holds the ban as soon as it asked.
        """
        defenders = [
            LoginDefender(clock, max_failures=3, window=60, ban_time=100, base_delay=0)
            for clock in self.clocks
        ]
        bans = [SharedBans(s, d) for s, d in zip(self.stores, defenders)]
        for d, shared in zip(defenders, bans):
            d.shared = shared
        yield bans[0].failed("192.0.2.9", "192.0.2.9", "alice")
        yield bans[0].failed("192.0.2.9", "192.0.2.9", "alice")
        self.assertEqual((yield bans[1].banned("192.0.2.9")), 0.0)
        yield bans[1].failed("192.0.2.9", "192.0.2.9", "mallory")
        self.assertEqual(defenders[1].banned("192.0.2.9"), 100.0)
        self.assertEqual(defenders[1].bans, 1)
        self.assertEqual((yield bans[0].banned("192.0.2.9")), 100.0)
        self.clocks[0].advance(40)
        self.assertEqual((yield bans[0].banned("192.0.2.9")), 60.0)
        self.clocks[0].advance(61)
        self.assertEqual((yield bans[0].banned("192.0.2.9")), 0.0)

    @defer.inlineCallbacks
    def test_bans_put_back_after_a_redis_restart(self) -> Any:
        """
        Redis restarted empty (no persistence) forgets the ban a earned; a
        puts back the bans it holds when it reconnects, so b still refuses
        the address, with the time a had left.
        """
        defender = LoginDefender(
            self.clocks[0], max_failures=1, window=60, ban_time=100, base_delay=0
        )
        defender.shared = SharedBans(self.stores[0], defender)
        yield defender.shared.failed("192.0.2.7", "192.0.2.7", "alice")
        for clock in self.clocks:
            clock.advance(30)
        self.redis.stop()
        for _ in range(200):
            if not any(store.connected for store in self.stores):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.redis.start()
        for store in self.stores:
            yield defer.Deferred.fromCoroutine(connected(store, 15))
        other = SharedBans(self.stores[1], LoginDefender(self.clocks[1]))
        left = 0.0
        for _ in range(100):  # a's republication may follow b's reconnection
            left = yield other.banned("192.0.2.7")
            if left:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(left, 70.0)

    @defer.inlineCallbacks
    def test_window(self) -> Any:
        """Failures older than the window no longer count."""
        defender = LoginDefender(
            self.clocks[0], max_failures=2, window=10, base_delay=0
        )
        shared = SharedBans(self.stores[0], defender)
        yield shared.failed("192.0.2.8", "192.0.2.8", "alice")
        self.clocks[0].advance(11)
        yield shared.failed("192.0.2.8", "192.0.2.8", "alice")
        self.assertEqual((yield shared.banned("192.0.2.8")), 0.0)
        yield shared.failed("192.0.2.8", "192.0.2.8", "alice")
        self.assertGreater((yield shared.banned("192.0.2.8")), 0.0)


class OutageTests(Replicas):
    @defer.inlineCallbacks
    def test_down_fails_fast(self) -> Any:
        """
        Redis stopped: a call fails with SharedStateUnavailable at once (or
        within the timeout), a closed store refuses a session with
        UNAVAILABLE, an open one counts it here alone; back, it republishes.
        """
        self.redis.stop()
        store = self.stores[0]
        with self.assertRaises(SharedStateUnavailable):
            yield store.call(_PING, [], [])
        self.assertFalse(store.up)
        closed = self.replica("c", self.clocks[0], failure="closed")
        limits = SessionLimits()
        limits.shared = ReplicaCounts(closed)
        refused = yield limits.login_everywhere("alice", 1)
        self.assertEqual(refused, "service temporarily unavailable, try again later")
        self.assertEqual(limits.count("alice"), 0)
        opened = SessionLimits()
        opened.shared = ReplicaCounts(store)
        self.assertIsNone((yield opened.login_everywhere("alice", 1)))
        self.assertGreaterEqual(store.fallbacks, 1)
        self.redis.start()
        yield defer.Deferred.fromCoroutine(connected(store, 15))
        other = SessionLimits()
        other.shared = ReplicaCounts(self.stores[1])
        yield defer.Deferred.fromCoroutine(connected(self.stores[1], 15))
        # a's session was republished when a reconnected.
        for _ in range(100):
            refused = yield other.login_everywhere("alice", 1)
            if refused is not None:
                break
            other.logout("alice")
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(refused, "too many sessions for alice (1); try again later")


class SlowRedisTests(Replicas):
    @defer.inlineCallbacks
    def test_a_paused_redis_costs_a_timeout_not_a_stall(self) -> Any:
        """
        Redis stops answering (CLIENT PAUSE, as under a long fork or a
        slow disk): a call fails with SharedStateUnavailable after the
        timeout, the reactor keeps turning meanwhile, and the next call
        fails at once (the connection was dropped) instead of waiting again.
        """
        store = self.replica("slow", self.clocks[0], timeout=0.3)
        yield defer.Deferred.fromCoroutine(connected(store))
        with socket.create_connection(("127.0.0.1", self.redis.port), 10) as admin:
            admin.sendall(b"CLIENT PAUSE 1200 ALL\r\n")
            self.assertEqual(admin.recv(64), b"+OK\r\n")
        ticks: list[float] = []
        ticking = LoopingCall(lambda: ticks.append(reactor.seconds()))
        ticking.start(0.05)
        self.addCleanup(lambda: ticking.running and ticking.stop())
        started = reactor.seconds()
        with self.assertRaises(SharedStateUnavailable):
            yield store.call(_PING, [], [])
        waited = reactor.seconds() - started
        self.assertGreaterEqual(waited, 0.3)
        self.assertLess(waited, 1.5)
        self.assertGreaterEqual(len(ticks), 4)
        started = reactor.seconds()
        with self.assertRaises(SharedStateUnavailable):
            yield store.call(_PING, [], [])
        self.assertLess(reactor.seconds() - started, 0.2)
        self.assertFalse(store.up)


class CredentialTests(unittest.TestCase):
    """
    C{redis://user:password@...}: Redis's ACL user and password, a wrong
    password logged (without it) and retried until Redis takes it, and
    C{cosgw check-config --probe}'s one line, over TCP and TLS.
    """

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cosgw-redis-"))
        self.redis = RedisServer(self, self.directory)
        self.admin = socket.create_connection(("127.0.0.1", self.redis.port), 10)
        self.addCleanup(self.admin.close)
        self.command("ACL SETUSER gw on >gw-s3cret ~* +@all")
        self.command("CONFIG SET requirepass old-s3cret")

    def command(self, line: str) -> None:
        """One command on the admin connection (authenticated before)."""
        self.admin.sendall(line.encode() + b"\r\n")
        self.assertEqual(self.admin.recv(64), b"+OK\r\n")

    def url(self, credentials: str) -> str:
        return f"redis://{credentials}@127.0.0.1:{self.redis.port}/0"

    @defer.inlineCallbacks
    def test_user_and_wrong_password(self) -> Any:
        logged = LogEvents(self, "cosgw.policy.shared")
        stores = []
        for name, credentials in (("a", "gw:gw-s3cret"), ("b", ":new-s3cret")):
            store = SharedStore(self.url(credentials), reactor, replica=name)
            store.startService()
            self.addCleanup(lambda s=store: s.running and s.stopService())
            stores.append(store)
        yield defer.Deferred.fromCoroutine(connected(stores[0]))
        self.assertEqual((yield stores[0].call(_PING, [], [])), 1)
        # The admin connection, gw's, then twice the wrong password.
        for _ in range(100):
            if self.connections() >= 4:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(stores[1].connected)
        self.command("CONFIG SET requirepass new-s3cret")
        yield defer.Deferred.fromCoroutine(connected(stores[1]))
        errors = [formatEvent(e) for e in logged.at(LogLevel.error)]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("could not auth: WRONGPASS", errors[0])
        lines = [formatEvent(e) for e in logged.events]
        self.assertFalse([line for line in lines if "s3cret" in line], lines)

    def connections(self) -> int:
        """Connections Redis has taken since it started (INFO stats)."""
        self.admin.sendall(b"INFO stats\r\n")
        header = b""
        while not header.endswith(b"\r\n"):
            header += self.admin.recv(1)
        body = b""
        while len(body) < int(header[1:]) + 2:
            body += self.admin.recv(65536)
        [line] = [x for x in body.split() if x.startswith(b"total_connections")]
        return int(line.partition(b":")[2])

    def test_probe(self) -> None:
        """
        check-config shows the shared state without its password; --probe
        connects once (TLS, AUTH, SELECT) and says what answered, or why
        not (exit 2).
        """
        cert, key = generate_self_signed(self.directory / "tls")
        tls_port = free_port()
        tls = Child(
            self,
            [
                REDIS_SERVER, "--port", "0", "--tls-port", str(tls_port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-auth-clients", "no", "--requirepass", "tls-s3cret",
            ],
            self.directory,
            name="redis-tls",
        )  # fmt: skip
        tls.wait_for_port(tls_port)
        cases = [
            (self.url("gw:gw-s3cret"), 0, "OK", "answered"),
            (self.url(":wrong-s3cret"), 2, "FAILED", "could not auth: WRONGPASS"),
            (
                f"rediss://:tls-s3cret@localhost:{tls_port}/0",
                0,
                "OK",
                f"at localhost:{tls_port}/0 (TLS) answered",
            ),
        ]
        for url, code, state, detail in cases:
            path = write_config(
                self.directory,
                f"[server]\nshared_state = {url}\n[storage:files]\ntype = local\n"
                f"path = data\n[user:u]\npassword = {PASSWORD}\nstorage = files\n",
            )
            result = cosgw(
                "check-config", str(path), "--probe", "--timeout", "5",
                env={"SSL_CERT_FILE": str(cert)},
            )  # fmt: skip
            self.assertEqual(result.returncode, code, result.stdout + result.stderr)
            self.assertNotIn("s3cret", result.stdout + result.stderr)
            lines = result.stdout.splitlines()
            self.assertIn("shared state:", lines)
            probed = lines[lines.index("probe:") + 1]
            self.assertIn(f"shared state: {state}", probed)
            self.assertIn(detail, probed)


class _Ping:
    name = "ping"
    text = "return 1"


_PING: Any = _Ping()
