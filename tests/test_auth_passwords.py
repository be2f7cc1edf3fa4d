"""
Tests for L{cosgw.auth.passwords}: the password checker, over a real thread
pool and the real reactor, with a L{task.Clock} for the failure delay.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from cosgw.auth import passwords
from cosgw.auth.passwords import PasswordChecker, StoredPassword
from cosgw.auth.realm import Realm
from tests.authtesting import (
    ALICE_PASSWORD,
    JOSE_PASSWORD,
    PLAIN_PASSWORD,
    IFoo,
    assert_not_logged,
    cached_hash,
    logged_text,
    noop,
)


class StoredPasswordTests(TestCase):
    def test_is_a_tuple(self) -> None:
        stored, is_hashed = StoredPassword("x", False)
        self.assertEqual((stored, is_hashed), ("x", False))

    def test_repr_hides_the_password(self) -> None:
        self.assertNotIn("hunter2", repr(StoredPassword("hunter2", False)))
        self.assertNotIn("hunter2", repr({"u": StoredPassword("hunter2", False)}))


class PasswordCheckerTests(TestCase):
    """
    L{PasswordChecker} over a real one-thread pool and the real reactor.

    The pool has a single worker, so a job submitted after a login runs
    after that login's verification, and its result is delivered after the
    login's (callFromThread keeps order): L{settle} waits for it.
    """

    DELAY = 1.0

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="test-auth")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.clock = task.Clock()
        self.users = {
            "alice": StoredPassword(cached_hash(ALICE_PASSWORD), True),
            "josé": (cached_hash(JOSE_PASSWORD), True),
            "bob": (PLAIN_PASSWORD, False),
            "müller": ("pässword", False),
            "carol": ("$md5$not$a$supported-hash", True),
        }
        self.checker = self.make_checker(self.users)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def make_checker(self, users, **kwargs) -> PasswordChecker:
        return PasswordChecker(
            users,
            self.reactor,
            self.pool,
            clock=self.clock,
            failure_delay=self.DELAY,
            **kwargs,
        )

    def settle(self) -> Deferred[None]:
        """Fire once every verification submitted so far has been delivered."""
        return deferToThreadPool(self.reactor, self.pool, lambda: None)

    @inlineCallbacks
    def assert_fails_after_delay(self, credentials, checker=None):
        """The login fails with UnauthorizedLogin, and only after the delay."""
        checker = checker or self.checker
        d = checker.requestAvatarId(credentials)
        yield self.settle()
        self.assertNoResult(d)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(self.DELAY / 2)
        self.assertNoResult(d)
        self.clock.advance(self.DELAY / 2)
        # The error itself: a Failure returned would fail the Deferred.
        return self.failureResultOf(d, UnauthorizedLogin).value

    def assert_no_secret_logged(self) -> None:
        assert_not_logged(
            self,
            list(self.events),
            ALICE_PASSWORD,
            JOSE_PASSWORD,
            PLAIN_PASSWORD,
            "pässword",
            "wrong-password",
            "$md5$not$a$supported-hash",
            "supported-hash",
            cached_hash(ALICE_PASSWORD),
            cached_hash(JOSE_PASSWORD),
        )

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    @inlineCallbacks
    def test_good_login_str(self):
        """FTP-style str credentials log in and give the user name."""
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword("alice", ALICE_PASSWORD)
        )
        self.assertEqual(avatar_id, "alice")
        self.assertIsInstance(avatar_id, str)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @inlineCallbacks
    def test_good_login_bytes(self):
        """Conch-style bytes credentials give a str user name."""
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword(b"alice", ALICE_PASSWORD.encode())
        )
        self.assertEqual(avatar_id, "alice")
        self.assertIsInstance(avatar_id, str)

    @inlineCallbacks
    def test_utf8_bytes(self):
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword("josé".encode(), JOSE_PASSWORD.encode())
        )
        self.assertEqual(avatar_id, "josé")

    @inlineCallbacks
    def test_utf8_arriving_latin1_decoded(self):
        """
        Twisted's FTP decodes a UTF-8 client's bytes as latin-1; the checker
        recovers the UTF-8 text of both name and password.
        """
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword(
                "josé".encode().decode("latin-1"),
                JOSE_PASSWORD.encode().decode("latin-1"),
            )
        )
        self.assertEqual(avatar_id, "josé")

    @inlineCallbacks
    def test_latin1_client(self):
        """A client that really sends latin-1 still logs in over FTP."""
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword("müller", "pässword")
        )
        self.assertEqual(avatar_id, "müller")

    @inlineCallbacks
    def test_plain_password(self):
        avatar_id = yield self.checker.requestAvatarId(
            UsernamePassword(b"bob", PLAIN_PASSWORD.encode())
        )
        self.assertEqual(avatar_id, "bob")

    @inlineCallbacks
    def test_wrong_password(self):
        yield self.assert_fails_after_delay(UsernamePassword("alice", "wrong-password"))
        yield self.assert_fails_after_delay(UsernamePassword(b"bob", b"wrong-password"))

    @inlineCallbacks
    def test_unknown_user(self):
        yield self.assert_fails_after_delay(UsernamePassword("mallory", "x"))
        yield self.assert_fails_after_delay(UsernamePassword(b"mallory", b"x"))

    @inlineCallbacks
    def test_unusable_hash(self):
        """A malformed stored hash fails the login like a wrong password."""
        yield self.assert_fails_after_delay(UsernamePassword("carol", "wrong-password"))
        warnings = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["user"], "carol")
        self.assertIn("hash", warnings[0]["reason"])
        self.assert_no_secret_logged()

    @inlineCallbacks
    def test_unknown_user_costs_a_verification(self):
        """
        An unknown user is verified against a dummy hash with the default
        parameters, so it takes as long as a known user.
        """
        verified = []
        real = passwords.verify_quietly

        def recording(password, stored, is_hashed):
            verified.append((stored, is_hashed))
            return real(password, stored, is_hashed)

        self.patch(passwords, "verify_quietly", recording)
        yield self.assert_fails_after_delay(UsernamePassword("mallory", "x"))
        yield self.assert_fails_after_delay(UsernamePassword("alice", "x"))
        (dummy, dummy_hashed), (real_hash, real_hashed) = verified
        self.assertTrue(dummy_hashed)
        self.assertEqual(dummy, passwords._dummy_hash())
        self.assertEqual(real_hash, cached_hash(ALICE_PASSWORD))
        self.assertEqual(dummy.split("$")[:3], real_hash.split("$")[:3])

    @inlineCallbacks
    def test_logging(self):
        """
        Success and failure log at debug (the frontends' audit event is the
        line at info), with the user name as a field and never a password;
        the failure's reason is its L{UnauthorizedLogin}'s message.
        """
        yield self.checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        wrong = yield self.assert_fails_after_delay(
            UsernamePassword("alice", "wrong-password")
        )
        unknown = yield self.assert_fails_after_delay(
            UsernamePassword(b"mallory", b"wrong-password")
        )
        self.assertEqual((str(wrong), str(unknown)), ("wrong password", "unknown user"))
        yield self.checker.requestAvatarId(
            UsernamePassword(
                "josé".encode().decode("latin-1"),
                JOSE_PASSWORD.encode().decode("latin-1"),
            )
        )
        yield self.assert_fails_after_delay(UsernamePassword(b"bob", b"wrong-password"))
        levels = [(e["log_level"].name, e["user"]) for e in self.events]
        self.assertEqual(
            levels,
            [
                ("debug", "alice"),
                ("debug", "alice"),
                ("debug", "mallory"),
                ("debug", "josé"),
                ("debug", "bob"),
            ],
        )
        self.assertEqual(
            [e.get("reason") for e in self.events if "reason" in e],
            ["wrong password", "unknown user", "wrong password"],
        )
        self.assert_no_secret_logged()

    @inlineCallbacks
    def test_verification_error(self):
        """
        An unexpected error in the thread fails the login after the delay
        and logs only the error's type: its message could hold a secret.
        """

        def broken(passwords, entry):
            raise RuntimeError(f"leaky {passwords!r}")

        self.patch(passwords, "_check_in_thread", broken)
        yield self.assert_fails_after_delay(UsernamePassword("alice", "wrong-password"))
        (event,) = self.events
        self.assertEqual(event["error_type"], "RuntimeError")
        self.assertNotIn("leaky", logged_text([event]))
        self.assert_no_secret_logged()

    @inlineCallbacks
    def test_swap_users(self):
        """Assigning L{PasswordChecker.users} takes effect for new logins."""
        self.checker.users = {"dave": (PLAIN_PASSWORD, False)}
        self.assertEqual(
            (
                yield self.checker.requestAvatarId(
                    UsernamePassword("dave", PLAIN_PASSWORD)
                )
            ),
            "dave",
        )
        yield self.assert_fails_after_delay(UsernamePassword("alice", ALICE_PASSWORD))

    @inlineCallbacks
    def test_callable_lookup(self):
        """A lookup callable may canonicalise the name (the avatarId)."""

        def lookup(name):
            if name.lower() == "alice":
                return "alice", self.users["alice"]
            return None

        checker = self.make_checker(lookup)
        self.assertEqual(
            (yield checker.requestAvatarId(UsernamePassword("ALICE", ALICE_PASSWORD))),
            "alice",
        )
        yield self.assert_fails_after_delay(UsernamePassword("bob", "x"), checker)

    @inlineCallbacks
    def test_lookup_error(self):
        """A lookup that raises fails the login after the delay, logged."""

        def lookup(name):
            raise KeyError(name)

        checker = self.make_checker(lookup)
        yield self.assert_fails_after_delay(
            UsernamePassword("alice", "wrong-password"), checker
        )
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assert_no_secret_logged()

    @inlineCallbacks
    def test_queue_bounded(self):
        """
        Beyond C{max_concurrent} running and C{max_queued} waiting, a login
        fails after the delay without being verified.
        """
        checker = self.make_checker(self.users, max_concurrent=1, max_queued=0)
        first = checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        second = checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        self.assertNoResult(second)
        self.clock.advance(self.DELAY)
        self.failureResultOf(second, UnauthorizedLogin)
        self.assertEqual((yield first), "alice")
        # The slot is free again.
        third = yield checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        self.assertEqual(third, "alice")
        self.assert_no_secret_logged()

    @inlineCallbacks
    def test_reactor_is_the_default_clock(self):
        """Without a clock, the delay runs on the reactor."""
        checker = PasswordChecker(self.users, self.reactor, self.pool, failure_delay=0)
        d = checker.requestAvatarId(UsernamePassword("alice", "wrong-password"))
        yield self.assertFailure(d, UnauthorizedLogin)

    @inlineCallbacks
    def test_portal(self):
        """The checker and the realm log a user in through a Portal."""
        realm = Realm({IFoo: lambda avatar_id, mind: (("avatar", avatar_id), noop)})
        portal = Portal(realm, [self.checker])
        interface, avatar, logout = yield portal.login(
            UsernamePassword(b"alice", ALICE_PASSWORD.encode()), None, IFoo
        )
        self.assertIs(interface, IFoo)
        self.assertEqual(avatar, ("avatar", "alice"))
        self.assertIs(logout, noop)
