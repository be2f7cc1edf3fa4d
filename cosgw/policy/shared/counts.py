"""
A replica's counts in the shared state, and the cluster's sums of them.

Each replica publishes its own counts (connections, connections per
address, sessions per user) in its hash, always the whole value as this
process knows it, never an increment: the last publication is the truth,
and one that Redis missed while it was away is made good by the next, or by
the full republication when the connection comes back.  A limit is checked
in the same script that publishes (L{scripts.COUNT}): a new connection or
session is counted by its replica first, then refused when the sum over
every live replica is over the limit, so of two arriving at once on two
replicas, the one Redis sees second is refused.  A crashed replica's counts
stop counting when its lease ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from cosgw.policy.shared.connection import SharedStateUnavailable, SharedStore
from cosgw.policy.shared.scripts import COUNT, REPLACE

__all__ = ["Check", "ReplicaCounts"]

#: (field, this replica's value, the limit of the cluster's sum or None,
#: the value to fall back to when the sum is over).
Check = tuple[str, int, Optional[int], int]


class ReplicaCounts:
    """This replica's hash of counts: the fields and their values."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.values: dict[str, int] = {}
        store.on_connected(self.republish)

    def admit(self, checks: Sequence[Check]) -> Deferred[Optional[tuple[str, int]]]:
        """
        Publish each check's value and compare the cluster's sum with its
        limit.

        @return: a Deferred firing with None when every sum is within its
            limit; or with (field, sum) of the first over it, every field
            then set back to its fallback (here and in Redis); failing with
            L{SharedStateUnavailable} when Redis is away (the values stay
            published here, to be republished when it is back).
        """
        args: list[object] = [
            self.store.replica,
            self.store.now(),
            int(self.store.lease * 1000),
            self.store.keys.replicas,
        ]
        for field, value, limit, fallback in checks:
            self.remember(field, value)
            args += [field, value, limit or 0, fallback]
        d = self.store.call(COUNT, self.store.keys.counts(), args)

        def verdict(answer: list[int]) -> Optional[tuple[str, int]]:
            index, total = int(answer[0]), int(answer[1])
            if not index:
                return None
            for field, value, _, fallback in checks:
                # Unless a later publication already changed it here.
                if self.values.get(field, 0) == value:
                    self.remember(field, fallback)
            return checks[index - 1][0], total

        return d.addCallback(verdict)

    def publish(self, *fields: tuple[str, int]) -> None:
        """
        Publish values with no limit to check (a connection or a session
        ended).  Not waited for: Redis away, the republication on its
        return will carry them.
        """
        self.admit([(field, value, None, value) for field, value in fields]).addErrback(
            _ignore_outage
        )

    def remember(self, field: str, value: int) -> None:
        """This replica's value of C{field} (published by the caller)."""
        if value > 0:
            self.values[field] = value
        else:
            self.values.pop(field, None)

    def republish(self) -> None:
        """Redis is back (or was restarted): all the values, replacing its."""
        args: list[object] = [
            self.store.replica,
            self.store.now(),
            int(self.store.lease * 1000),
        ]
        for field, value in self.values.items():
            args += [field, value]
        self.store.call(REPLACE, self.store.keys.counts(), args).addErrback(
            _ignore_outage
        )


def _ignore_outage(failure: Failure) -> None:
    failure.trap(SharedStateUnavailable)
