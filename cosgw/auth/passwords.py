"""
The password checker: one L{ICredentialsChecker} for L{IUsernamePassword}
credentials, shared by every frontend.

  - Verifying a hash costs tens of milliseconds of CPU on purpose, so it runs
    in the gateway's thread pool, never on the reactor thread.  At most
    C{max_concurrent} verifications run at once and at most C{max_queued}
    wait, so a login flood cannot take every worker away from COS transfers
    nor grow an unbounded queue.  A verification the client abandons keeps
    its place in the pool until its thread is done, so hanging up frees no
    room for more hashing.  (Sharing the queue fairly between client
    addresses is the login defender's part.)
  - Every password tried costs one key derivation, whatever the account:
    a hashed account's own; the dummy hash's (the default parameters) for
    an unknown user, a plain-text (V5) password, compared in constant time
    after it, and a stored hash that cannot be used.  So a user name's
    existence and its kind of password cannot be told by timing, as long
    as hashed accounts use the default parameters (C{cosgw-passwd} does).
  - A failed login fails only after C{failure_delay} seconds (the FTP
    protocol has no delay of its own; Conch adds one more on top).
  - Passwords never reach a log line or an exception message.  Log events
    carry the user name (escaped: it comes from the client) and a reason, on
    the reactor thread: worker threads never log.

FTP hands over latin-1-decoded str and SSH raw bytes; both are turned into
the texts the client may have meant (L{cosgw.auth.text.text_candidates}).
"""

from __future__ import annotations

import enum
import functools
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Optional, Union, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cosgw.auth.hashes import hash_password, verify_quietly
from cosgw.auth.text import text_candidates
from cosgw.escaping import for_log

__all__ = ["PasswordChecker", "StoredPassword", "UserLookup"]

# One namespace for the whole package: an operator follows every password
# login with one filter.
log = Logger(namespace="cosgw.auth")


class StoredPassword(NamedTuple):
    """
    An account's password as the config stores it: a hash (C{is_hashed}) or,
    for COS FTP Server V5 configs, plain text.

    Its repr hides C{stored}, so logging an account by mistake does not log a
    password.
    """

    stored: str
    is_hashed: bool

    def __repr__(self) -> str:
        return f"StoredPassword(stored=<redacted>, is_hashed={self.is_hashed!r})"


#: Given a user name, the account's canonical name and password, or None for
#: no such user.  Called on the reactor thread, so it must not block.
UserLookup = Callable[[str], Optional[tuple[str, tuple[str, bool]]]]


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """
    A hash of a random password, made with the default parameters, for
    unknown users to be verified against: they then cost what a known user
    with a default hash costs.
    """
    return hash_password(secrets.token_urlsafe(16))


class _Outcome(enum.Enum):
    """What a verification in the thread pool found, for the reactor to log."""

    SUCCESS = "success"
    WRONG_PASSWORD = "wrong password"
    UNKNOWN_USER = "unknown user"
    UNUSABLE_HASH = "stored password hash unusable"


def _verify_one(password: str, entry: Optional[tuple[str, bool]]) -> Optional[bool]:
    """
    Runs in the thread pool: C{password} against the account's (C{entry}),
    at the cost of exactly one key derivation whatever the account is.
    None when the stored hash cannot be used.
    """
    if entry is None:
        verify_quietly(password, _dummy_hash(), True)
        return False
    stored, is_hashed = entry
    if not is_hashed:
        # The work a hash would cost, then the constant-time comparison.
        verify_quietly(password, _dummy_hash(), True)
        return verify_quietly(password, stored, False)
    result = verify_quietly(password, stored, True)
    if result is None:
        # Refused before deriving anything: pay for it anyway.
        verify_quietly(password, _dummy_hash(), True)
    return result


def _check_in_thread(
    passwords: Sequence[str], entry: Optional[tuple[str, bool]]
) -> _Outcome:
    """
    Runs in the thread pool: try each candidate password against the
    account's (C{entry}; None for an unknown user), each at the cost of one
    key derivation (see L{_verify_one}).
    """
    outcome = _Outcome.UNKNOWN_USER if entry is None else _Outcome.WRONG_PASSWORD
    for password in passwords:
        result = _verify_one(password, entry)
        if result:
            return _Outcome.SUCCESS
        if result is None:
            outcome = _Outcome.UNUSABLE_HASH
    return outcome


def _mapping_lookup(
    users: Mapping[str, tuple[str, bool]],
) -> UserLookup:
    """Adapt a C{{name: (stored, is_hashed)}} mapping to a L{UserLookup}."""

    def lookup(name: str) -> Optional[tuple[str, tuple[str, bool]]]:
        entry = users.get(name)
        if entry is None:
            return None
        return name, entry

    return lookup


