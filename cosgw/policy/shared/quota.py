"""
Quotas across replicas: the usage of a home in Redis, and the room each
replica's uploads in progress hold.

The usage (bytes, files and parts kept for a resume under one home) is
computed once for the cluster, by the first replica that needs it (the
same listing as on one process), written to C{cosgw:quota:<id>}, and then
kept current by every replica's commits, deletes and kept parts; it is
listed again after C{recount} seconds, which bounds what changes made
outside the gateways (or lost while Redis was away) can skew.

Uploads in progress are the part that must never race: each replica
claims room in its own hash (C{qb:<id>}, C{qf:<id>}) with L{scripts.CLAIM},
which grants only what the usage and every live replica's claims leave,
atomically.  A replica's uploads grow within its claim without asking
Redis (L{cosgw.policy.quota.Reservation.grow} is synchronous, per chunk);
a claim is what they hold plus a spare (half of the room left, or up to
L{CLAIM_FLOOR} of it if that is more), asked again when a quarter of it is
left, and given back when the replica's last upload of the quota ends.  So two replicas' concurrent uploads never hold more than
the quota together; near a full quota an upload may be refused while a
claim is being renewed (FTP 552, as for a full quota).  A crashed replica's
claim ends with its lease.

While Redis cannot be reached: C{open}, this replica's last view of the
usage and its own uploads decide; C{closed}, an upload that needs a claim
is refused (L{QuotaUnavailable}, FTP C{451}, SFTP a failure), and one under way
may fill only the claim it holds.  Changes made meanwhile are not in
Redis: when it is back, the usage of each quota changed is listed again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.policy.quota import QuotaUnavailable
from cosgw.policy.shared.connection import SharedStateUnavailable, SharedStore
from cosgw.policy.shared.counts import ReplicaCounts
from cosgw.policy.shared.keys import quota_id
from cosgw.policy.shared.scripts import CLAIM, FORGET, QUOTA_ADD

if TYPE_CHECKING:
    from cosgw.policy.quota import Usage

__all__ = ["QuotaSharing", "SharedQuota"]

log = Logger(namespace="cosgw.policy.quota")

#: The least spare a claim takes when the quota has room for it (bytes; as
#: a count of files, as good as unlimited): 64 MiB takes a fast upload
#: through many round trips to Redis before it must ask again.
CLAIM_FLOOR = 64 * 1024 * 1024

#: What an upload is told when its claim cannot be had (closed).
UNAVAILABLE = "quota state unavailable"


class QuotaSharing:
    """Shares every quota of a gateway through one store."""

    def __init__(
        self, store: SharedStore, counts: ReplicaCounts, recount: float = 3600.0
    ) -> None:
        """
        @param recount: seconds a computed usage is trusted before it is
            listed again.
        """
        self.store = store
        self.counts = counts
        self.recount = recount
        #: Quotas changed while Redis was away: listed again when it is back.
        self.dirty: set[str] = set()
        store.on_connected(self._reconnected)

    def attach(self, usage: Usage) -> None:
        """Share C{usage} (once; a usage without limits needs nothing)."""
        if usage.shared is None and usage.limited:
            usage.shared = SharedQuota(self, usage)

    def _reconnected(self) -> None:
        for qid in sorted(self.dirty):
            self.store.call(FORGET, [self.store.keys.quota(qid)], []).addErrback(
                lambda f: f.trap(SharedStateUnavailable)
            )
        self.dirty.clear()


class SharedQuota:
    """One quota's share: what this replica claims of it."""

    def __init__(self, sharing: QuotaSharing, usage: Usage) -> None:
        self.sharing = sharing
        self.store = sharing.store
        self.usage = usage
        where = getattr(usage.store, "description", type(usage.store).__name__)
        self.qid = quota_id(str(where), usage.prefix)
        self.granted_bytes = 0
        self.granted_files = 0
        self._extending = False

    def _keys(self) -> list[str]:
        keys = self.store.keys
        return [keys.registry, keys.own, keys.quota(self.qid)]

    def _limits(self) -> tuple[int, int]:
        usage = self.usage
        return (
            -1 if usage.max_bytes is None else usage.max_bytes,
            -1 if usage.max_files is None else usage.max_files,
        )

    def _claim(self, bytes_: int, files: int) -> Deferred[Any]:
        store = self.store
        max_bytes, max_files = self._limits()
        return store.call(
            CLAIM,
            self._keys(),
            [
                store.replica,
                store.now(),
                int(store.lease * 1000),
                store.keys.replicas,
                self.qid,
                max_bytes,
                max_files,
                bytes_,
                files,
                CLAIM_FLOOR,
            ],
        )

    def _new_files(self) -> int:
        usage = self.usage
        return sum(
            1 for uploads in usage._active.values() if any(r.new_file for r in uploads)
        )

    async def ensure(self) -> None:
        """
        Before an upload: the cluster's usage (computed here first if no
        replica has), and a claim with room for one more byte and file.

        @raise QuotaUnavailable: Redis is away and the rule fails closed.
        @raise StoreError: listing the home failed.
        """
        usage = self.usage
        need = (usage._reserved_bytes + 1, self._new_files() + 1)
        try:
            answer = await self._claim(*need)
            if not answer[0]:
                usage._ready = False
                await usage.compute()
                await self._publish(init=True)
                answer = await self._claim(*need)
        except SharedStateUnavailable:
            if not self.store.fallback("quota"):
                raise QuotaUnavailable(UNAVAILABLE) from None
            await usage.compute()
            return
        self._adopt(answer)
        if not usage.ready:
            await usage.compute()

    def _adopt(self, answer: list[int]) -> None:
        _, granted_bytes, granted_files, bytes_, files, kept, all_bytes, all_files = (
            int(n) for n in answer
        )
        usage = self.usage
        self.granted_bytes, self.granted_files = granted_bytes, granted_files
        counts = self.sharing.counts
        counts.remember(f"qb:{self.qid}", granted_bytes)
        counts.remember(f"qf:{self.qid}", granted_files)
        usage.bytes, usage.files = bytes_, files
        usage.others_bytes = (
            all_bytes - granted_bytes + max(0, kept - usage._kept_bytes)
        )
        usage.others_files = all_files - granted_files

    def allows(self, reserved: int, new_files: int) -> bool:
        """
        Whether this replica's uploads may hold C{reserved} bytes and
        C{new_files} new files: within its claim, or, Redis away and the
        rule open, on this replica's own view.  Asks for more room when the
        claim runs low.
        """
        usage = self.usage
        if self.store.up is False and not self.store.closed:
            return True
        within = (usage.max_bytes is None or reserved <= self.granted_bytes) and (
            usage.max_files is None or new_files <= self.granted_files
        )
        if usage.max_bytes is not None and (
            not within or self.granted_bytes - reserved < self.granted_bytes // 4
        ):
            self._extend(reserved)
        return within

    def _extend(self, reserved: int) -> None:
        if self._extending or not self.store.connected:
            return
        self._extending = True

        def done(result: Any) -> None:
            self._extending = False
            if isinstance(result, Failure):
                if not result.check(SharedStateUnavailable):
                    log.failure("Claiming quota room failed", result)
                return
            self._adopt(result)

        self._claim(
            max(reserved, self.usage._reserved_bytes), self._new_files()
        ).addBoth(done)

    def changed(
        self, bytes_: int = 0, files: int = 0, kept: int = 0, moved: int = 0
    ) -> None:
        """
        The usage changed here by these amounts (C{moved}: kept bytes that
        a resumed upload now holds): tell Redis, and give the claim back
        when no upload of the quota is in progress here.
        """
        self.granted_bytes += moved
        if not self.usage._active:
            self.granted_bytes = self.granted_files = 0
        self._publish(bytes_, files, kept).addErrback(self._unpublished)

    def _publish(
        self, bytes_: int = 0, files: int = 0, kept: int = 0, init: bool = False
    ) -> Deferred[Any]:
        store, usage = self.store, self.usage
        counts = self.sharing.counts
        counts.remember(f"qb:{self.qid}", self.granted_bytes)
        counts.remember(f"qf:{self.qid}", self.granted_files)
        if init:
            bytes_, files, kept = usage.bytes, usage.files, usage._kept_bytes
        return store.call(
            QUOTA_ADD,
            self._keys(),
            [
                store.replica,
                store.now(),
                int(store.lease * 1000),
                self.qid,
                bytes_,
                files,
                kept,
                self.granted_bytes,
                self.granted_files,
                1 if init else 0,
                int(self.sharing.recount * 1000),
            ],
        )

    def _unpublished(self, failure: Failure) -> Optional[Failure]:
        if not failure.check(SharedStateUnavailable):
            return failure
        self.store.fallback("quota")
        self.sharing.dirty.add(self.qid)
        return None
