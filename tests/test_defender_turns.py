"""
Tests for L{cosgw.policy.defender}'s share of password verification per
address: the ban and the delay are checked when an attempt is about to be
verified, at most two attempts per address are verified at once, the rest
wait in a bounded queue; and IPv6 clients count per network, user names are
logged escaped.  All on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from cosgw.policy.defender import LoginBanned, LoginDefender, TooManyLogins
from tests.logevents import LogEvents

IP = "192.0.2.1"
OTHER = "198.51.100.7"


class _Logins:
    """Login callables whose Deferreds the test fires."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.calls = 0
        self.cancelled = 0

    def __call__(self) -> Deferred[Any]:
        self.calls += 1

        def cancel(_: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append(d)
        return d

    def fail_next(self) -> None:
        self.pending.pop(0).errback(UnauthorizedLogin("wrong password"))

    def succeed_next(self, result: Any = "alice") -> None:
        self.pending.pop(0).callback(result)


class TurnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.defender = LoginDefender(self.clock, max_failures=5, max_waiting=8)
        self.logins = _Logins()
        self.events = LogEvents(self, "cosgw.policy.defender")

    def guard(self, ip: str = IP, user: str = "alice") -> Deferred[Any]:
        return self.defender.guard(ip, user, self.logins)

    def test_two_verified_at_once_per_address(self) -> None:
        """
        Of ten parallel attempts two are verified; another address's
        attempt is verified at once all the same.
        """
        attempts = [self.guard() for _ in range(8)]
        self.assertEqual(self.logins.calls, 2)
        self.assertEqual(self.defender.in_flight(IP), (2, 6))
        other = _Logins()
        d = self.defender.guard(OTHER, "bob", other)
        self.assertEqual(other.calls, 1)
        other.succeed_next("bob")
        self.assertEqual(self.successResultOf(d), "bob")
        self.logins.succeed_next()
        self.assertEqual(self.successResultOf(attempts[0]), "alice")
        self.assertEqual(self.logins.calls, 3)

    def test_no_verification_during_the_delay(self) -> None:
        """
        After a failure, the next attempt of the address is verified only
        once that failure's delay (1 s) has passed.
        """
        first, second, third = self.guard(), self.guard(), self.guard()
        self.logins.fail_next()  # failure 1: 1 s
        self.assertEqual(self.logins.calls, 2)
        self.clock.advance(1.0 - 2**-10)
        self.assertEqual(self.logins.calls, 2)
        self.clock.advance(2**-10)
        self.failureResultOf(first, UnauthorizedLogin)
        self.assertEqual(self.logins.calls, 3)
        self.logins.succeed_next()
        self.logins.succeed_next()
        self.successResultOf(second)
        self.successResultOf(third)

    def test_a_ban_fails_the_waiting_attempts_unverified(self) -> None:
        """
        Sixty parallel wrong passwords: at most C{max_failures + 1} are
        verified, each one counted; the rest fail with L{LoginBanned} the
        moment the ban falls, or with L{TooManyLogins} beyond the queue.
        """
        attempts = [self.guard() for _ in range(60)]
        too_many = [d for d in attempts if d.called]
        self.assertEqual(len(too_many), 50)
        for d in too_many:
            self.failureResultOf(d, TooManyLogins)
        for _ in range(100):
            if self.logins.pending:
                self.logins.fail_next()
            elif self.clock.getDelayedCalls():
                self.clock.advance(
                    min(c.getTime() for c in self.clock.getDelayedCalls())
                )
            else:
                break
        self.assertLessEqual(self.logins.calls, 6)
        results = [self.failureResultOf(d, UnauthorizedLogin) for d in attempts[:10]]
        banned = [r for r in results if r.check(LoginBanned)]
        self.assertEqual(len(banned), 10 - self.logins.calls)
        self.assertEqual(
            len(self.events.at(LogLevel.debug)) - len(banned),
            self.logins.calls,  # one "Login failed" line per verification
        )
        self.assertGreater(self.defender.banned(IP), 0)

    def test_queue_full_is_logged_once_per_flood(self) -> None:
        for _ in range(10):
            self.guard()
        refused = [self.guard(user=f"u{n}") for n in range(5)]
        for d in refused:
            self.assertEqual(
                str(self.failureResultOf(d, TooManyLogins).value),
                "Too many logins at once from this address; try again later",
            )
        warnings = self.events.at(LogLevel.warn)
        self.assertEqual([(w["key"], w["waiting"]) for w in warnings], [(IP, 8)])

    def test_cancel_waiting_attempt(self) -> None:
        """A waiting attempt cancelled is never verified nor counted."""
        self.guard()
        self.guard()
        d = self.guard()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.logins.succeed_next()
        self.logins.succeed_next()
        self.assertEqual(self.logins.calls, 2)
        self.assertEqual(self.defender.tracked, 0)

    def test_cancel_attempt_being_verified_counts(self) -> None:
        """An attempt abandoned while being verified is a failed login."""
        d = self.guard()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.logins.cancelled, 1)
        self.assertEqual(self.defender.failed(IP, "alice"), 2.0)

    def test_parameters_are_checked(self) -> None:
        for kwargs in [{"ipv6_prefix": 129}, {"max_in_flight": 0}, {"max_waiting": -1}]:
            self.assertRaises(ValueError, LoginDefender, self.clock, **kwargs)


