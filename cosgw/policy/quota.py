"""
Per-user quotas: how many bytes and files a user's home holds, against
their limits.

A bucket has no cheap "size of this prefix" call, so usage is computed once,
when first needed, by listing the whole home prefix page by page, and then
kept current by the gateway's own writes and deletes (L{Reservation.commit},
L{Usage.added}, L{Usage.removed}).  Changes made to the bucket by anyone
else (the COS console, another gateway, a lifecycle rule) after that first
computation are not seen until the gateway restarts: the quota is a guard
against a user filling the bucket through this gateway, not an accounting
of the bucket.

One L{Usage} exists per user and is shared by all of that user's sessions,
so concurrent uploads share the room: each upload in progress holds a
L{Reservation} for the bytes it has received so far, and another upload can
claim only what is left.  An upload is refused before it begins when there
is no room for even one byte (or no file may be added), and stopped while
it runs as soon as its next chunk would go over.

Overwriting counts the difference: replacing a 10 MiB file with an 11 MiB
one needs 1 MiB of room.  Until the new object is stored the old one is
still there, so a replacement smaller than the original frees nothing
before it is committed.  What an upload replaces is the object visible when
it is committed: of two concurrent uploads of one new name, the first to
finish adds the file and the second replaces it, so the name is one file,
claimed once while they run.

Parts kept for a resume (an upload whose client went away) are stored
bytes: they count against the quota from the moment they are kept, and
their name counts as a file while nothing visible has that name.  The
computation learns the kept uploads already in the store (one
ListMultipartUploads of the home, then one ListParts per upload found);
the claim of a kept upload ends when it is resumed (L{Usage.reserve} with
C{resuming}), aborted or swept (L{Usage.forget}).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore, NoSuchUpload

if TYPE_CHECKING:
    from cosgw.policy.shared.quota import SharedQuota

log = Logger()


class QuotaFull(Exception):
    """
    An upload or new file would go over the quota; C{reason} is a short
    human sentence, fit for a protocol reply.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QuotaUnavailable(QuotaFull):
    """
    The quota cannot be checked now (shared state away, failing closed):
    a transient refusal the client may retry, not a full quota.
    """


def _never(key: str) -> bool:
    return False


@dataclass
class _Kept:
    """The claim of an upload kept for a resume."""

    key: str
    size: int
    #: Whether its name counts as a file (nothing visible has the name).
    names_file: bool


@dataclass(frozen=True)
class _Counts:
    """What a computation found."""

    bytes: int
    files: int
    pages: int
    kept: dict[str, _Kept]


