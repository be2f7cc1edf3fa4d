"""
Shared state for replicas: the policy's counts kept in Redis when
C{[server] shared_state} is set, so that N gateways behind a load balancer
hold one set of rules.

  - L{connection}: the one connection to Redis, its timeouts, the replica
    id and lease, and what happens while Redis is away
    (C{shared_state_failure});
  - L{keys}: the key layout; L{scripts}: the Lua scripts that count and
    check atomically;
  - L{counts}: connections and sessions, per replica, summed over live
    replicas (L{cosgw.policy.limits});
  - L{bans}: failed logins and bans (L{cosgw.policy.defender});
  - L{quota}: quota usage and the claims of uploads in progress
    (L{cosgw.policy.quota}).

Nothing imports this package unless shared state is configured: without
it, every rule is this process's alone, as it always was.
"""

from __future__ import annotations

from typing import Any

from cosgw.policy.accounts import Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits
from cosgw.policy.shared.bans import ClusterUnavailable, SharedBans
from cosgw.policy.shared.connection import SharedStateUnavailable, SharedStore
from cosgw.policy.shared.counts import ReplicaCounts
from cosgw.policy.shared.quota import QuotaSharing

__all__ = [
    "ClusterUnavailable",
    "QuotaSharing",
    "ReplicaCounts",
    "SharedBans",
    "SharedStateUnavailable",
    "SharedStore",
    "share_policy",
]


def share_policy(
    url: str,
    failure: str,
    reactor: Any,
    defender: LoginDefender,
    limits: ConnectionLimits,
    accounts: Accounts,
    **options: Any,
) -> SharedStore:
    """
    Share the gateway's policy objects through Redis at C{url}.

    @param options: L{SharedStore}'s (clock, timeout, lease, heartbeat,
        replica, prefix).
    @return: the store, a service to start with the gateway (it connects,
        renews the lease and, stopped, releases this replica's counts).
    """
    store = SharedStore(url, reactor, failure, **options)
    counts = ReplicaCounts(store)
    defender.shared = SharedBans(store, defender)
    limits.shared = counts
    accounts.sessions.shared = counts
    accounts.shared_quota = QuotaSharing(store, counts)
    return store
