"""
Where the shared state lives in Redis: every key and hash field, in one
place (C{docs/scale-out.rst} shows the same table).

With the default prefix C{cosgw:}:

  ===============================  =========================================
  key                              holds
  ===============================  =========================================
  C{cosgw:replicas}                sorted set: replica id, scored by the end
                                   of its lease (ms); a replica whose lease
                                   has ended counts for nothing
  C{cosgw:replica:<id>}            hash: one replica's counts (fields
                                   below); expires two leases after its
                                   last heartbeat
  C{cosgw:failures:<address>}      sorted set: the failed logins of one
                                   client address within the window, scored
                                   by their time (ms); expires with the
                                   window
  C{cosgw:ban:<address>}           string: the end of the address's ban
                                   (ms); expires with the ban
  C{cosgw:quota:<quota id>}        hash: C{bytes}, C{files}, C{kept} stored
                                   under one user's home (the quota's
                                   usage), written once by the first replica
                                   to compute it, then kept current by every
                                   replica's commits
  ===============================  =========================================

Fields of C{cosgw:replica:<id>}: C{c} (connections open on the replica),
C{c:<address>} (of them, from one client address), C{s:<user>} (sessions
of a user), C{qb:<quota id>} and C{qf:<quota id>} (bytes and files of a
quota the replica's uploads in progress hold).  A cluster's count is the
sum of a field over the replicas whose lease runs.

An address is L{cosgw.policy.limits.canonical_ip}'s (an IPv6 client by its
network); a quota id is a digest of the store and home prefix, so users
with the same home share one quota's usage, as on one replica.
"""

from __future__ import annotations

import hashlib

__all__ = ["Keys", "quota_id"]


def quota_id(store: str, prefix: str) -> str:
    """The id of the quota of C{prefix} in the store described as C{store}."""
    return hashlib.sha1(f"{store}\0{prefix}".encode()).hexdigest()[:20]


class Keys:
    """The key names of one cluster (C{prefix}) as seen by one replica."""

    def __init__(self, prefix: str, replica: str) -> None:
        self.prefix = prefix
        self.registry = prefix + "replicas"
        #: The replicas' hashes are this plus the replica id.
        self.replicas = prefix + "replica:"
        self.own = self.replicas + replica

    def heartbeat(self) -> list[str]:
        return [self.registry, self.own]

    def leave(self) -> list[str]:
        return [self.registry, self.own]

    def counts(self) -> list[str]:
        return [self.registry, self.own]

    def failures(self, address: str) -> str:
        return f"{self.prefix}failures:{address}"

    def ban(self, address: str) -> str:
        return f"{self.prefix}ban:{address}"

    def quota(self, qid: str) -> str:
        return f"{self.prefix}quota:{qid}"
