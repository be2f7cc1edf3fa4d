"""
Tests for what a password login costs in L{cosgw.auth.passwords}: every
password tried costs one key derivation with the same parameters whatever
the account (unknown, plain text, hashed, unusable), so names cannot be
told apart by timing; a verification the client abandons keeps its place
in the pool until its thread is done.

The key derivations are counted by wrapping C{hashlib.scrypt} and
C{hashlib.pbkdf2_hmac} (the standard library, not the code under test),
over a real thread pool and the real reactor.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from cosgw.auth.passwords import PasswordChecker
from tests.authtesting import ALICE_PASSWORD, PLAIN_PASSWORD, cached_hash, pbkdf2_hash

#: A password whose UTF-8 bytes, decoded as latin-1 the way Twisted's FTP
#: does, give two candidate texts: two derivations whatever the account.
TWO_CANDIDATES = "jösé-wrong".encode().decode("latin-1")


class _KDFs:
    """Records each key derivation's parameters, from any thread."""

    def __init__(self, testcase: TestCase) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        #: Derivations start only while this is set (a test clears it to
        #: hold one in its thread).
        self.gate = threading.Event()
        self.gate.set()
        scrypt, pbkdf2 = hashlib.scrypt, hashlib.pbkdf2_hmac

        def counting_scrypt(password: bytes, **kwargs: Any) -> bytes:
            self._record(("scrypt", kwargs["n"], kwargs["r"], kwargs["p"]))
            return scrypt(password, **kwargs)

        def counting_pbkdf2(name: str, password: bytes, *args: Any) -> bytes:
            self._record(("pbkdf2", name, args[1]))
            return pbkdf2(name, password, *args)

        testcase.patch(hashlib, "scrypt", counting_scrypt)
        testcase.patch(hashlib, "pbkdf2_hmac", counting_pbkdf2)

    def _record(self, call: tuple[Any, ...]) -> None:
        with self._lock:
            self.calls.append(call)
        self.gate.wait(30)

    def take(self) -> list[tuple[Any, ...]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


class CostTests(TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPool(minthreads=2, maxthreads=2, name="test-auth-cost")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.users = {
            "alice": (cached_hash(ALICE_PASSWORD), True),
            "bob": (PLAIN_PASSWORD, False),
            "carol": ("$md5$not$a$supported-hash", True),
            "dave": (pbkdf2_hash("x", iterations=1000), True),
        }
        self.kdfs = _KDFs(self)

    def checker(self, **kwargs: Any) -> PasswordChecker:
        return PasswordChecker(
            self.users, reactor, self.pool, failure_delay=0, **kwargs
        )

    @inlineCallbacks
    def cost(self, checker: PasswordChecker, name: str, password: str) -> Any:
        """The derivations of one login, and whether it succeeded."""
        self.kdfs.take()
        try:
            yield checker.requestAvatarId(UsernamePassword(name, password))
            ok = True
        except UnauthorizedLogin:
            ok = False
        return ok, self.kdfs.take()

    @inlineCallbacks
    def test_every_account_costs_the_same(self) -> Any:
        """
        An unknown user, a plain-text (V5) account, a hashed one and one
        whose hash cannot be used: each password tried costs one scrypt
        with the default parameters, for one candidate text and for two.
        """
        checker = self.checker()
        one = [("scrypt", 16384, 8, 1)]
        for password, expected in [("wrong", one), (TWO_CANDIDATES, one * 2)]:
            for name in ["mallory", "bob", "alice", "carol"]:
                ok, calls = yield self.cost(checker, name, password)
                self.assertEqual((ok, calls), (False, expected), (name, password))
        for name, password in [("alice", ALICE_PASSWORD), ("bob", PLAIN_PASSWORD)]:
            ok, calls = yield self.cost(checker, name, password)
            self.assertEqual((ok, calls), (True, one), name)

    @inlineCallbacks
    def test_other_parameters_cost_their_own(self) -> Any:
        """A hash made elsewhere costs what its parameters say (documented)."""
        ok, calls = yield self.cost(self.checker(), "dave", "wrong")
        self.assertEqual((ok, calls), (False, [("pbkdf2", "sha256", 1000)]))

    @inlineCallbacks
    def test_abandoned_verification_keeps_its_place(self) -> Any:
        """
        With one verification at a time: cancelling the one in the pool
        fails it at once, but the next does not start until the first's
        thread is done; cancelling a waiting one removes it unverified.
        """
        checker = self.checker(max_concurrent=1)
        self.kdfs.take()  # the dummy hash, made once per process
        self.kdfs.gate.clear()  # derivations wait
        first = checker.requestAvatarId(UsernamePassword("alice", "wrong"))
        yield _until(lambda: len(self.kdfs.calls) == 1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        second = checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        third = checker.requestAvatarId(UsernamePassword("bob", "wrong"))
        semaphore = checker._semaphore
        self.assertEqual((semaphore.tokens, len(semaphore.waiting)), (0, 2))
        third.cancel()
        self.failureResultOf(third, CancelledError)
        self.assertEqual(len(semaphore.waiting), 1)
        self.kdfs.gate.set()
        self.assertEqual((yield second), "alice")
        self.assertEqual(len(self.kdfs.take()), 2)  # first's and second's
        self.assertEqual(semaphore.tokens, 1)

    @inlineCallbacks
    def test_user_names_are_logged_escaped(self) -> Any:
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        forged = "eve\nLogin succeeded for user root"
        yield self.cost(self.checker(), forged, "x")
        [event] = [e for e in events if e.get("user") is not None]
        self.assertEqual(event["user"], "eve\\nLogin succeeded for user root")
        self.assertNotIn("\n", formatEvent(event))


def _until(predicate: Any, bound: float = 10.0) -> Deferred[None]:
    """Fire once C{predicate()} holds (polled every 10 ms, at most C{bound} s)."""

    async def poll() -> None:
        for _ in range(int(bound / 0.01)):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition not met in time")

    return Deferred.fromCoroutine(poll())
