"""
Tests for L{cosgw.policy.defender}: growing delays, bans, their expiry, and bounded
memory, all on a L{Clock} so every delay is checked to the second.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from cosgw.policy.defender import LoginBanned, LoginDefender
from tests.logevents import LogEvents

IP = "192.0.2.1"
OTHER = "198.51.100.7"

#: A moment just before a deadline; a power of two, so that clock arithmetic
#: with it is exact.
EPS = 2.0**-10


class _Login:
    """A login callable that records its calls and fails or succeeds."""

    def __init__(self, outcome: Any = None) -> None:
        self.calls = 0
        self.outcome = outcome

    def __call__(self) -> Deferred[Any]:
        self.calls += 1
        if isinstance(self.outcome, BaseException):
            return fail(self.outcome)
        return succeed(self.outcome)


def _Events(case: SynchronousTestCase) -> LogEvents:
    """The cosgw.policy.defender namespace's log events during C{case}."""
    return LogEvents(case, "cosgw.policy.defender")


class DelayTests(SynchronousTestCase):
    """Failed logins are answered after growing delays."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.defender = LoginDefender(self.clock, max_failures=0)

    def fail_once(self, ip: str = IP, user: str = "alice") -> Deferred[Any]:
        return self.defender.guard(ip, user, _Login(UnauthorizedLogin("no")))

    def assert_fires_after(self, d: Deferred[Any], delay: float) -> None:
        """C{d} has not failed just before C{delay} seconds, and has at it."""
        self.clock.advance(delay - EPS)
        self.assertNoResult(d)
        self.clock.advance(EPS)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_delays_double_up_to_the_maximum(self) -> None:
        """The n-th failure waits min(2 ** (n - 1), 16) seconds."""
        for expected in [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]:
            d = self.fail_once()
            self.assert_fires_after(d, expected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_returns_the_delay(self) -> None:
        """L{LoginDefender.failed} returns the delay it would apply."""
        delays = [self.defender.failed(IP, "alice") for _ in range(6)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 16.0])

    def test_custom_delays(self) -> None:
        """base_delay and max_delay shape the sequence."""
        defender = LoginDefender(
            self.clock, max_failures=0, base_delay=0.5, max_delay=3.0
        )
        delays = [defender.failed(IP, "alice") for _ in range(5)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 3.0, 3.0])

    def test_no_delay_fails_at_once(self) -> None:
        """With base_delay 0 a failure passes on in the same turn."""
        defender = LoginDefender(self.clock, max_failures=0, base_delay=0.0)
        error = UnauthorizedLogin("no")
        d = defender.guard(IP, "alice", _Login(error))
        self.assertIs(self.failureResultOf(d, UnauthorizedLogin).value, error)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_failure_is_passed_on_unchanged(self) -> None:
        """After the delay the login's own exception is what fails."""
        error = UnauthorizedLogin("wrong password")
        d = self.defender.guard(IP, "alice", _Login(error))
        self.clock.advance(1.0)
        self.assertIs(self.failureResultOf(d, UnauthorizedLogin).value, error)

    def test_subclass_of_unauthorized_is_a_failure(self) -> None:
        """A subclass of L{UnauthorizedLogin} is counted and delayed."""

        class Expired(UnauthorizedLogin):
            pass

        d = self.defender.guard(IP, "alice", _Login(Expired()))
        self.clock.advance(1.0 - EPS)
        self.assertNoResult(d)
        self.clock.advance(EPS)
        self.failureResultOf(d, Expired)
        self.assertEqual(self.defender.failed(IP, "alice"), 2.0)

    def test_synchronous_raise_is_a_failure(self) -> None:
        """A login callable that raises is treated like one that fails."""

        def login() -> Deferred[Any]:
            raise UnauthorizedLogin("no")

        d = self.defender.guard(IP, "alice", login)
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_window_expiry(self) -> None:
        """A failure counts for C{window} seconds, then no longer."""
        defender = LoginDefender(self.clock, max_failures=0, window=60.0)
        self.assertEqual(defender.failed(IP, "alice"), 1.0)  # at t=0
        self.clock.advance(30.0)
        self.assertEqual(defender.failed(IP, "alice"), 2.0)  # at t=30
        self.clock.advance(30.0 - EPS)
        self.assertEqual(defender.failed(IP, "alice"), 4.0)  # t=60-EPS: 3 in
        self.clock.advance(EPS)
        # t=60: the first failure has left; 2 remain, this is the 3rd.
        self.assertEqual(defender.failed(IP, "alice"), 4.0)
        self.clock.advance(60.0)
        # t=120: the failures at 30 and 60-EPS have left, and 60 just did.
        self.assertEqual(defender.failed(IP, "alice"), 1.0)

    def test_success_is_not_delayed(self) -> None:
        """A success after failures (their delays over) fires in the same turn."""
        for _ in range(3):
            self.defender.failed(IP, "alice")
        self.clock.advance(4.0)
        login = _Login("alice")
        d = self.defender.guard(IP, "alice", login)
        self.assertEqual(self.successResultOf(d), "alice")
        self.assertEqual(login.calls, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_success_resets_the_count(self) -> None:
        """After a success the next failure waits base_delay again."""
        for _ in range(3):
            self.defender.failed(IP, "alice")
        self.clock.advance(4.0)
        self.successResultOf(self.defender.guard(IP, "alice", _Login("alice")))
        self.assertEqual(self.defender.tracked, 0)
        self.assertEqual(self.defender.failed(IP, "alice"), 1.0)

    def test_other_errors_pass_through_uncounted(self) -> None:
        """A checker crash fails at once and is not a failed login."""
        for error in [RuntimeError("checker crashed"), UnhandledCredentials("x")]:
            d = self.defender.guard(IP, "alice", _Login(error))
            self.assertIs(self.failureResultOf(d).value, error)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.defender.tracked, 0)
        self.assertEqual(self.defender.failed(IP, "alice"), 1.0)

    def test_cancel_during_the_delay(self) -> None:
        """Cancelling a delayed failure leaves no call pending."""
        d = self.fail_once()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_addresses_are_counted_apart(self) -> None:
        """Failures from one address do not slow another."""
        for _ in range(4):
            self.defender.failed(IP, "alice")
        self.assertEqual(self.defender.failed(OTHER, "alice"), 1.0)
        self.assertEqual(self.defender.failed(IP, "alice"), 16.0)

    def test_failures_are_logged(self) -> None:
        """
        Each failure is logged at debug with address, user and count (the
        frontends' login-failed audit event is its line at info).
        """
        events = _Events(self)
        self.defender.failed(IP, "alice")
        self.defender.failed(IP, "bob")
        self.assertEqual(events.at(LogLevel.info), [])
        info = events.at(LogLevel.debug)
        self.assertEqual(
            [(e["ip"], e["user"], e["count"], e["delay"]) for e in info],
            [(IP, "alice", 1, 1.0), (IP, "bob", 2, 2.0)],
        )
        self.assertEqual(events.at(LogLevel.warn), [])


