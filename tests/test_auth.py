"""
Tests for L{cosgw.auth}: password hashing, the checker (over a real thread
pool and the real reactor, with a L{task.Clock} for the failure delay), the
realm, the generated account and the C{cosgw-passwd} script.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from cosgw import auth
from cosgw.auth import (
    PasswordChecker,
    Realm,
    StoredPassword,
    ensure_generated_account,
    hash_password,
    load_passwd_file,
    main,
    verify_password,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

SCRYPT_RE = re.compile(
    r"^\$scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$"
)

ALICE_PASSWORD = "correct horse battery staple"
JOSE_PASSWORD = "密码-sekrit"
PLAIN_PASSWORD = "plain-v5-passw0rd"


@functools.cache
def cached_hash(password: str) -> str:
    """scrypt is slow on purpose; hash each test password once per run."""
    return hash_password(password)


def pbkdf2_hash(
    password: str, iterations: int = 1000, salt: bytes = b"0123456789abcdef"
) -> str:
    """A C{$pbkdf2-sha256$} hash made independently of the code under test."""
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$pbkdf2-sha256${iterations}${b64(salt).decode()}${b64(key).decode()}"


def passlib_ab64(data: bytes) -> str:
    """passlib's "adapted" base64: C{.} for C{+}, no padding."""
    return base64.b64encode(data).decode().replace("+", ".").rstrip("=")


def temporary_directory(testcase: TestCase) -> Path:
    """
    A fresh directory removed after the test.  Not C{mktemp}: under pytest
    that writes into the working directory, the source tree.
    """
    path = Path(tempfile.mkdtemp(prefix="cosgw-test-auth-"))
    testcase.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path


def logged_text(events: list[dict]) -> str:
    """Everything a log observer could write for C{events}."""
    return "\n".join(formatEvent(e) + repr(e) for e in events)


def assert_not_logged(testcase: TestCase, events: list[dict], *secrets: str) -> None:
    """Fail if any of C{secrets}, in any encoding a protocol uses, was logged."""
    text = logged_text(events)
    for secret in secrets:
        variants = {
            secret,
            repr(secret.encode("utf-8")),
            secret.encode("utf-8").decode("latin-1"),
        }
        for variant in variants:
            testcase.assertNotIn(variant, text)


