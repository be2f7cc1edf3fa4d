"""
The login defender's failed-login counts and bans, shared by replicas.

Each failed login is added to its address's sorted set in Redis, scored by
its time, and the ban falls in the same script when the failures within the
window reach C{max_failures} (L{scripts.FAILED}), so a guesser spreading its
attempts over replicas is banned after the same number as on one.  Before a
password is verified, the address's ban is read from Redis
(L{scripts.BANNED}): a ban earned on one replica refuses the next login on
every other, with the time left, and is remembered by that replica's
defender too (its connection-time check is synchronous).  The delays
before a failure is answered stay each replica's own.  Whenever the
connection is made again, a replica puts back every ban it holds
(L{scripts.BAN}): a Redis restarted without persistence, or away while a
replica banned on its own, has the cluster's bans again (failures within
the window are not put back: they start again from none).

While Redis cannot be reached: C{open}, the replica's own counts and bans
decide (a failure is counted here only); C{closed}, a login is refused
before its password is checked (L{ClusterUnavailable}: FTP C{421}, SSH a
disconnect), since whether the address is banned cannot be known.  A
failure's answer waits for Redis at most its timeout, then its delay.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Union

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.policy.defender import LoginBanned
from cosgw.policy.limits import canonical_ip
from cosgw.policy.shared.connection import SharedStateUnavailable, SharedStore
from cosgw.policy.shared.scripts import BAN, BANNED, FAILED, FORGIVE

if TYPE_CHECKING:
    from cosgw.policy.defender import LoginDefender

__all__ = ["ClusterUnavailable", "SharedBans"]

log = Logger(namespace="cosgw.policy.defender")

T = TypeVar("T")


class ClusterUnavailable(LoginBanned):
    """
    Whether the address is banned cannot be known (Redis away,
    C{shared_state_failure = closed}): refused like a ban, unchecked and
    uncounted.
    """

    def __init__(self) -> None:
        super().__init__(0.0, "Login service temporarily unavailable; try again later")


class SharedBans:
    """A defender's link to the cluster's failures and bans."""

    def __init__(self, store: SharedStore, defender: LoginDefender) -> None:
        self.store = store
        self._defender = defender
        self._serial = itertools.count()
        store.on_connected(self.republish)

    def republish(self) -> None:
        """Put every ban this replica holds back in Redis (see above)."""
        now = self.store.now()
        for address, left in self._defender.bans_held():
            d = self.store.call(
                BAN, [self.store.keys.ban(address)], [now, max(1, int(left * 1000))]
            )
            d.addErrback(lambda f: None if f.check(SharedStateUnavailable) else f)
            d.addErrback(lambda f: log.failure("Putting a ban back in Redis failed", f))

    def banned(self, address: str) -> Deferred[float]:
        """
        Seconds of ban left for C{address} (a canonical address), 0.0 when
        none; fails with L{SharedStateUnavailable} while Redis is away.
        """
        d = self.store.call(BANNED, [self.store.keys.ban(address)], [self.store.now()])
        return d.addCallback(lambda left: int(left) / 1000)

    def first(
        self, address: str, login: Callable[[], Deferred[T]]
    ) -> Callable[[], Deferred[T]]:
        """C{login}, run only once Redis says C{address} is not banned."""

        def start() -> Deferred[T]:
            def verdict(left: float) -> Deferred[T]:
                if left > 0:
                    self._defender.mirror_ban(address, left)
                    raise LoginBanned(left)
                return login()

            def away(failure: Failure) -> Union[Failure, Deferred[T]]:
                if not failure.check(SharedStateUnavailable):
                    return failure
                if self.store.fallback("login defender"):
                    return login()
                raise ClusterUnavailable()

            return self.banned(address).addCallbacks(verdict, away)

        return start

    def failed(self, ip: str, address: str, user: str) -> Deferred[None]:
        """
        Count a failed login from C{ip} in the cluster, banning its
        C{address} when this failure reaches C{max_failures}; the cluster's
        ban is remembered here too.  Never fails.
        """
        defender = self._defender
        keys = self.store.keys
        now = self.store.now()
        d = self.store.call(
            FAILED,
            [keys.failures(address), keys.ban(address)],
            [
                now,
                int(defender._window * 1000),
                defender._max_failures,
                int(defender._ban_time * 1000),
                f"{self.store.replica}:{next(self._serial)}",
                max(defender._max_failures, 1),
            ],
        )

        def counted(answer: list[int]) -> None:
            failures, left, banned_here = (
                int(answer[0]),
                int(answer[1]) / 1000,
                answer[2],
            )
            if left <= 0:
                return
            if defender.mirror_ban(address, left) and banned_here:
                defender.bans += 1
                log.warn(
                    "Banning {key} for {ban_time} seconds after {failures} failed"
                    " logins within {window} seconds (last from {ip}, user {user})"
                    " across replicas",
                    key=address,
                    ip=canonical_ip(ip),
                    user=for_log(user),
                    failures=failures,
                    ban_time=defender._ban_time,
                    window=defender._window,
                )

        def away(failure: Failure) -> None:
            if failure.check(SharedStateUnavailable):
                self.store.fallback("login defender")
            else:
                log.failure("Counting a failed login in Redis failed", failure)

        return d.addCallbacks(counted, away)

    def answer(
        self, ip: str, address: str, user: str, delay: float, failure: Failure
    ) -> Deferred[Any]:
        """A failed login's answer: once the cluster counted it, after
        C{delay} seconds, C{failure}."""
        d = self.failed(ip, address, user)
        if delay <= 0:
            return d.addCallback(lambda _: failure)
        clock = self._defender._clock
        return d.addCallback(lambda _: deferLater(clock, delay, lambda: failure))

    def forgive(self, address: str) -> None:
        """A login of C{address} succeeded: forget its failures (not a ban)."""
        d = self.store.call(FORGIVE, [self.store.keys.failures(address)], [])
        d.addErrback(lambda f: None if f.check(SharedStateUnavailable) else f)
        d.addErrback(lambda f: log.failure("Forgetting failures in Redis failed", f))
