"""
The login defender: slows down and then bans addresses that keep failing to
log in, for FTP and SFTP alike.

Each guess costs more than the last, then the guessing stops, per client
address; people who type their password right are never slowed down:

  - Failed logins are counted per client address within a sliding window of
    C{window} seconds.  The n-th failure within the window is answered after
    C{min(base_delay * 2 ** (n - 1), max_delay)} seconds: 1, 2, 4, 8, 16, 16
    ... with the defaults.  Until that delay has passed, no further password
    from the address is verified either: its attempts wait, so parallel
    connections guess no faster than one.  The delays are timers on the
    injected clock; nothing sleeps.
  - When an address reaches C{max_failures} failures within the window it
    is banned for C{ban_time} seconds: its logins fail at once with
    L{LoginBanned} and no password is checked, so a banned guesser costs no
    hashing CPU and learns nothing.  The ban is logged once, as a warning.
    C{max_failures = 0} never bans (the delays still grow).
  - A successful login is passed straight through, in the same reactor
    turn, and forgets the address's failures (not its ban: a ban lasts its
    full time, whatever logins were already under way when it fell).
  - A failed login is an L{UnauthorizedLogin} (wrong password, unknown
    user), or an attempt the client abandoned while it was being verified
    (hanging up must not make guesses free).  Anything else (a checker
    crash, L{twisted.cred.error.UnhandledCredentials}) is the gateway's
    problem: it passes through at once, uncounted.

The ban and the delay are checked when an attempt is about to be verified,
not only when it arrives.  Per address at most C{max_in_flight} attempts are
verified at once; the others wait in a queue of at most C{max_waiting}
(beyond it they fail at once with L{TooManyLogins}), and the next starts
only when the address is not banned (else all waiting fail with
L{LoginBanned}) and its delay has passed.  So one address never holds more
than C{max_in_flight} places in the gateway's shared verification pool and
cannot starve other addresses' logins, and every password it gets verified
is counted: at most C{max_failures + max_in_flight - 1} before its ban.

Per address, the defender remembers an L{_AddressRecord}: the times of the
failures still within the window, the time the last failure's delay ends
and the time the ban ends.  The states and their transitions:

  ========  =================================  =============================
  state     record                             becomes
  ========  =================================  =============================
  clear     none                               counting, on a failure
  counting  failures within the window,        banned, on the failure that
            no ban in force                    reaches C{max_failures};
                                               clear, on a success or when
                                               the last failure leaves the
                                               window
  banned    C{banned_until} later than now     counting or clear, when
                                               C{banned_until} passes (a
                                               success meanwhile clears the
                                               failures only)
  ========  =================================  =============================

A failure while banned (a login already under way when the ban fell) is
counted but neither extends the ban nor logs it again.  When a ban ends,
failures still inside the window count on: with a C{ban_time} shorter than
the C{window}, one more failure bans again at once.

Memory stays bounded whatever the attacker does: a record keeps only the
failures within the window that can still change an answer; records whose
failures, delay and ban have all expired are dropped from the least
recently seen end on every call; beyond C{max_tracked} addresses the least
recently seen is forgotten, ban and all.  Queues exist only while an
address has attempts under way.

Given the client's audit session, L{LoginDefender.guard} emits each
attempt's outcome in it, exactly once, as soon as it is known: C{login},
or C{login-failed} with why (the checker's reason, the ban, the full
queue, the rule that refused the session, an attempt the client
abandoned).  That event is the one line a failed login gets at C{info};
the defender's own bookkeeping lines are C{debug}, but for a ban.

"One address" is L{cosgw.policy.limits.canonical_ip}'s: IPv4-mapped
addresses count as IPv4, IPv6 per network of C{ipv6_prefix} bits (a /64 by
default: one host can pick a new address in its /64 for every attempt).
User names come from the client: they are logged escaped.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.policy.limits import canonical_ip
from cosgw.policy.turns import Abandoned, Turns

if TYPE_CHECKING:
    from cosgw.audit import Session
    from cosgw.policy.shared.bans import SharedBans

__all__ = ["LoginBanned", "LoginDefender", "TooManyLogins"]

log = Logger(namespace="cosgw.policy.defender")

T = TypeVar("T")

# A delay is base_delay * 2 ** (n - 1); past this exponent 2.0 ** exponent
# would overflow a float, and every sane configuration has long reached
# max_delay.
_MAX_EXPONENT = 1000


class LoginBanned(UnauthorizedLogin):
    """
    The client address is banned; carries C{.remaining} (seconds).

    A subclass of L{UnauthorizedLogin} so that a frontend which knows nothing
    of bans (Twisted's FTP answers any L{UnauthorizedLogin} with C{530})
    still refuses the login; one that knows says why and hangs up.
    """

    def __init__(self, remaining: float, message: Optional[str] = None) -> None:
        """
        @param remaining: seconds until the ban ends.
        @param message: what the client is told; by default, when to come
            back.
        """
        super().__init__(
            message
            or "Too many failed logins from this address;"
            f" try again in {math.ceil(remaining)} seconds"
        )
        self.remaining = remaining


class TooManyLogins(LoginBanned):
    """
    The address already has C{max_waiting} logins waiting to be checked.

    A L{LoginBanned}, so frontends refuse it the same way (FTP: C{421} with
    this message, then hang up; SSH: disconnect): an address with that many
    logins at once is flooding, and it was told nothing about its password.
    """

    def __init__(self) -> None:
        super().__init__(
            0.0, "Too many logins at once from this address; try again later"
        )


@dataclass
class _AddressRecord:
    """What the defender remembers about one client address."""

    #: Clock times of the failures still within the window, oldest first;
    #: a bounded deque that keeps only as many as can change an answer.
    failures: deque[float]
    #: Clock time at which the ban ends; in force while later than now.
    #: 0.0: never banned.
    banned_until: float = field(default=0.0)
    #: Clock time at which the last failure's delay ends: no password from
    #: the address is verified before it.
    quiet_until: float = field(default=0.0)


def _failures_to_remember(
    max_failures: int, base_delay: float, max_delay: float
) -> int:
    """
    How many failure times a record must keep so that the count it gives is
    exact wherever the count matters: up to C{max_failures} (the ban) and
    up to the first failure answered with C{max_delay}.  Keeping the newest
    N times gives min(true count, N), since if any of the newest N had left
    the window, every older one would have too.
    """
    saturated = 1
    if base_delay > 0:
        while (
            saturated <= _MAX_EXPONENT
            and base_delay * 2.0 ** (saturated - 1) < max_delay
        ):
            saturated += 1
    return max(max_failures, saturated, 1)


class LoginDefender:
    """
    A login defender shared by FTP and SFTP: growing delays for failed
    logins, temporary bans, and a fair share of password verification, per
    client address.

    The frontends call L{guard} around their portal login; L{banned},
    L{failed} and L{succeeded} are the bookkeeping in pieces.  It is not
    thread-safe: call it on the reactor thread.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 10,
        window: float = 600.0,
        ban_time: float = 1800.0,
        base_delay: float = 1.0,
        max_delay: float = 16.0,
        max_tracked: int = 100_000,
        ipv6_prefix: int = 64,
        max_in_flight: int = 2,
        max_waiting: int = 64,
    ) -> None:
        """
        @param clock: tells the time and runs the delays (the reactor, or a
            L{twisted.internet.task.Clock} in tests).
        @param max_failures: failures within C{window} that ban an address;
            0 never bans.
        @param window: seconds a failure counts for.
        @param ban_time: seconds a ban lasts.
        @param base_delay: seconds before the first failure is answered;
            each further failure within the window doubles it.
        @param max_delay: the longest delay before a failure is answered.
        @param max_tracked: most addresses remembered at once.
        @param ipv6_prefix: IPv6 clients count per network of this many
            bits (128: per address).
        @param max_in_flight: most logins of one address being verified at
            once.
        @param max_waiting: most logins of one address waiting for their
            turn; more fail at once with L{TooManyLogins}.  The default is
            the default of C{max_connections_per_ip}.
        @raise ValueError: a parameter is out of range.
        """
        self._check(max_failures, window, ban_time, base_delay, max_delay)
        if max_tracked < 1:
            raise ValueError(f"max_tracked must be at least 1: {max_tracked!r}")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be 0 to 128: {ipv6_prefix!r}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be 0 or more: {max_waiting!r}")
        self._clock = clock
        self._max_failures = max_failures
        self._window = window
        self._ban_time = ban_time
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._max_tracked = max_tracked
        self._ipv6_prefix = ipv6_prefix
        self._max_in_flight = max_in_flight
        self._max_waiting = max_waiting
        self._remembered = _failures_to_remember(max_failures, base_delay, max_delay)
        #: Address key -> record, least recently seen first.
        self._records: OrderedDict[str, _AddressRecord] = OrderedDict()
        #: Each address's share of password verification.
        self._turns = Turns(clock, max_in_flight, self._verdict)
        #: Addresses whose full queue was logged, until it drains: one
        #: warning per flood.
        self._overflowing: set[str] = set()
        #: Whether records are being forgotten for room; logged once per
        #: episode, so a flood of addresses does not double the log.
        self._full = False
        #: Bans imposed since start (the admin listener's metrics).
        self.bans = 0
        #: The cluster's failures and bans (L{cosgw.policy.shared.bans});
        #: None: this process alone.
        self.shared: Optional[SharedBans] = None

    @staticmethod
    def _check(
        max_failures: int,
        window: float,
        ban_time: float,
        base_delay: float,
        max_delay: float,
    ) -> None:
        """Refuse counting parameters out of range (see C{__init__})."""
        if max_failures < 0:
            raise ValueError(f"max_failures must be 0 or more: {max_failures!r}")
        if not window > 0:
            raise ValueError(f"window must be more than 0: {window!r}")
        if max_failures > 0 and not ban_time > 0:
            raise ValueError(
                f"ban_time must be more than 0 (max_failures=0 disables bans): {ban_time!r}"
            )
        if not base_delay >= 0 or not max_delay >= 0:
            raise ValueError(
                f"delays must be 0 or more: base_delay={base_delay!r}, max_delay={max_delay!r}"
            )

    def adopt_settings(self, other: LoginDefender) -> None:
        """
        A config reload: count, delay and ban as C{other} does from now on,
        keeping what this defender remembers (failures, delays, bans in
        force, logins waiting).  C{other} is built from the new config
        and checked there; the IPv6 prefix, which keys the records, stays.
        """
        self._max_failures = other._max_failures
        self._window = other._window
        self._ban_time = other._ban_time
        self._base_delay = other._base_delay
        self._max_delay = other._max_delay
        self._max_waiting = other._max_waiting
        self._remembered = other._remembered
        for record in self._records.values():
            record.failures = deque(record.failures, maxlen=self._remembered)

    @property
    def tracked(self) -> int:
        """How many addresses the defender remembers now."""
        return len(self._records)

    def _key(self, ip: str) -> str:
        """What C{ip} is counted under (see the module docstring)."""
        return canonical_ip(ip, self._ipv6_prefix)

    def banned(self, ip: str) -> float:
        """
        Seconds of ban left for C{ip}, 0.0 when it is not banned.

        Asking counts as seeing the address: a banned address that keeps
        trying stays remembered.
        """
        return self._ban_left(self._key(ip), self._clock.seconds())

    def _ban_left(self, key: str, now: float) -> float:
        record = self._lookup(key, now)
        if record is None:
            return 0.0
        return max(record.banned_until - now, 0.0)

    def failed(self, ip: str, user: str) -> float:
        """
        Record a failed login from C{ip} as C{user}; ban the address when
        this failure reaches C{max_failures}.

        @param user: the name the client tried, for the log only.
        @return: the seconds to wait before answering this failure; no
            password from the address is verified before then either.
        """
        now = self._clock.seconds()
        key = self._key(ip)
        record = self._lookup(key, now)
        if record is None:
            record = _AddressRecord(failures=deque(maxlen=self._remembered))
            self._records[key] = record
            self._make_room()
        record.failures.append(now)
        count = len(record.failures)
        delay = self._delay(count)
        record.quiet_until = max(record.quiet_until, now + delay)
        log.debug(
            "Login failed for user {user} from {ip}: failure {count} within"
            " {window} seconds, answered in {delay} seconds",
            user=for_log(user),
            ip=canonical_ip(ip),
            key=key,
            count=count,
            window=self._window,
            delay=delay,
        )
        if (
            self._max_failures
            and count >= self._max_failures
            and record.banned_until <= now
        ):
            record.banned_until = now + self._ban_time
            self.bans += 1
            log.warn(
                "Banning {key} for {ban_time} seconds after {failures} failed"
                " logins within {window} seconds (last from {ip}, user {user})",
                key=key,
                ip=canonical_ip(ip),
                user=for_log(user),
                failures=count,
                ban_time=self._ban_time,
                window=self._window,
            )
        return delay

    def succeeded(self, ip: str) -> None:
        """
        A login from C{ip} succeeded: forget its failures and their delay.
        A ban in force stays until it expires.
        """
        now = self._clock.seconds()
        key = self._key(ip)
        record = self._lookup(key, now)
        if record is None:
            return
        if record.banned_until > now:
            record.failures.clear()
            record.quiet_until = 0.0
        else:
            del self._records[key]

    def guard(
        self,
        ip: str,
        user: str,
        login: Callable[[], Deferred[T]],
        session: Optional[Session] = None,
    ) -> Deferred[T]:
        """
        Run C{login} for a client at C{ip} under the defender's policy.

        @param user: the name the client offered, for the log only.
        @param login: starts the actual login (typically a C{portal.login}
            call); called only when it is the attempt's turn, and not at all
            while C{ip} is banned.
        @param session: the client's audit session, where the outcome is
            emitted once (C{login} or C{login-failed}); None: not audited.
        @return: a L{Deferred} that fires with C{login}'s result as soon as
            it has one, or fails:
              - with L{LoginBanned} at once, while C{ip} is banned, and
                when a ban falls while the attempt waits its turn;
              - with L{TooManyLogins} at once, when C{max_waiting} attempts
                of the address are already waiting;
              - with C{login}'s L{UnauthorizedLogin} after the delay
                L{failed} gives, the failure being counted;
              - with any other failure of C{login} at once, uncounted.
            Cancelling it (a client that hangs up) takes a waiting attempt
            out of the queue, cancels one being verified (counted as a
            failure) or cancels the delay's timer, and fails it with
            L{twisted.internet.defer.CancelledError}: no call is left
            pending.
        """
        key = self._key(ip)
        remaining = self.banned(ip)
        if remaining > 0:
            self._refused_banned(ip, user, remaining)
            return fail(_reported(LoginBanned(remaining), session, user))
        running, waiting = self._turns.counts(key)
        if waiting >= self._max_waiting:
            if key not in self._overflowing:
                self._overflowing.add(key)
                log.warn(
                    "Logins from {key} refused unchecked: {running} being"
                    " verified and {waiting} waiting (last user {user})",
                    key=key,
                    user=for_log(user),
                    running=running,
                    waiting=waiting,
                )
            return fail(_reported(TooManyLogins(), session, user))
        if self.shared is not None:
            login = self.shared.first(key, login)
        d = self._turns.run(key, login)
        d.addCallbacks(
            self._passed,
            self._refused,
            callbackArgs=(ip, user, session),
            errbackArgs=(ip, user, session),
        )
        return d

    def mirror_ban(self, key: str, remaining: float) -> bool:
        """
        Another replica banned C{key} (a canonical address) for
        C{remaining} more seconds: hold the ban here too.

        @return: whether it was not held here already.
        """
        now = self._clock.seconds()
        record = self._lookup(key, now)
        if record is None:
            record = _AddressRecord(failures=deque(maxlen=self._remembered))
            self._records[key] = record
            self._make_room()
        held = record.banned_until > now
        record.banned_until = max(record.banned_until, now + remaining)
        return not held

    def bans_held(self) -> list[tuple[str, float]]:
        """(canonical address, seconds left) of every ban in force here."""
        now = self._clock.seconds()
        return [
            (key, record.banned_until - now)
            for key, record in self._records.items()
            if record.banned_until > now
        ]

    def in_flight(self, ip: str) -> tuple[int, int]:
        """(being verified, waiting) logins from C{ip}'s address now."""
        return self._turns.counts(self._key(ip))

    def _verdict(self, key: str) -> Union[LoginBanned, float]:
        """
        Asked before each verification of C{key}: fail with the ban in
        force, or wait for the last failure's delay to end.
        """
        now = self._clock.seconds()
        remaining = self._ban_left(key, now)
        if remaining > 0:
            return LoginBanned(remaining)
        record = self._lookup(key, now)
        return 0.0 if record is None else max(record.quiet_until - now, 0.0)

    def _refused_banned(self, ip: str, user: str, remaining: float) -> None:
        log.debug(
            "Login for user {user} from {ip} refused unchecked: banned"
            " for {remaining} more seconds",
            user=for_log(user),
            ip=canonical_ip(ip),
            remaining=remaining,
        )

    def _passed(self, result: T, ip: str, user: str, session: Optional[Session]) -> T:
        """A login succeeded: forget the failures, pass the result on."""
        self._drained(ip)
        self.succeeded(ip)
        if self.shared is not None:
            self.shared.forgive(self._key(ip))
        if session is not None:
            # The account's name once the realm has named the session.
            session.emit("login", user=session.user or user)
        return result

    def _drained(self, ip: str) -> None:
        """Once no attempt of C{ip}'s address waits, a full queue may be
        logged again."""
        key = self._key(ip)
        if key in self._overflowing and not self._turns.counts(key)[1]:
            self._overflowing.discard(key)

    def _refused(
        self, failure: Failure, ip: str, user: str, session: Optional[Session]
    ) -> Union[Failure, Deferred[Any]]:
        """
        A login failed: count an L{UnauthorizedLogin} and fail after the
        delay; count an abandoned one; pass anything else on at once.  A
        L{LoginBanned} (a ban that fell while it waited, or from a nested
        guard) checked no password: not counted.
        """
        self._drained(ip)
        if failure.value is not None:
            _reported(failure.value, session, user)
        if failure.check(Abandoned):
            log.debug(
                "Login for user {user} from {ip} abandoned while being"
                " verified: counted as a failure",
                user=for_log(user),
                ip=canonical_ip(ip),
            )
            self.failed(ip, user)
            if self.shared is not None:
                self.shared.failed(ip, self._key(ip), user)
            return failure
        if failure.check(LoginBanned):
            value = failure.value
            assert isinstance(value, LoginBanned)
            self._refused_banned(ip, user, value.remaining)
            return failure
        if not failure.check(UnauthorizedLogin):
            return failure
        delay = self.failed(ip, user)
        if self.shared is not None:
            return self.shared.answer(ip, self._key(ip), user, delay, failure)
        if delay <= 0:
            return failure
        # Returning the Failure from the timer's callback fails the Deferred
        # with that very Failure, traceback and all.
        return deferLater(self._clock, delay, lambda: failure)

    def _delay(self, count: int) -> float:
        """Seconds before answering the C{count}-th failure in the window."""
        exponent = min(count - 1, _MAX_EXPONENT)
        return min(self._base_delay * 2.0**exponent, self._max_delay)

    def _lookup(self, key: str, now: float) -> _AddressRecord | None:
        """
        The record of C{key}, its expired failures dropped and marked as the
        most recently seen; None when there is none or nothing in it is
        still in force.  Also drops idle records from the old end.
        """
        self._drop_idle(now)
        record = self._records.get(key)
        if record is None:
            return None
        self._prune(record, now)
        if self._idle(record, now):
            del self._records[key]
            return None
        self._records.move_to_end(key)
        return record

    def _prune(self, record: _AddressRecord, now: float) -> None:
        """Drop the failures that have left the window."""
        failures = record.failures
        horizon = now - self._window
        while failures and failures[0] <= horizon:
            failures.popleft()

    def _idle(self, record: _AddressRecord, now: float) -> bool:
        """Whether nothing in C{record} is in force any more."""
        newest = record.failures[-1] if record.failures else -math.inf
        return (
            newest <= now - self._window
            and record.banned_until <= now
            and record.quiet_until <= now
        )

    def _drop_idle(self, now: float) -> None:
        """
        Forget idle records from the least recently seen end, stopping at
        the first one still in force: amortised O(1) per call, and an
        address that stopped trying long ago does not hold memory until
        C{max_tracked} pushes it out.
        """
        records = self._records
        while records:
            key, record = next(iter(records.items()))
            if not self._idle(record, now):
                return
            del records[key]

    def _make_room(self) -> None:
        """Forget the least recently seen records beyond C{max_tracked}."""
        records = self._records
        if len(records) <= self._max_tracked:
            self._full = False
            return
        if not self._full:
            self._full = True
            log.warn(
                "Login defender remembers {max_tracked} addresses, its limit;"
                " forgetting the least recently seen (and their bans)",
                max_tracked=self._max_tracked,
            )
        while len(records) > self._max_tracked:
            records.popitem(last=False)


_E = TypeVar("_E", bound=BaseException)


def _reported(error: _E, session: Optional[Session], user: str) -> _E:
    """Emit C{login-failed} for C{error} in C{session}, if any."""
    if session is not None:
        shown: BaseException = error
        if isinstance(error, CancelledError) and not str(error):
            stage = " while being verified" if isinstance(error, Abandoned) else ""
            shown = type(error)(f"abandoned by the client{stage}")
        session.emit("login-failed", shown, user=user)
    return error
