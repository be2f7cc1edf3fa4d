"""
Tests for L{cosgw.frontends.sftp.userauth}: password and public-key logins
with paramiko and OpenSSH, and the login guard in front of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from cosgw.policy.defender import LoginBanned, TooManyLogins
from tests.sshtesting import (
    MESSAGE,
    NO_OPENSSH,
    PASSWORD,
    SFTP,
    USER,
    SSHServerMixin,
    key_login,
    openssh_options,
    paramiko_transport,
    password_login,
    run_client,
    user_key,
    wait_inactive,
)


class RecordingGuard:
    """A login guard that records each guarded attempt and lets it run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def guard(
        self, ip: str, user: str, login: Callable[[], Any], session: Any = None
    ) -> Any:
        self.calls.append((ip, user))
        return login()


class BanningGuard(RecordingGuard):
    """Every guarded attempt fails at once with C{refusal()}."""

    def __init__(self, refusal: Callable[[], LoginBanned]) -> None:
        super().__init__()
        self.refusal = refusal

    def guard(
        self, ip: str, user: str, login: Callable[[], Any], session: Any = None
    ) -> Any:
        self.calls.append((ip, user))
        return defer.fail(self.refusal())


class HoldingGuard(RecordingGuard):
    """Holds each attempt until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Callable[[], Any], defer.Deferred]] = []
        self.cancelled: list[str] = []

    def guard(
        self, ip: str, user: str, login: Callable[[], Any], session: Any = None
    ) -> Any:
        self.calls.append((ip, user))
        d: defer.Deferred = defer.Deferred(lambda d: self.cancelled.append(user))
        self.held.append((login, d))
        return d


class LoginTests(SSHServerMixin, TestCase):
    """Password and public-key logins with paramiko and OpenSSH."""

    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_password(self) -> Any:
        port = self.start_server()
        root = yield self.in_thread(password_login, port, USER, PASSWORD)
        self.assertEqual(root, "/")
        self.assertEqual([a.username for a in self.avatars], [USER])
        yield self.wait_until(lambda: self.logouts == [USER])

    @defer.inlineCallbacks
    def test_bad_password(self) -> Any:
        port = self.start_server()
        for user, password in [(USER, "wrong"), ("nobody", PASSWORD)]:
            f = yield self.assertFailure(
                self.in_thread(password_login, port, user, password),
                paramiko.AuthenticationException,
            )
            self.assertNotIsInstance(f, paramiko.BadAuthenticationType)
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_password_never_logged(self) -> Any:
        port = self.start_server()
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.assertFailure(
            self.in_thread(password_login, port, USER, "Wr0ng-secret-guess"),
            paramiko.AuthenticationException,
        )
        yield self.close_all()
        for event in self.events:
            text = formatEvent(event) + repr(event)
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn("Wr0ng-secret-guess", text)

    @defer.inlineCallbacks
    def test_keys(self) -> Any:
        port = self.start_server()
        for kind in ("ed25519", "rsa"):
            result = yield self.in_thread(key_login, port, USER, user_key(kind))
            self.assertEqual(result["root"], "/")
        self.assertEqual(len(self.avatars), 2)

    @defer.inlineCallbacks
    def test_wrong_key(self) -> Any:
        port = self.start_server()
        yield self.assertFailure(
            self.in_thread(key_login, port, USER, user_key("other")),
            paramiko.AuthenticationException,
        )
        yield self.assertFailure(
            self.in_thread(key_login, port, "nobody", user_key("ed25519")),
            paramiko.AuthenticationException,
        )
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_password_offered_only_after_encryption(self) -> Any:
        """The methods offered are exactly publickey and password."""
        port = self.start_server()

        def methods() -> list[str]:
            with paramiko_transport(port) as t:
                try:
                    t.auth_none(USER)
                except paramiko.BadAuthenticationType as e:
                    return sorted(e.allowed_types)
                return []

        self.assertEqual((yield self.in_thread(methods)), ["password", "publickey"])

    @defer.inlineCallbacks
    def test_openssh_sftp(self) -> Any:
        """
        OpenSSH's sftp with an env request (SetEnv) works and exits at once:
        SSHSession would hand the EOF to the session object and never close
        the channel, so sftp would hang at exit.
        """
        port = self.start_server()
        batch = self.workdir / "batch"
        batch.write_text("pwd\n")
        started = time.monotonic()
        result = yield self.in_thread(
            run_client,
            [
                SFTP or "sftp",
                *openssh_options(port),
                "-o",
                "SetEnv=FOO=bar",
                "-i",
                str(user_key("ed25519")),
                "-P",
                str(port),
                "-b",
                str(batch),
                f"{USER}@127.0.0.1",
            ],
            self.workdir,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"Remote working directory: /", result.stdout)
        self.assertLess(time.monotonic() - started, 5)


class LoginGuardTests(SSHServerMixin, TestCase):
    skip = NO_OPENSSH

    @defer.inlineCallbacks
    def test_passwords_guarded(self) -> Any:
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        yield self.in_thread(password_login, port, USER, PASSWORD)
        yield self.assertFailure(
            self.in_thread(password_login, port, "bob", "nope"),
            paramiko.AuthenticationException,
        )
        self.assertEqual(guard.calls, [("127.0.0.1", USER), ("127.0.0.1", "bob")])

    @defer.inlineCallbacks
    def test_signed_keys_guarded(self) -> Any:
        """paramiko signs at once: one guarded attempt."""
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        yield self.in_thread(key_login, port, USER, user_key("ed25519"))
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

    @defer.inlineCallbacks
    def test_key_queries_not_guarded(self) -> Any:
        """
        OpenSSH asks first (no signature), then signs: only the signed
        attempt is guarded; a key the server does not know is only asked
        about, so it is never guarded.
        """
        guard = RecordingGuard()
        port = self.start_server(login_guard=guard)
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true"
        )
        self.assertIn(MESSAGE.encode(), result.stderr)
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])
        result = yield self.openssh(
            port, user_key("other"), f"{USER}@127.0.0.1", "true"
        )
        self.assertEqual(result.returncode, 255)
        self.assertIn(b"Permission denied", result.stderr)
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

    @defer.inlineCallbacks
    def test_banned_disconnected(self) -> Any:
        """A banned address is told when to come back, then disconnected."""
        guard = BanningGuard(lambda: LoginBanned(60))
        port = self.start_server(login_guard=guard)
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true", log_level="INFO"
        )
        self.assertEqual(result.returncode, 255)
        # SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
        self.assertIn(
            b":14: Too many failed logins from this address; try again in 60 seconds",
            result.stderr,
        )
        self.assertEqual(guard.calls, [("127.0.0.1", USER)])

        def password_attempts() -> tuple[bool, bool]:
            with paramiko_transport(port) as t:
                try:
                    t.auth_password(USER, PASSWORD, fallback=False)
                except paramiko.SSHException:
                    refused = True
                else:
                    refused = False
                return refused, wait_inactive(t, 5)

        self.assertEqual((yield self.in_thread(password_attempts)), (True, True))
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_too_many_logins_at_once(self) -> Any:
        """
        An address with too many logins waiting is told so (not that its
        logins failed) and disconnected.
        """
        port = self.start_server(login_guard=BanningGuard(TooManyLogins))
        result = yield self.openssh(
            port, user_key("ed25519"), f"{USER}@127.0.0.1", "true", log_level="INFO"
        )
        self.assertEqual(result.returncode, 255)
        self.assertIn(
            b":14: Too many logins at once from this address; try again later",
            result.stderr,
        )
        self.assertNotIn(b"failed logins", result.stderr)
        # The session's close line is written when the server sees the
        # connection go, which may be after the client has already exited.
        yield self.wait_until(
            lambda: "refused: Too many logins at once from this address"
            in self.log_text()
        )
        self.assertEqual(self.avatars, [])

    @defer.inlineCallbacks
    def test_attempt_cancelled_on_disconnect(self) -> Any:
        """
        An attempt still under way when the client hangs up is cancelled (the
        defender's failure delay ends with it), quietly, and no avatar is
        made.
        """
        guard = HoldingGuard()
        port = self.start_server(login_guard=guard)

        def give_up() -> None:
            with paramiko_transport(port) as t:
                t.auth_timeout = 0.5
                try:
                    t.auth_password(USER, PASSWORD, fallback=False)
                except paramiko.AuthenticationException:
                    return
                raise AssertionError("login should have been held")

        yield self.in_thread(give_up)
        yield self.wait_until(
            lambda: all(t.connection_lost for t in self.factory.transports)
        )
        self.assertEqual(guard.cancelled, [USER])
        self.assertEqual(self.avatars, [])