class BanTests(SynchronousTestCase):
    """Enough failures within the window ban the address for a while."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.defender = LoginDefender(
            self.clock, max_failures=3, window=600.0, ban_time=1800.0
        )

    def ban(self, ip: str = IP) -> None:
        for _ in range(3):
            self.defender.failed(ip, "alice")

    def test_ban_after_max_failures(self) -> None:
        """The max_failures-th failure bans; the ones before do not."""
        self.defender.failed(IP, "alice")
        self.defender.failed(IP, "alice")
        self.assertEqual(self.defender.banned(IP), 0.0)
        self.defender.failed(IP, "alice")
        self.assertEqual(self.defender.banned(IP), 1800.0)
        self.clock.advance(100.0)
        self.assertEqual(self.defender.banned(IP), 1700.0)

    def test_the_banning_failure_is_answered_after_its_delay(self) -> None:
        """The failure that bans is still an ordinary delayed failure."""
        self.defender.failed(IP, "alice")
        self.defender.failed(IP, "alice")
        self.clock.advance(2.0)
        d = self.defender.guard(IP, "alice", _Login(UnauthorizedLogin("no")))
        self.clock.advance(4.0 - EPS)
        self.assertNoResult(d)
        self.clock.advance(EPS)
        failure = self.failureResultOf(d, UnauthorizedLogin)
        self.assertNotIsInstance(failure.value, LoginBanned)

    def test_banned_login_fails_at_once_unchecked(self) -> None:
        """While banned, guard fails with L{LoginBanned} and never logs in."""
        self.ban()
        self.clock.advance(800.0)
        login = _Login("alice")
        d = self.defender.guard(IP, "alice", login)
        banned = self.failureResultOf(d, LoginBanned).value
        self.assertIsInstance(banned, UnauthorizedLogin)
        self.assertEqual(banned.remaining, 1000.0)
        self.assertEqual(
            str(banned),
            "Too many failed logins from this address; try again in 1000 seconds",
        )
        self.assertEqual(login.calls, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ban_expires(self) -> None:
        """At ban_time the address may log in again."""
        self.ban()
        self.clock.advance(1800.0 - EPS)
        self.failureResultOf(
            self.defender.guard(IP, "alice", _Login("alice")), LoginBanned
        )
        self.clock.advance(EPS)
        self.assertEqual(self.defender.banned(IP), 0.0)
        login = _Login("alice")
        self.assertEqual(
            self.successResultOf(self.defender.guard(IP, "alice", login)), "alice"
        )
        self.assertEqual(login.calls, 1)

    def test_after_the_ban_delays_start_over(self) -> None:
        """With ban_time longer than the window, a ban ends with no failures."""
        self.ban()
        self.clock.advance(1800.0)
        self.assertEqual(self.defender.failed(IP, "alice"), 1.0)
        self.assertEqual(self.defender.banned(IP), 0.0)

    def test_ban_shorter_than_window_bans_again(self) -> None:
        """Failures still in the window count on after a short ban."""
        defender = LoginDefender(
            self.clock, max_failures=3, window=600.0, ban_time=60.0
        )
        for _ in range(3):
            defender.failed(IP, "alice")
        self.clock.advance(60.0)
        self.assertEqual(defender.banned(IP), 0.0)
        self.assertEqual(defender.failed(IP, "alice"), 8.0)
        self.assertEqual(defender.banned(IP), 60.0)

    def test_other_address_unaffected(self) -> None:
        """While one address is banned another logs in at once."""
        self.ban()
        self.assertEqual(self.defender.banned(OTHER), 0.0)
        login = _Login("alice")
        self.assertEqual(
            self.successResultOf(self.defender.guard(OTHER, "alice", login)), "alice"
        )
        self.assertEqual(login.calls, 1)
        self.failureResultOf(
            self.defender.guard(IP, "alice", _Login("alice")), LoginBanned
        )

    def test_success_does_not_lift_a_ban(self) -> None:
        """A success under way when the ban fell leaves the ban in force."""
        self.ban()
        self.defender.succeeded(IP)
        self.assertEqual(self.defender.banned(IP), 1800.0)
        # Its failures are forgotten, though: the count starts over (the
        # fourth failure would wait 8 seconds) and the ban is not extended.
        self.clock.advance(10.0)
        self.assertEqual(self.defender.failed(IP, "alice"), 1.0)
        self.assertEqual(self.defender.banned(IP), 1790.0)

    def test_failures_while_banned_do_not_extend_the_ban(self) -> None:
        """Logins in flight when the ban fell neither extend nor re-log it."""
        events = _Events(self)
        self.ban()
        self.clock.advance(10.0)
        self.assertEqual(self.defender.failed(IP, "alice"), 8.0)
        self.assertEqual(self.defender.banned(IP), 1790.0)
        self.assertEqual(len(events.at(LogLevel.warn)), 1)

    def test_ban_is_logged_once(self) -> None:
        """One warning with address, user tried, failures and ban time."""
        events = _Events(self)
        self.defender.failed(IP, "alice")
        self.defender.failed(IP, "bob")
        self.defender.failed(IP, "carol")
        self.failureResultOf(
            self.defender.guard(IP, "dave", _Login("dave")), LoginBanned
        )
        warnings = events.at(LogLevel.warn)
        self.assertEqual(
            [(e["ip"], e["user"], e["failures"], e["ban_time"]) for e in warnings],
            [(IP, "carol", 3, 1800.0)],
        )

    def test_zero_max_failures_never_bans(self) -> None:
        """max_failures=0: a thousand failures, no ban."""
        defender = LoginDefender(self.clock, max_failures=0)
        for _ in range(1000):
            defender.failed(IP, "alice")
        self.assertEqual(defender.banned(IP), 0.0)
        self.clock.advance(16.0)
        login = _Login("alice")
        self.assertEqual(
            self.successResultOf(defender.guard(IP, "alice", login)), "alice"
        )

    def test_banned_error_inside_login_passes_uncounted(self) -> None:
        """A L{LoginBanned} raised by the login itself is not counted."""
        d = self.defender.guard(IP, "alice", _Login(LoginBanned(5.0)))
        self.assertEqual(self.failureResultOf(d, LoginBanned).value.remaining, 5.0)
        self.assertEqual(self.defender.tracked, 0)


class AddressTests(SynchronousTestCase):
    """Address forms and bounded memory."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_ipv4_mapped_counts_as_ipv4(self) -> None:
        """::ffff:192.0.2.1 and 192.0.2.1 share failures and bans."""
        defender = LoginDefender(self.clock, max_failures=2)
        self.assertEqual(defender.failed("::ffff:192.0.2.1", "alice"), 1.0)
        self.assertEqual(defender.failed(IP, "alice"), 2.0)
        self.assertEqual(defender.banned("::ffff:192.0.2.1"), 1800.0)
        self.assertEqual(defender.banned(IP), 1800.0)
        self.assertEqual(defender.tracked, 1)

    def test_ipv6_spellings_are_one_address(self) -> None:
        """Two spellings of one IPv6 address are one address."""
        defender = LoginDefender(self.clock, max_failures=0)
        defender.failed("2001:DB8:0:0::1", "alice")
        self.assertEqual(defender.failed("2001:db8::1", "alice"), 2.0)

    def test_unparsable_address_is_tracked_as_given(self) -> None:
        """A UNIX socket peer is tracked under its text."""
        defender = LoginDefender(self.clock, max_failures=1)
        defender.failed("/run/cosgw.sock", "alice")
        self.assertEqual(defender.banned("/run/cosgw.sock"), 1800.0)
        self.assertEqual(defender.banned(IP), 0.0)

    def test_bounded_tracking_forgets_least_recently_seen(self) -> None:
        """Beyond max_tracked the least recently seen address is dropped."""
        events = _Events(self)
        defender = LoginDefender(self.clock, max_failures=2, max_tracked=3)
        defender.failed("10.0.0.1", "a")
        defender.failed("10.0.0.1", "a")  # banned
        defender.failed("10.0.0.2", "a")
        defender.failed("10.0.0.3", "a")
        self.assertEqual(defender.banned("10.0.0.1"), 1800.0)  # seen again
        defender.failed("10.0.0.4", "a")  # 10.0.0.2 is the oldest seen
        self.assertEqual(defender.tracked, 3)
        self.assertEqual(defender.failed("10.0.0.2", "a"), 1.0)  # forgotten
        # 10.0.0.3 made room for 10.0.0.2.
        self.assertEqual(defender.tracked, 3)
        self.assertEqual(defender.failed("10.0.0.4", "a"), 2.0)
        self.assertEqual(defender.banned("10.0.0.1"), 1800.0)
        full = [e for e in events.at(LogLevel.warn) if "max_tracked" in e]
        self.assertEqual(len(full), 1)

    def test_many_addresses_stay_bounded(self) -> None:
        """Two thousand addresses never grow the table past max_tracked."""
        defender = LoginDefender(self.clock, max_tracked=50)
        for n in range(2_000):
            defender.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "a")
            self.assertLessEqual(defender.tracked, 50)
        self.assertEqual(defender.tracked, 50)

    def test_idle_records_are_dropped(self) -> None:
        """Once every failure has left the window the record is dropped."""
        defender = LoginDefender(self.clock, max_failures=0, window=60.0)
        defender.failed("10.0.0.1", "a")
        self.clock.advance(30.0)
        defender.failed("10.0.0.2", "a")
        self.clock.advance(30.0)
        self.assertEqual(defender.banned(OTHER), 0.0)
        self.assertEqual(defender.tracked, 1)
        self.clock.advance(30.0)
        self.assertEqual(defender.banned(OTHER), 0.0)
        self.assertEqual(defender.tracked, 0)

    def test_expired_ban_record_is_dropped(self) -> None:
        """A ban that has run out holds no memory."""
        defender = LoginDefender(
            self.clock, max_failures=1, window=60.0, ban_time=120.0
        )
        defender.failed(IP, "a")
        self.clock.advance(119.0)
        self.assertEqual(defender.banned(OTHER), 0.0)
        self.assertEqual(defender.tracked, 1)
        self.clock.advance(1.0)
        self.assertEqual(defender.banned(OTHER), 0.0)
        self.assertEqual(defender.tracked, 0)

    def test_remembered_failures_are_bounded(self) -> None:
        """Failures kept per address stop at what can change an answer."""
        defender = LoginDefender(self.clock, max_failures=0)
        for _ in range(1000):
            defender.failed(IP, "a")
        record = defender._records[IP]
        # 1, 2, 4, 8, 16: the fifth failure reaches max_delay.
        self.assertEqual(len(record.failures), 5)

    def test_parameters_are_checked(self) -> None:
        """Out-of-range parameters are refused at construction."""
        for kwargs in [
            {"max_failures": -1},
            {"window": 0.0},
            {"ban_time": 0.0},
            {"base_delay": -1.0},
            {"max_delay": -1.0},
            {"max_tracked": 0},
        ]:
            self.assertRaises(ValueError, LoginDefender, self.clock, **kwargs)
        # ban_time does not matter when bans are off.
        LoginDefender(self.clock, max_failures=0, ban_time=0.0)
