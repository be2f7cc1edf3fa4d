"""
A bounded temporary file for bytes that cannot go to the store yet: writes
far ahead of an upload, or a whole file being changed in place.

Two bounds apply, both counted before a byte reaches the disk: each spool's
own C{limit}, and a L{SpoolBudget} that every spool of the gateway shares
(C{max_spool_size}), so that many open files together cannot fill the
disk either.  What is counted is the disk the file can occupy: the 4 KiB
blocks its writes touched (a block written twice counts once, holes are
free), or more when space was reserved ahead (L{Spool.reserve}).  The count
is given back when the file is closed.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred, succeed
from twisted.logger import Logger

from cosgw.transfer.errors import SpoolFull, TransferStopped

log = Logger()

#: The unit spool space is counted in: a file system block.  A write of one
#: byte takes a whole block of disk.
BLOCK = 4096


def _block_span(start: int, end: int) -> tuple[int, int]:
    """[start, end) widened to whole blocks."""
    return start - start % BLOCK, -(-end // BLOCK) * BLOCK


class Intervals:
    """
    A set of disjoint [start, end) ranges (touching ones merge), kept as two
    sorted lists so that each operation is a bisection: a client that
    scatters many small writes costs a logarithm per write, not a scan.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        #: The bytes covered.
        self.total = 0

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends))

    def uncovered(self, start: int, end: int) -> int:
        """How many bytes of [start, end) no range covers."""
        i = bisect.bisect_right(self._ends, start)
        j = bisect.bisect_left(self._starts, end)
        covered = sum(
            min(e, end) - max(s, start)
            for s, e in zip(self._starts[i:j], self._ends[i:j])
        )
        return end - start - covered

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        added = self.uncovered(start, end)
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]
        self.total += added

    def drop_below(self, offset: int) -> None:
        i = bisect.bisect_right(self._ends, offset)
        self.total -= sum(self._ends[k] - self._starts[k] for k in range(i))
        del self._starts[:i], self._ends[:i]
        if self._starts and self._starts[0] < offset:
            self.total -= offset - self._starts[0]
            self._starts[0] = offset

    def drop_above(self, offset: int) -> None:
        j = bisect.bisect_left(self._starts, offset)
        n = len(self._starts)
        self.total -= sum(self._ends[k] - self._starts[k] for k in range(j, n))
        del self._starts[j:], self._ends[j:]
        if self._ends and self._ends[-1] > offset:
            self.total -= self._ends[-1] - offset
            self._ends[-1] = offset

    def covering(self, offset: int) -> Optional[tuple[int, int]]:
        k = bisect.bisect_right(self._starts, offset) - 1
        if k >= 0 and self._ends[k] > offset:
            return self._starts[k], self._ends[k]
        return None

    def first_after(self, offset: int) -> Optional[int]:
        k = bisect.bisect_left(self._starts, offset)
        return self._starts[k] if k < len(self._starts) else None


class SpoolBudget:
    """
    The spool disk every open file of the gateway may hold together
    (C{max_spool_size}); one per gateway, shared by all users' spools.
    Only touched from the reactor thread.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes held by open spools.
        self.used = 0

    def take(self, size: int) -> bool:
        """Claim C{size} more bytes; False (nothing claimed) when full."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


class Spool:
    """
    A temporary file for bytes that cannot go to the store yet, bounded by
    C{limit} bytes of disk and by the gateway's C{budget} (see the module
    docstring).  All file I/O runs in the gateway's thread pool
    (C{runner}), one operation at a time, so writes and reads apply in the
    order they were asked for.  The file has no name: it vanishes when
    closed, or with the process.
    """

    def __init__(
        self,
        runner: Optional[Any],
        directory: Optional[str],
        limit: int,
        budget: Optional[SpoolBudget] = None,
    ) -> None:
        self.runner = runner
        self.directory = directory
        self.limit = limit
        self.budget = budget
        #: Bytes of disk counted against the limit and the budget.
        self.used = 0
        self._blocks = Intervals()
        self._file: Optional[Any] = None
        self._lock = DeferredLock()
        self._closed = False

    def _call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def run(_: object) -> Deferred[Any]:
            if self.runner is None:
                return maybeDeferred(f, *args)
            return self.runner.run(f, *args)

        return self._lock.run(lambda: succeed(None).addCallback(run))

    def _fd(self) -> int:
        if self._closed:
            raise TransferStopped("the spool is closed")
        if self._file is None:
            if self.directory:
                # Created by the gateway's user, after twistd dropped to
                # it; other users have no business with unfinished files.
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory)
        return self._file.fileno()

    def _count(self, total: int) -> None:
        """
        Count C{total} bytes of disk in all, claiming what is new.

        @raise SpoolFull: over this spool's limit or the gateway's budget;
            nothing is claimed then.
        """
        more = total - self.used
        if more <= 0:
            return
        if total > self.limit:
            raise SpoolFull(
                f"out-of-order or in-place writes need more than {self.limit} "
                "bytes of temporary space for one file"
            )
        budget = self.budget
        if budget is not None and not budget.take(more):
            log.warn(
                "gateway spool is full: {used} of {limit} bytes (max_spool_size) "
                "held by open files; {more} more refused",
                used=budget.used,
                limit=budget.limit,
                more=more,
            )
            raise SpoolFull(
                "gateway spool is full: files written out of order or changed "
                f"in place hold its {budget.limit} bytes (max_spool_size); "
                "try again later"
            )
        self.used = total

    def reserve(self, size: int) -> None:
        """
        Claim disk for C{size} bytes ahead of writing them (a whole file
        copied in), so the claim fails before any work rather than midway.

        @raise SpoolFull: over the limit or the budget.
        @raise TransferStopped: the spool is closed.
        """
        if self._closed:
            raise TransferStopped("the spool is closed")
        self._count(_block_span(0, size)[1])

    def write(self, offset: int, data: bytes) -> Deferred[None]:
        """
        @raise SpoolFull: (synchronously) over the limit or the budget;
            nothing is written.
        @raise TransferStopped: the spool is closed.
        """
        if self._closed:
            raise TransferStopped("the spool is closed")
        if not data:
            return succeed(None)
        start, end = _block_span(offset, offset + len(data))
        self._count(self._blocks.total + self._blocks.uncovered(start, end))
        self._blocks.add(start, end)

        def put() -> None:
            fd = self._fd()
            view = memoryview(data)
            at = offset
            while view:
                n = os.pwrite(fd, view, at)
                view, at = view[n:], at + n

        return self._call(put)

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """Bytes at C{offset}; zeros where nothing was written."""

        def get() -> bytes:
            fd = self._fd()
            data = os.pread(fd, length, offset)
            return data + bytes(length - len(data))

        return self._call(get)

    def truncate(self, size: int) -> Deferred[None]:
        """
        Cut or extend the file to C{size} bytes; an extension is a hole
        (zeros, no disk), a cut gives back the disk beyond it once done.
        """
        self._blocks.drop_above(_block_span(0, size)[1])

        def cut(_: object) -> None:
            freed = self.used - self._blocks.total
            if freed > 0 and not self._closed:
                self.used -= freed
                if self.budget is not None:
                    self.budget.give_back(freed)

        return self._call(lambda: os.ftruncate(self._fd(), size)).addCallback(cut)

    def close(self) -> None:
        """
        Discard the file (after any operation in progress), then give back
        its disk to the gateway's budget.
        """
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self.budget is not None:
                self.budget.give_back(self.used)

        self._lock.run(lambda: succeed(None).addCallback(lambda _: close()))