@implementer(ICredentialsChecker)
class PasswordChecker:
    """
    Checks L{IUsernamePassword} credentials, from FTP (latin-1-decoded str)
    or SSH (bytes), against the accounts' stored passwords.

    The accounts are a mapping C{{username: (stored, is_hashed)}} or a
    L{UserLookup} callable.  Assign L{users} to swap them on a config reload:
    logins already under way finish against the account they looked up.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        users: Union[Mapping[str, tuple[str, bool]], UserLookup],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        clock: Optional[IReactorTime] = None,
        failure_delay: float = 1.0,
        max_concurrent: int = 4,
        max_queued: int = 64,
    ) -> None:
        """
        @param users: the accounts; see L{users}.
        @param reactor: delivers results from C{pool}'s threads.
        @param pool: the gateway's thread pool, where hashes are verified.
        @param clock: times the failure delay; C{reactor} when None.
        @param failure_delay: seconds before a failed login fails.
        @param max_concurrent: most verifications running at once, so a login
            flood leaves pool threads to COS transfers.
        @param max_queued: most logins waiting for a verification slot;
            beyond that a login fails (after the delay) without being
            checked, so a flood cannot grow an unbounded queue.
        """
        self.users = users
        self._reactor = reactor
        self._pool = pool
        # Any real reactor provides IReactorTime too; the parameter's type
        # names only what delivering results from threads needs.
        self._clock = clock if clock is not None else cast(IReactorTime, reactor)
        self._failure_delay = failure_delay
        self._semaphore = DeferredSemaphore(max_concurrent)
        self._max_queued = max_queued
        # Start-up may block; the first unknown user must not pay for this.
        _dummy_hash()

    @property
    def users(self) -> UserLookup:
        """The current account lookup; assign a mapping or a callable."""
        return self._lookup

    @users.setter
    def users(self, users: Union[Mapping[str, tuple[str, bool]], UserLookup]) -> None:
        if callable(users):
            self._lookup: UserLookup = users
        else:
            self._lookup = _mapping_lookup(users)

    def _find(self, names: Iterable[str]) -> Optional[tuple[str, tuple[str, bool]]]:
        """The first of C{names} that is an account, with its password."""
        for name in names:
            found = self._lookup(name)
            if found is not None:
                return found
        return None

    # Twisted's stubs type avatar ids as bytes; cosgw's are str, which the
    # portal hands to cosgw's realm untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
        """
        Check C{credentials}.

        @return: a L{Deferred} that fires with the account's canonical user
            name (a str), or fails with L{UnauthorizedLogin} after
            C{failure_delay} seconds.  The failure never says why: unknown
            user and wrong password look the same to the client.
        """
        names = text_candidates(getattr(credentials, "username", None))
        passwords = text_candidates(getattr(credentials, "password", None))
        offered = names[0] if names else "<none>"
        try:
            found = self._find(names)
        except Exception:
            log.failure("Account lookup failed for user {user}", user=for_log(offered))
            return self._fail()
        if found is None:
            user, entry = offered, None
        else:
            user, (stored, is_hashed) = found
            entry = (stored, bool(is_hashed))

        semaphore = self._semaphore
        if semaphore.tokens == 0 and len(semaphore.waiting) >= self._max_queued:
            log.warn(
                "Login for user {user} refused unchecked: {queued} logins"
                " already waiting for verification",
                user=for_log(user),
                queued=len(semaphore.waiting),
            )
            return self._fail()

        d = self._verify(passwords, entry)
        return d.addCallbacks(
            self._checked,
            self._crashed,
            callbackArgs=(user,),
            errbackArgs=(user,),
        )

    def _verify(
        self, passwords: Sequence[str], entry: Optional[tuple[str, bool]]
    ) -> Deferred[_Outcome]:
        """
        L{_check_in_thread} in the pool once one of the C{max_concurrent}
        slots is free.

        Cancelling the result while it waits for a slot gives the place up.
        Once in the pool, only the result fails (with L{CancelledError}):
        the thread cannot be stopped, so it keeps its slot until it is done
        (L{DeferredSemaphore.run} would release it at once, letting a client
        that hangs up start hashing after hashing).
        """
        semaphore = self._semaphore
        acquiring = semaphore.acquire()
        in_pool: list[Deferred[_Outcome]] = []

        def cancel(_: Deferred[_Outcome]) -> None:
            if not in_pool:
                acquiring.cancel()

        result: Deferred[_Outcome] = Deferred(cancel)

        def deliver(outcome: Union[_Outcome, Failure]) -> None:
            if result.called:
                return  # cancelled
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        def run(_: object) -> None:
            work = deferToThreadPool(
                self._reactor, self._pool, _check_in_thread, passwords, entry
            )
            in_pool.append(work)

            def done(outcome: Union[_Outcome, Failure]) -> None:
                semaphore.release()
                deliver(outcome)

            work.addBoth(done)

        acquiring.addCallbacks(run, deliver)
        return result

    def _checked(self, outcome: _Outcome, user: str) -> Union[str, Deferred[str]]:
        """Log the verdict from the thread pool, on the reactor thread."""
        # Debug: the frontends' audit event (login, login-failed, with the
        # client's address and the reason given here) is the line at info.
        if outcome is _Outcome.SUCCESS:
            log.debug("Login succeeded for user {user}", user=for_log(user))
            return user
        # UNUSABLE_HASH (the stored hash is in an unrecognised or malformed
        # format; the reason says so without quoting it) is the operator's
        # to fix: a warning.
        level = LogLevel.warn if outcome is _Outcome.UNUSABLE_HASH else LogLevel.debug
        log.emit(
            level,
            "Login failed for user {user}: {reason}",
            user=for_log(user),
            reason=outcome.value,
        )
        return self._fail(outcome.value)

    def _crashed(self, failure: Failure, user: str) -> Union[Failure, Deferred[str]]:
        """
        An unexpected error in verification: log its type only, since its
        message or traceback locals could hold the password, and fail.  A
        cancellation (the client is gone) passes through at once.
        """
        if failure.check(CancelledError):
            return failure
        log.error(
            "Login failed for user {user}: verification raised {error_type}",
            user=for_log(user),
            error_type=failure.type.__name__ if failure.type else "?",
        )
        return self._fail()

    def _fail(self, reason: str = "login failed") -> Deferred[str]:
        """
        Fail with L{UnauthorizedLogin} after the failure delay; its message,
        C{reason}, is for the log (clients are never told it).
        """

        def unauthorized() -> str:
            raise UnauthorizedLogin(reason)

        return deferLater(self._clock, self._failure_delay, unauthorized)