class IPv6Tests(SynchronousTestCase):
    """IPv6 clients count per network of ipv6_prefix bits."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_one_64_is_one_client(self) -> None:
        """Failures from anywhere in a /64 add up and ban the whole /64."""
        defender = LoginDefender(self.clock, max_failures=3)
        for n in range(3):
            defender.failed(f"2001:db8:1:2::{n + 1:x}", "alice")
        self.assertEqual(defender.banned("2001:db8:1:2:ffff:ffff:ffff:ffff"), 1800.0)
        self.assertEqual(defender.banned("2001:db8:1:3::1"), 0.0)
        self.assertEqual(defender.tracked, 1)

    def test_prefix_is_configurable(self) -> None:
        per_address = LoginDefender(self.clock, max_failures=2, ipv6_prefix=128)
        per_address.failed("2001:db8::1", "a")
        self.assertEqual(per_address.failed("2001:db8::2", "a"), 1.0)
        per_56 = LoginDefender(self.clock, max_failures=2, ipv6_prefix=56)
        per_56.failed("2001:db8:0:1::1", "a")
        self.assertEqual(per_56.failed("2001:db8:0:ff::1", "a"), 2.0)
        self.assertEqual(per_56.banned("2001:db8:0:aa::"), 1800.0)

    def test_ipv4_mapped_stays_ipv4(self) -> None:
        """A /64 does not swallow IPv4-mapped addresses' neighbours."""
        defender = LoginDefender(self.clock, max_failures=1)
        defender.failed("::ffff:192.0.2.1", "alice")
        self.assertEqual(defender.banned("192.0.2.1"), 1800.0)
        self.assertEqual(defender.banned("::ffff:192.0.2.2"), 0.0)

    def test_the_ban_is_logged_with_its_network(self) -> None:
        events = LogEvents(self, "cosgw.policy.defender")
        defender = LoginDefender(self.clock, max_failures=1)
        defender.failed("2001:DB8:1:2::5", "alice")
        (warning,) = events.at(LogLevel.warn)
        self.assertEqual(
            (warning["key"], warning["ip"]), ("2001:db8:1:2::/64", "2001:db8:1:2::5")
        )


class LogEscapingTests(SynchronousTestCase):
    def test_user_names_are_escaped(self) -> None:
        """A user name cannot forge a log line: CR, LF and the rest escaped."""
        clock = Clock()
        events = LogEvents(self, "cosgw.policy.defender")
        defender = LoginDefender(clock, max_failures=1)
        forged = "eve\r\n2026-01-01 Login succeeded for user root\x1b[0m"
        defender.failed(IP, forged)
        self.failureResultOf(defender.guard(IP, forged, _Logins()), LoginBanned)
        self.assertEqual(len(events.events), 3)
        for event in events.events:
            self.assertEqual(
                event["user"],
                "eve\\r\\n2026-01-01 Login succeeded for user root\\x1b[0m",
            )
            self.assertNotIn("\n", formatEvent(event))
