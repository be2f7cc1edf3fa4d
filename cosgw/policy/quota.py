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
before it is committed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore

log = Logger()


class QuotaFull(Exception):
    """
    An upload or new file would go over the quota; C{reason} is a short
    human sentence, fit for a protocol reply.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _never(key: str) -> bool:
    return False


class Usage:
    """
    The bytes and files below one user's home, and their limits.

    C{prefix} is the user's home prefix (C{""} or C{"a/b/"}).  Counted are
    the objects under it whose key does not end in C{/} (directory markers)
    and for which C{ignore(key)} is false (the vfs skips its hidden
    per-directory mtime index).  C{max_bytes} and C{max_files} are the
    limits, None for none.

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
        #: Uploads in progress that will add a file.
        self._reserved_files = 0

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
    def room(self) -> Optional[int]:
        """
        The bytes that may still be added (never negative), counting uploads
        in progress; None without a byte limit.
        """
        if self.max_bytes is None:
            return None
        return max(0, self.max_bytes - self.bytes - self._reserved_bytes)

    async def ensure(self) -> None:
        """
        Compute usage if it has not been yet.

        The first call lists the whole prefix; concurrent callers wait for
        that one computation; later calls return at once.  A computation
        that failed is not remembered: the next call tries again.

        @raise StoreError: listing failed (every waiting caller gets it).
        """
        if self._ready:
            return
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            Deferred.fromCoroutine(self._compute()).addBoth(self._computed)
        await waiter

    async def _compute(self) -> tuple[int, int, int]:
        total = files = pages = 0
        marker = ""
        while True:
            page = await self.store.list(self.prefix, delimiter="", marker=marker)
            pages += 1
            for info in page.objects:
                if info.key.endswith("/") or self._ignore(info.key):
                    continue
                total += info.size
                files += 1
            if page.next_marker is None:
                return total, files, pages
            marker = page.next_marker

    def _computed(self, result: tuple[int, int, int] | Failure) -> None:
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            log.warn(
                "computing the quota usage of {prefix!r} failed: {error}",
                prefix=self.prefix,
                error=result.getErrorMessage(),
            )
            for waiter in waiters:
                if not waiter.called:
                    waiter.errback(result)
            return
        self.bytes, self.files, pages = result
        self._ready = True
        log.info(
            "quota usage of {prefix!r}: {bytes} bytes in {files} files"
            " ({pages} listing pages)",
            prefix=self.prefix,
            bytes=self.bytes,
            files=self.files,
            pages=pages,
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

    def reserve(self, replacing: int = 0, new_file: bool = True) -> Reservation:
        """
        An upload starts.  C{replacing} is the size of the object it
        overwrites (0 if none); C{new_file} says whether it adds a file.

        @raise QuotaFull: C{new_file} and no file may be added (counting
            uploads of new files in progress), or there is no room for even
            one byte.
        @raise RuntimeError: L{ensure} has not succeeded yet.
        """
        self._check_ready()
        if (
            new_file
            and self.max_files is not None
            and self.files + self._reserved_files >= self.max_files
        ):
            raise QuotaFull(f"file quota reached ({self.max_files} files)")
        if (
            self.max_bytes is not None
            and self.bytes + self._reserved_bytes - replacing + 1 > self.max_bytes
        ):
            raise QuotaFull(f"disk quota reached ({self.max_bytes} bytes)")
        if new_file:
            self._reserved_files += 1
        return Reservation(self, replacing, new_file)

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

    def removed(self, size: int) -> None:
        """
        A file of C{size} bytes was deleted.  Neither count goes below zero.
        Ignored before usage is computed.
        """
        if not self._ready:
            return
        self.files = max(0, self.files - 1)
        self.bytes = max(0, self.bytes - size)


class _State(enum.Enum):
    ACTIVE = "active"
    COMMITTED = "committed"
    RELEASED = "released"


class Reservation:
    """
    The bytes an upload in progress may still claim; concurrent uploads of
    one user share the room.

    States: ACTIVE -> COMMITTED (L{commit}) or ACTIVE -> RELEASED
    (L{release}).  L{release} in any state after ACTIVE does nothing, so it
    fits a C{finally}; L{grow} or L{commit} after either is an error.
    """

    def __init__(self, usage: Usage, replacing: int, new_file: bool) -> None:
        self.usage = usage
        self.replacing = replacing
        self.new_file = new_file
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
            reservations and this one at C{total} bytes, less what it
            replaces, would exceed the byte limit: then the claim stays what
            it was.  Never false for a claim that does not grow.
        """
        self._check_active("grow")
        need = max(0, total - self.replacing)
        usage = self.usage
        if need > self.claimed and usage.max_bytes is not None:
            others = usage._reserved_bytes - self.claimed
            if usage.bytes + others + need > usage.max_bytes:
                return False
        usage._reserved_bytes += need - self.claimed
        self.claimed = need
        return True

    def commit(self, size: int) -> None:
        """
        The upload was stored with C{size} bytes: count it and release the
        reservation.

        @raise RuntimeError: the reservation was already committed or
            released.
        """
        self._check_active("commit")
        self._free()
        self._state = _State.COMMITTED
        usage = self.usage
        usage.bytes = max(0, usage.bytes + size - self.replacing)
        if self.new_file:
            usage.files += 1

    def release(self) -> None:
        """
        The upload failed or was aborted: nothing changes but the
        reservation, which is released.  Idempotent, and harmless after
        L{commit}.
        """
        if self._state is not _State.ACTIVE:
            return
        self._free()
        self._state = _State.RELEASED

    def _free(self) -> None:
        usage = self.usage
        usage._reserved_bytes -= self.claimed
        self.claimed = 0
        if self.new_file:
            usage._reserved_files -= 1