class HashPasswordTests(TestCase):
    """L{hash_password} and L{verify_password}."""

    def test_scrypt_format(self) -> None:
        """New hashes are scrypt with the documented parameters and sizes."""
        stored = cached_hash(ALICE_PASSWORD)
        self.assertRegex(stored, SCRYPT_RE)
        salt, key = stored.split("$")[3:]
        self.assertEqual(len(base64.b64decode(salt + "==")), 16)
        self.assertEqual(len(base64.b64decode(key + "=")), 32)

    def test_salted(self) -> None:
        """The same password hashes differently each time."""
        self.assertNotEqual(hash_password("x"), hash_password("x"))

    def test_scrypt_round_trip(self) -> None:
        stored = cached_hash(ALICE_PASSWORD)
        self.assertTrue(verify_password(ALICE_PASSWORD, stored, True))
        self.assertFalse(verify_password(ALICE_PASSWORD + "!", stored, True))
        self.assertFalse(verify_password("", stored, True))

    def test_unicode_password(self) -> None:
        """Passwords are text, hashed as UTF-8."""
        stored = cached_hash("密码")
        self.assertTrue(verify_password("密码", stored, True))
        self.assertFalse(verify_password("密碼", stored, True))
        # What FTP hands over before the checker re-decodes it.
        self.assertFalse(
            verify_password("密码".encode().decode("latin-1"), stored, True)
        )

    def test_scrypt_passlib_ln(self) -> None:
        """passlib's C{ln=} (log2 of n) and adapted base64 are understood."""
        salt = b"saltsaltsaltsalt"
        key = hashlib.scrypt(b"pw+", salt=salt, n=2**4, r=8, p=1, dklen=32)
        stored = f"$scrypt$ln=4,r=8,p=1${passlib_ab64(salt)}${passlib_ab64(key)}"
        self.assertTrue(verify_password("pw+", stored, True))
        self.assertFalse(verify_password("pw-", stored, True))

    def test_pbkdf2_round_trip(self) -> None:
        stored = pbkdf2_hash("密码 pbkdf2")
        self.assertTrue(verify_password("密码 pbkdf2", stored, True))
        self.assertFalse(verify_password("密码 pbkdf3", stored, True))

    def test_pbkdf2_passlib(self) -> None:
        """A hash as passlib writes it (adapted base64) verifies."""
        salt = bytes(range(200, 216))
        key = hashlib.pbkdf2_hmac("sha256", b"tr0ub4dor", salt, 29000)
        stored = f"$pbkdf2-sha256$29000${passlib_ab64(salt)}${passlib_ab64(key)}"
        self.assertTrue(verify_password("tr0ub4dor", stored, True))
        self.assertFalse(verify_password("tr0ub4dor&3", stored, True))

    def test_plain(self) -> None:
        """C{is_hashed=False} compares the text itself, as V5 configs have."""
        self.assertTrue(verify_password(PLAIN_PASSWORD, PLAIN_PASSWORD, False))
        self.assertFalse(verify_password(PLAIN_PASSWORD + "x", PLAIN_PASSWORD, False))
        self.assertTrue(verify_password("密码", "密码", False))
        # A plain-text password that looks like a hash is still plain text.
        stored = cached_hash(ALICE_PASSWORD)
        self.assertTrue(verify_password(stored, stored, False))
        self.assertFalse(verify_password(ALICE_PASSWORD, stored, False))

    def test_plain_empty_never_matches(self) -> None:
        """An empty stored password is a blank in the config, not a login."""
        self.assertFalse(verify_password("", "", False))

    def test_constant_time_everywhere(self) -> None:
        """Every kind of stored password is compared with compare_digest."""
        calls = []
        real = auth.hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append((type(a), type(b)))
            return real(a, b)

        self.patch(auth.hmac, "compare_digest", spy)
        verify_password("a", cached_hash("a"), True)
        verify_password("a", pbkdf2_hash("a"), True)
        verify_password("a", "b", False)
        self.assertEqual(calls, [(bytes, bytes)] * 3)

    def test_malformed(self) -> None:
        """
        A hash that cannot be used returns False and logs a warning that
        does not quote it.
        """
        good_salt = base64.b64encode(b"s" * 16).decode()
        good_key = base64.b64encode(b"k" * 32).decode()
        malformed = [
            "",
            "not-a-hash-but-secret",
            "$scrypt$",
            "$md5$abc$def$ghi",
            "$scrypt$n=16384,r=8,p=1$onlysalt",
            f"$scrypt$n=1000,r=8,p=1${good_salt}${good_key}",
            f"$scrypt$n=1073741824,r=8,p=1${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8,p=1,x=2${good_salt}${good_key}",
            f"$scrypt$n=16384,r=8,p=1$!!!${good_key}",
            f"$scrypt$n=16384,r=8,p=1${good_salt}$",
            f"$scrypt$n=16384,r=8,p=1${good_salt}$a2V5",
            f"$pbkdf2-sha256$abc${good_salt}${good_key}",
            f"$pbkdf2-sha256$0${good_salt}${good_key}",
            f"$pbkdf2-sha256$-5${good_salt}${good_key}",
            f"$pbkdf2-sha256$1000$${good_key}",
            "$pbkdf2-sha256$1000$c2FsdA$",
        ]
        for stored in malformed:
            events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
            self.assertIs(verify_password("anything", stored, True), False, stored)
            self.assertEqual(len(events), 1, stored)
            self.assertEqual(events[0]["log_level"].name, "warn")
            if stored:
                self.assertNotIn(stored, logged_text(events))
            # No partial leak of the payload fields either.
            for field in stored.split("$")[2:]:
                if len(field) > 4:
                    self.assertNotIn(field, logged_text(events))


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
        self.failureResultOf(d, UnauthorizedLogin)

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
        real = auth._verify

        def recording(password, stored, is_hashed):
            verified.append((stored, is_hashed))
            return real(password, stored, is_hashed)

        self.patch(auth, "_verify", recording)
        yield self.assert_fails_after_delay(UsernamePassword("mallory", "x"))
        yield self.assert_fails_after_delay(UsernamePassword("alice", "x"))
        (dummy, dummy_hashed), (real_hash, real_hashed) = verified
        self.assertTrue(dummy_hashed)
        self.assertEqual(dummy, auth._dummy_hash())
        self.assertEqual(real_hash, cached_hash(ALICE_PASSWORD))
        self.assertEqual(dummy.split("$")[:3], real_hash.split("$")[:3])

    @inlineCallbacks
    def test_logging(self):
        """
        Success logs at info and failure at warn, with the user name as a
        field and never a password.
        """
        yield self.checker.requestAvatarId(UsernamePassword("alice", ALICE_PASSWORD))
        yield self.assert_fails_after_delay(UsernamePassword("alice", "wrong-password"))
        yield self.assert_fails_after_delay(
            UsernamePassword(b"mallory", b"wrong-password")
        )
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
                ("info", "alice"),
                ("warn", "alice"),
                ("warn", "mallory"),
                ("info", "josé"),
                ("warn", "bob"),
            ],
        )
        self.assertEqual(
            [e.get("reason") for e in self.events if e["log_level"].name == "warn"],
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

        self.patch(auth, "_check_in_thread", broken)
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


class IFoo(Interface):
    """An avatar interface a frontend might register."""


class IBar(Interface):
    """Another one."""


def noop() -> None:
    pass


class RealmTests(TestCase):
    def setUp(self) -> None:
        self.calls = []

        def factory(avatar_id, mind):
            self.calls.append((avatar_id, mind))
            return ("foo-avatar", avatar_id), noop

        self.realm = Realm({IFoo: factory})

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_first_known_interface(self) -> None:
        mind = object()
        result = self.realm.requestAvatar("alice", mind, IBar, IFoo)
        self.assertEqual(result, (IFoo, ("foo-avatar", "alice"), noop))
        self.assertEqual(self.calls, [("alice", mind)])

    def test_bytes_avatar_id(self) -> None:
        """Conch's key checker gives bytes; factories always get str."""
        _, avatar, _ = self.realm.requestAvatar("josé".encode(), None, IFoo)
        self.assertEqual(avatar, ("foo-avatar", "josé"))
        self.assertEqual(self.calls, [("josé", None)])

    def test_no_factory(self) -> None:
        self.assertRaises(
            NotImplementedError, self.realm.requestAvatar, "alice", None, IBar
        )
        self.assertEqual(self.calls, [])

    def test_register(self) -> None:
        self.realm.register(IBar, lambda a, m: ("bar-avatar", noop))
        self.assertEqual(
            self.realm.requestAvatar("alice", None, IBar, IFoo),
            (IBar, "bar-avatar", noop),
        )

    def test_register_twice(self) -> None:
        self.assertRaises(ValueError, self.realm.register, IFoo, lambda a, m: None)

    def test_deferred_factory(self) -> None:
        """A factory may return a Deferred of (avatar, logout)."""
        realm = Realm({IFoo: lambda a, m: succeed(("deferred-avatar", noop))})
        d = realm.requestAvatar("alice", None, IFoo)
        self.assertEqual(self.successResultOf(d), (IFoo, "deferred-avatar", noop))


class GeneratedAccountTests(TestCase):
    def setUp(self) -> None:
        self.state = temporary_directory(self) / "state"

    def test_creates_account(self) -> None:
        """
        The first call creates the directory (0700) and the file (0600),
        stores only the hash, and returns the password that verifies.
        """
        stored, password = ensure_generated_account(self.state)
        self.assertIsInstance(password, str)
        self.assertGreaterEqual(len(password), 16)
        self.assertRegex(stored, SCRYPT_RE)
        self.assertTrue(verify_password(password, stored, True))

        path = self.state / "users.passwd"
        self.assertEqual(stat.S_IMODE(self.state.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        content = path.read_text()
        self.assertEqual(content, f"cosgw:{stored}\n")
        self.assertNotIn(password, content)
        self.assertEqual(os.listdir(self.state), ["users.passwd"])
        self.assertEqual(load_passwd_file(path), {"cosgw": stored})

    def test_password_once(self) -> None:
        stored, password = ensure_generated_account(self.state)
        self.assertIsNotNone(password)
        self.assertEqual(ensure_generated_account(self.state), (stored, None))
        self.assertEqual(ensure_generated_account(self.state), (stored, None))

    def test_random(self) -> None:
        _, first = ensure_generated_account(self.state / "a")
        _, second = ensure_generated_account(self.state / "b")
        self.assertNotEqual(first, second)

    def test_username(self) -> None:
        stored, password = ensure_generated_account(self.state, "ftpadmin")
        self.assertEqual(
            load_passwd_file(self.state / "users.passwd"), {"ftpadmin": stored}
        )
        self.assertRaises(ValueError, ensure_generated_account, self.state, "other")

    def test_bad_username(self) -> None:
        self.assertRaises(ValueError, ensure_generated_account, self.state, "a:b")
        self.assertRaises(ValueError, ensure_generated_account, self.state, "")
        self.assertFalse(self.state.exists())

    def test_lost_race(self) -> None:
        """
        When another process creates the file first, its account wins and no
        password is returned: it was never stored.
        """
        real_link = os.link
        theirs = cached_hash("theirs")

        def racing_link(src, dst):
            Path(dst).write_text(f"cosgw:{theirs}\n")
            return real_link(src, dst)

        self.patch(auth.os, "link", racing_link)
        self.assertEqual(ensure_generated_account(self.state), (theirs, None))
        self.assertEqual(os.listdir(self.state), ["users.passwd"])


class LoadPasswdFileTests(TestCase):
    def setUp(self) -> None:
        self.path = temporary_directory(self) / "users.passwd"

    def test_load(self) -> None:
        self.path.write_text(
            "# accounts\n\nalice:$scrypt$a$b$c\n  josé:$pbkdf2-sha256$1$b$c  \n"
        )
        self.assertEqual(
            load_passwd_file(self.path),
            {"alice": "$scrypt$a$b$c", "josé": "$pbkdf2-sha256$1$b$c"},
        )

    def test_malformed(self) -> None:
        """The error names the file and line but does not quote the line."""
        self.path.write_text("alice:$scrypt$x\nnocolon-secretvalue\n")
        error = self.assertRaises(ValueError, load_passwd_file, self.path)
        self.assertIn(str(self.path), str(error))
        self.assertIn("line 2", str(error))
        self.assertNotIn("secretvalue", str(error))

    def test_duplicate(self) -> None:
        self.path.write_text("alice:$scrypt$x\nalice:$scrypt$y\n")
        error = self.assertRaises(ValueError, load_passwd_file, self.path)
        self.assertIn("line 2", str(error))

    def test_missing(self) -> None:
        self.assertRaises(FileNotFoundError, load_passwd_file, self.path)


class MainTests(TestCase):
    """The C{cosgw-passwd} script."""

    def run_main(self, argv, stdin="", passwords=()):
        answers = iter(passwords)
        prompts = []

        def fake_getpass(prompt="Password: "):
            prompts.append(prompt)
            return next(answers)

        self.patch(auth.getpass, "getpass", fake_getpass)
        self.patch(sys, "stdin", io.StringIO(stdin))
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return main(argv), out.getvalue(), err.getvalue(), prompts

    def test_stdin(self) -> None:
        rc, out, err, prompts = self.run_main(["--stdin"], "s3cret 密码 \r\n")
        self.assertEqual((rc, err, prompts), (0, "", []))
        self.assertTrue(out.endswith("\n"))
        line = out.strip()
        self.assertRegex(line, SCRYPT_RE)
        # Inner and trailing spaces are part of the password.
        self.assertTrue(verify_password("s3cret 密码 ", line, True))
        self.assertNotIn("s3cret", out)

    def test_stdin_empty(self) -> None:
        rc, out, err, _ = self.run_main(["--stdin"], "\n")
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("empty", err)

    def test_getpass(self) -> None:
        rc, out, err, prompts = self.run_main([], passwords=["tty-pw", "tty-pw"])
        self.assertEqual((rc, err, len(prompts)), (0, "", 2))
        self.assertTrue(verify_password("tty-pw", out.strip(), True))

    def test_getpass_mismatch(self) -> None:
        rc, out, err, _ = self.run_main([], passwords=["tty-pw", "tty-pq"])
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("do not match", err)
        self.assertNotIn("tty-p", err)

    def test_getpass_interrupted(self) -> None:
        def interrupted(prompt=""):
            raise KeyboardInterrupt()

        self.patch(auth.getpass, "getpass", interrupted)
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main([]), 1)

    def subprocess_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        return env

    def test_python_m(self) -> None:
        """C{python -m cosgw.auth --stdin} works as a script."""
        result = subprocess.run(
            [sys.executable, "-m", "cosgw.auth", "--stdin"],
            input="from-a-script\n",
            capture_output=True,
            text=True,
            env=self.subprocess_env(),
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(verify_password("from-a-script", result.stdout.strip(), True))

    def test_no_global_reactor(self) -> None:
        """Importing cosgw.auth does not install a reactor."""
        code = (
            "import sys, cosgw.auth; "
            "sys.exit('twisted.internet.reactor' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=self.subprocess_env(),
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