class Usage:
    """
    The bytes and files below one user's home, and their limits.

    C{prefix} is the user's home prefix (C{""} or C{"a/b/"}).  Counted are
    the objects under it whose key does not end in C{/} (directory markers)
    and for which C{ignore(key)} is false (the vfs skips the keys it keeps
    for itself: its markers of times under the metadata prefix, and the
    indexes of times of earlier versions), and the parts of unfinished
    multipart uploads of such keys.  C{max_bytes} and C{max_files} are the limits,
    None for none.

    L{bytes} and L{files} are valid once L{ensure} has succeeded.
    """

    def __init__(
        self,
        store: IObjectStore,
        prefix: str,
        max_bytes: Optional[int],
        max_files: Optional[int],
        ignore: Callable[[str], bool] = _never,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._ignore = ignore
        self.bytes = 0
        self.files = 0
        self._ready = False
        self._waiters: list[Deferred[None]] = []
        #: Bytes claimed by uploads in progress, net of what they replace.
        self._reserved_bytes = 0
        #: Uploads in progress, by key.
        self._active: dict[str, set[Reservation]] = {}
        #: Uploads kept for a resume, by upload id, and their bytes.
        self._kept: dict[str, _Kept] = {}
        self._kept_bytes = 0
        #: Kept uploads that ended while usage was being computed.
        self._gone_early: set[str] = set()
        #: The cluster's view of this quota (L{cosgw.policy.shared.quota});
        #: None: this process alone.  Then the usage is the cluster's, and
        #: the others' terms are what other replicas hold: their uploads'
        #: bytes and kept parts, their new files.
        self.shared: Optional[SharedQuota] = None
        self.others_bytes = 0
        self.others_files = 0

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return self.max_bytes is not None or self.max_files is not None

    @property
    def ready(self) -> bool:
        """Whether usage has been computed (L{bytes} and L{files} are valid)."""
        return self._ready

    @property
    def reserved(self) -> int:
        """Bytes claimed by uploads in progress and not yet committed."""
        return self._reserved_bytes

    @property
    def kept(self) -> int:
        """Bytes of the parts kept for a resume."""
        return self._kept_bytes

    @property
    def pending_files(self) -> int:
        """
        Names that count as files without being visible: those of new files
        being uploaded, and those of kept uploads.  Each name once.
        """
        names = {
            key
            for key, uploads in self._active.items()
            if any(r.new_file for r in uploads)
        }
        names.update(k.key for k in self._kept.values() if k.names_file)
        return len(names)

    @property
    def room(self) -> Optional[int]:
        """
        The bytes that may still be added (never negative), counting uploads
        in progress and kept parts; None without a byte limit.
        """
        if self.max_bytes is None:
            return None
        taken = self.bytes + self._reserved_bytes + self._kept_bytes
        return max(0, self.max_bytes - taken)

    async def ensure(self) -> None:
        """
        Compute usage if it has not been yet.

        The first call lists the whole prefix and its unfinished uploads;
        concurrent callers wait for that one computation; later calls return
        at once.  A computation that failed is not remembered: the next call
        tries again.

        @raise StoreError: listing failed (every waiting caller gets it).
        @raise QuotaFull: shared, Redis away and the rule fails closed.
        """
        if self.shared is not None:
            await self.shared.ensure()
            return
        await self.compute()

    async def compute(self) -> None:
        """L{ensure}'s listing, whoever keeps the usage."""
        if self._ready:
            return
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._compute()).addBoth(self._computed)
        await waiter

    def _counted(self, key: str) -> bool:
        return not key.endswith("/") and not self._ignore(key)

    async def _compute(self) -> _Counts:
        # The uploads first, so that the listing can tell which of their
        # names are visible without keeping every key of the home.
        pending = [
            u
            for u in await self.store.list_multipart(self.prefix)
            if u.key.startswith(self.prefix) and self._counted(u.key)
        ]
        names = {u.key for u in pending}
        visible: set[str] = set()
        total = files = pages = 0
        marker = ""
        while True:
            page = await self.store.list(self.prefix, delimiter="", marker=marker)
            pages += 1
            for info in page.objects:
                if not self._counted(info.key):
                    continue
                total += info.size
                files += 1
                if info.key in names:
                    visible.add(info.key)
            if page.next_marker is None:
                break
            marker = page.next_marker
        kept: dict[str, _Kept] = {}
        for upload in pending:
            try:
                parts = await self.store.list_parts(upload.key, upload.upload_id)
            except NoSuchUpload:
                continue  # finished or aborted meanwhile
            size = sum(p.size for p in parts)
            kept[upload.upload_id] = _Kept(upload.key, size, upload.key not in visible)
        return _Counts(total, files, pages, kept)

    def _computed(self, result: _Counts | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            self._gone_early.clear()
            log.warn(
                "computing the quota usage of {prefix!r} failed: {error}",
                prefix=self.prefix,
                error=result.getErrorMessage(),
            )
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(result)
            return
        self.bytes, self.files = result.bytes, result.files
        self._kept = {
            upload_id: kept
            for upload_id, kept in result.kept.items()
            if upload_id not in self._gone_early
        }
        self._gone_early.clear()
        self._kept_bytes = sum(k.size for k in self._kept.values())
        self._ready = True
        log.info(
            "quota usage of {prefix!r}: {bytes} bytes in {files} files"
            " ({pages} listing pages), {kept} bytes kept for resumes in"
            " {uploads} uploads",
            prefix=self.prefix,
            bytes=self.bytes,
            files=self.files,
            pages=result.pages,
            kept=self._kept_bytes,
            uploads=len(self._kept),
            max_bytes=self.max_bytes,
            max_files=self.max_files,
        )
        for waiter in waiters:
            # A caller may have cancelled its wait.
            if not waiter.called:
                waiter.callback(None)

    def _check_ready(self) -> None:
        if not self._ready:
            raise RuntimeError("quota usage is not computed yet: await ensure()")

    def _names_file(self, key: str) -> bool:
        """Whether C{key} already counts as a file without being visible."""
        return any(r.new_file for r in self._active.get(key, ())) or any(
            k.key == key and k.names_file for k in self._kept.values()
        )

    def reserve(
        self,
        key: str,
        replacing: int = 0,
        new_file: bool = True,
        resuming: Optional[str] = None,
    ) -> Reservation:
        """
        An upload of C{key} starts.  C{replacing} is the size of the object
        it overwrites (0 if none); C{new_file} says whether it adds a file
        (a name another upload in progress, or a kept upload, already
        counts is not counted again).

        @param resuming: the id of the kept upload it continues: the kept
            parts' claim becomes this reservation's.
        @raise QuotaFull: C{new_file} and no file may be added (counting
            uploads of new files in progress), or there is no room for even
            one byte.
        @raise RuntimeError: L{ensure} has not succeeded yet.
        """
        self._check_ready()
        adds_file = new_file and not self._names_file(key)
        if (
            adds_file
            and self.max_files is not None
            and self.files + self.pending_files + self.others_files >= self.max_files
        ):
            raise QuotaFull(f"file quota reached ({self.max_files} files)")
        taken = self.bytes + self._reserved_bytes + self._kept_bytes + self.others_bytes
        if (
            self.max_bytes is not None and taken - replacing + 1 > self.max_bytes
        ) or not self._shared_allows(
            self._reserved_bytes + max(0, 1 - replacing), int(adds_file)
        ):
            raise QuotaFull(f"disk quota reached ({self.max_bytes} bytes)")
        reservation = Reservation(self, key, replacing, new_file)
        self._active.setdefault(key, set()).add(reservation)
        kept = self._kept.pop(resuming, None) if resuming is not None else None
        if kept is not None:
            self._kept_bytes -= kept.size
            reservation.total = kept.size
            reservation.claimed = max(0, kept.size - replacing)
            self._reserved_bytes += reservation.claimed
            self._shared_change(kept=-kept.size, moved=reservation.claimed)
        return reservation

    def _shared_allows(self, reserved: int, more_files: int) -> bool:
        """Whether the cluster's claim lets this replica's uploads hold
        C{reserved} bytes and C{more_files} more new files."""
        if self.shared is None:
            return True
        new_files = sum(
            1 for rs in self._active.values() if any(r.new_file for r in rs)
        )
        return self.shared.allows(reserved, new_files + more_files)

    def _shared_change(self, **change: int) -> None:
        if self.shared is not None:
            self.shared.changed(**change)

    def kept_uploads(self, key: str) -> list[str]:
        """The ids of the kept uploads of C{key} this usage counts."""
        return sorted(u for u, k in self._kept.items() if k.key == key)

    def forget(self, upload_id: str) -> None:
        """
        The kept upload C{upload_id} ended (aborted, swept): its parts no
        longer count.  Unknown ids are ignored.
        """
        if not self._ready:
            self._gone_early.add(upload_id)
            return
        kept = self._kept.pop(upload_id, None)
        if kept is not None:
            self._kept_bytes -= kept.size
            self._shared_change(kept=-kept.size)

    def _rebase(self, key: str, size: Optional[int]) -> None:
        """
        The object visible at C{key} is now C{size} bytes (None: there is
        none): uploads of it in progress replace that, and its kept uploads
        count as a file only while there is none.
        """
        for reservation in self._active.get(key, ()):
            reservation.rebase(size)
        for kept in self._kept.values():
            if kept.key == key:
                kept.names_file = size is None

    def added(self, size: int, new_file: bool = True) -> None:
        """
        A file appeared or grew by C{size} bytes outside an upload (a copy
        target, say).  Ignored before usage is computed: the listing sees
        the store as it is.
        """
        if not self._ready:
            return
        self.bytes = max(0, self.bytes + size)
        if new_file:
            self.files += 1
        self._shared_change(bytes_=size, files=int(new_file))

    def removed(self, size: int, key: Optional[str] = None) -> None:
        """
        A file of C{size} bytes (at C{key}, when known) was deleted.
        Neither count goes below zero.  Ignored before usage is computed.
        """
        if not self._ready:
            return
        self.files = max(0, self.files - 1)
        self.bytes = max(0, self.bytes - size)
        self._shared_change(bytes_=-size, files=-1)
        if key is not None:
            self._rebase(key, None)

    def moved(self, source: str, target: str, size: int) -> None:
        """
        A file of C{size} bytes was renamed from C{source} to C{target}
        (what it replaced there is L{removed} separately): uploads of
        either name now replace what is there.
        """
        if not self._ready:
            return
        self._rebase(source, None)
        self._rebase(target, size)


class _State(enum.Enum):
    ACTIVE = "active"
    COMMITTED = "committed"
    RELEASED = "released"
    KEPT = "kept"


class Reservation:
    """
    The bytes an upload in progress may still claim; concurrent uploads of
    one user share the room.

    States: ACTIVE -> COMMITTED (L{commit}), ACTIVE -> KEPT (L{keep}) or
    ACTIVE -> RELEASED (L{release}).  L{release} in any state after ACTIVE
    does nothing, so it fits a C{finally}; L{grow}, L{commit} or L{keep}
    after any of them is an error.
    """

    def __init__(self, usage: Usage, key: str, replacing: int, new_file: bool) -> None:
        self.usage = usage
        self.key = key
        self.replacing = replacing
        self.new_file = new_file
        #: The size of the upload's object so far.
        self.total = 0
        #: The bytes claimed so far, net of C{replacing} (never negative:
        #: the replaced object is there until the upload is committed).
        self.claimed = 0
        self._state = _State.ACTIVE

    def _check_active(self, what: str) -> None:
        if self._state is not _State.ACTIVE:
            raise RuntimeError(f"{what} of a reservation already {self._state.value}")

    def grow(self, total: int) -> bool:
        """
        The upload's object is now C{total} bytes long: claim them.

        @return: True when claimed; False when the usage, all uploads'
            reservations, the kept parts and this one at C{total} bytes,
            less what it replaces, would exceed the byte limit: then the
            claim stays what it was.  Never false for a claim that does not
            grow.
        """
        self._check_active("grow")
        need = max(0, total - self.replacing)
        usage = self.usage
        if need > self.claimed and usage.max_bytes is not None:
            others = usage._reserved_bytes - self.claimed + usage._kept_bytes
            if usage.bytes + others + usage.others_bytes + need > usage.max_bytes:
                return False
            if not usage._shared_allows(usage._reserved_bytes - self.claimed + need, 0):
                return False
        usage._reserved_bytes += need - self.claimed
        self.claimed = need
        self.total = total
        return True

    def rebase(self, replacing: Optional[int]) -> None:
        """
        The object this upload will replace is now C{replacing} bytes (None:
        there is none, so the upload adds a file).  The claim follows.
        """
        if self._state is not _State.ACTIVE:
            return
        self.replacing = replacing or 0
        self.new_file = replacing is None
        need = max(0, self.total - self.replacing)
        self.usage._reserved_bytes += need - self.claimed
        self.claimed = need

    def commit(self, size: int) -> None:
        """
        The upload was stored with C{size} bytes: count it and release the
        reservation.  Other uploads of the same key now replace it.

        @raise RuntimeError: the reservation was already committed, kept or
            released.
        """
        self._check_active("commit")
        self._free()
        self._state = _State.COMMITTED
        usage = self.usage
        usage.bytes = max(0, usage.bytes + size - self.replacing)
        if self.new_file:
            usage.files += 1
        usage._rebase(self.key, size)
        usage._shared_change(bytes_=size - self.replacing, files=int(self.new_file))

    def keep(self, upload_id: str, size: int) -> None:
        """
        The upload was interrupted and C{size} bytes of it are kept, as
        C{upload_id}, for a resume: they stay claimed until the kept upload
        is resumed or ends (L{Usage.forget}).

        @raise RuntimeError: the reservation is no longer active.
        """
        self._check_active("keep")
        self._free()
        self._state = _State.KEPT
        usage = self.usage
        usage._kept[upload_id] = _Kept(self.key, size, self.new_file)
        usage._kept_bytes += size
        usage._shared_change(kept=size)

    def release(self) -> None:
        """
        The upload failed or was aborted: nothing changes but the
        reservation, which is released.  Idempotent, and harmless after
        L{commit} or L{keep}.
        """
        if self._state is not _State.ACTIVE:
            return
        self._free()
        self._state = _State.RELEASED
        self.usage._shared_change()

    def _free(self) -> None:
        usage = self.usage
        usage._reserved_bytes -= self.claimed
        self.claimed = 0
        uploads = usage._active.get(self.key)
        if uploads is not None:
            uploads.discard(self)
            if not uploads:
                del usage._active[self.key]
