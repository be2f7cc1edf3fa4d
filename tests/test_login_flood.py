"""
A password flood from one address neither starves other addresses' logins
nor gets more passwords verified than the login defender counts
(L{cosgw.policy.defender}, L{cosgw.policy.turns}, the verification pool of
L{cosgw.auth.passwords}).

  - In process: 300 parallel wrong passwords from one address through the
    defender and the real L{PasswordChecker} (real scrypt in a real thread
    pool; the defender's delays on a test clock), while another address
    logs in.
  - End to end: 40 FTP connections from 127.0.0.2 send a wrong password at
    once while a client at 127.0.0.3 logs in with ftplib (all of 127/8 is
    the loopback on Linux, so each source address is another host to the
    gateway).
"""

from __future__ import annotations

import ftplib
import hashlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from cosgw.auth.passwords import PasswordChecker
from cosgw.policy.defender import LoginBanned, LoginDefender, TooManyLogins
from tests.authtesting import ALICE_PASSWORD, cached_hash
from tests.harness import PASSWORD, in_thread, start_gateway
from tests.logevents import LogEvents

ATTACKER = "192.0.2.66"
USER_IP = "198.51.100.7"


def _until(predicate: Callable[[], bool], bound: float = 20.0) -> Deferred[None]:
    """Fire once C{predicate()} holds (polled every 5 ms, at most C{bound} s)."""

    async def poll() -> None:
        deadline = time.monotonic() + bound
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await deferLater(reactor, 0.005, lambda: None)

    return Deferred.fromCoroutine(poll())


class InProcessFloodTests(TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=4, maxthreads=4, name="test-flood")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        users = {"alice": (cached_hash(ALICE_PASSWORD), True)}
        # As makeService builds it: the defender delays failures.
        self.checker = PasswordChecker(users, reactor, self.pool, failure_delay=0)
        self.clock = Clock()
        self.defender = LoginDefender(self.clock, max_failures=10)
        self.kdfs: list[str] = []
        scrypt = hashlib.scrypt
        lock = threading.Lock()

        def counting(password: bytes, **kwargs: Any) -> bytes:
            with lock:
                self.kdfs.append(threading.current_thread().name)
            return scrypt(password, **kwargs)

        self.patch(hashlib, "scrypt", counting)

    def login(self, ip: str, password: str) -> Deferred[Any]:
        credentials = UsernamePassword("alice", password)
        return self.defender.guard(
            ip, "alice", lambda: self.checker.requestAvatarId(credentials)
        )

    @inlineCallbacks
    def test_flood_from_one_address(self) -> Any:
        """
        300 parallel wrong passwords from one address: another address's
        right password is verified after at most the attacker's two
        in-flight verifications, and succeeds; the attacker gets at most
        max_failures + 1 = 11 passwords verified, each one counted, then
        its waiting attempts fail with L{LoginBanned} unverified, and
        beyond a queue of 64 with L{TooManyLogins} at once.
        """
        events = LogEvents(self, "cosgw.policy.defender")
        flood = [self.login(ATTACKER, f"guess-{n}") for n in range(300)]
        answered: list[None] = []
        for d in flood:
            d.addBoth(lambda result: answered.append(None) or result)
        self.assertEqual(self.defender.in_flight(ATTACKER), (2, 64))
        good = self.login(USER_IP, ALICE_PASSWORD)
        started = time.monotonic()
        self.assertEqual((yield good), "alice")
        self.assertLess(time.monotonic() - started, 10)
        self.assertLessEqual(len(self.kdfs), 3)

        # Let the flood run its course: verifications on the pool, the
        # defender's delays on the test clock.
        for _ in range(500):
            if len(answered) == len(flood):
                break
            if self.defender.in_flight(ATTACKER)[0]:
                yield _until(lambda: not self.defender.in_flight(ATTACKER)[0])
            elif self.clock.getDelayedCalls():
                times = [c.getTime() for c in self.clock.getDelayedCalls()]
                self.clock.advance(min(times) - self.clock.seconds())
        outcomes = [self.failureResultOf(d, UnauthorizedLogin) for d in flood]
        kinds = [type(f.value).__name__ for f in outcomes]
        verified = kinds.count("UnauthorizedLogin")
        self.assertEqual(kinds.count("TooManyLogins"), 300 - 66)
        self.assertEqual(kinds.count("LoginBanned"), 66 - verified)
        self.assertTrue(10 <= verified <= 11, kinds)
        # Every verification is counted: the good login's, the flood's.
        self.assertEqual(len(self.kdfs), 1 + verified)
        counted = [
            e for e in events.events if e["log_format"].startswith("Login failed")
        ]
        self.assertEqual(len(counted), verified)
        self.assertGreater(self.defender.banned(ATTACKER), 0)
        self.assertEqual(self.defender.in_flight(ATTACKER), (0, 0))
        self.assertIsInstance(outcomes[-1].value, TooManyLogins)
        self.assertIsInstance(outcomes[65].value, LoginBanned)


def _recv_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


class FTPFloodTests(TestCase):
    @inlineCallbacks
    def test_flood_does_not_block_another_address(self) -> Any:
        """
        40 connections from 127.0.0.2 send a wrong PASS at once; 127.0.0.3
        logs in promptly meanwhile.  At most 11 wrong passwords are
        verified (each answered 530); every other attempt gets C{421} with
        the ban.
        """
        gw = yield start_gateway(
            self,
            "local",
            login_failure_delay=0.05,
            login_max_failures=10,
            login_ban_time=60,
        )
        checker_log = LogEvents(self, "cosgw.auth")

        def flood() -> list[socket.socket]:
            socks = []
            for _ in range(40):
                s = socket.create_connection(
                    (gw.host, gw.port), timeout=20, source_address=("127.0.0.2", 0)
                )
                socks.append(s)
                assert _recv_line(s).startswith("220")
                s.sendall(b"USER alice\r\n")
                assert _recv_line(s).startswith("331")
            for s in socks:
                s.sendall(b"PASS wrong\r\n")
            return socks

        def good_login() -> tuple[str, float]:
            started = time.monotonic()
            ftp = ftplib.FTP(source_address=("127.0.0.3", 0))
            ftp.connect(gw.host, gw.port, timeout=20)
            reply = ftp.login("alice", PASSWORD)
            ftp.quit()
            return reply, time.monotonic() - started

        def replies(socks: list[socket.socket]) -> list[str]:
            out = [_recv_line(s) for s in socks]
            for s in socks:
                s.close()
            return out

        socks = yield in_thread(flood)
        reply, seconds = yield in_thread(good_login)
        self.assertEqual(reply, "230 Login successful")
        self.assertLess(seconds, 5)
        answers = yield in_thread(replies, socks)
        wrong = [a for a in answers if a == "530 Login incorrect"]
        banned = [a for a in answers if a.startswith("421 Too many failed logins")]
        self.assertEqual(len(wrong) + len(banned), 40, answers)
        self.assertTrue(10 <= len(wrong) <= 11, answers)
        verified = [
            e for e in checker_log.events if e.get("reason") == "wrong password"
        ]
        self.assertEqual(len(verified), len(wrong))
