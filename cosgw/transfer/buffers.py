"""
The memory all uploads of a gateway buffer their parts in
(C{upload_buffer_budget}), and where a part's bytes are put together.

An upload writer holds a part in memory from its first byte until the
store has it.  Without a shared limit every upload could hold (parts in
flight + 1) x part size, and 32 uploads of 8 MiB parts held about 1 GiB.
L{UploadBuffers} is one budget for all of them: before a writer fills a
part it claims the part's size (L{UploadBuffers.claim}); while its claim
waits, its producer (the data connection, the SFTP file) is paused, so TCP
pushes back on the client.  A claim is given back when the part is stored,
fails or is discarded.

Fairness and progress, the rules in one place:

  - claims are granted first come, first served (a writer holds one claim
    waiting at a time, so uploads take turns part by part) and never fail:
    an upload slows down, it is not refused;
  - a claim is granted when it fits in what is left of the budget, or when
    no other claim of its lane is held (so even a part larger than the
    whole budget is granted in its turn);
  - parts larger than half the budget (parts grow as a stream grows; the
    budget may be small) take turns in a lane of their own, one at a time
    and outside the budget, so they never hold the ordinary parts of every
    other upload back: memory stays within the budget plus one such part;
  - an upload claims nothing for its first L{UNCLAIMED} bytes, so a small
    file (most files) never waits for a turn: a paused connection would
    not even see the client's end of the file;
  - bytes held without a claim (those first bytes, a read under way when
    the producer was paused) are counted (L{UploadBuffers.charge}), and
    the writer's next grant covers them.

A part's bytes live in one block of memory of the part's size, mapped on
its own (L{part_block}) when its claim is granted: each read is copied in
as it comes (on the reactor, one read's worth at a time) and dropped
(L{PartBuffer}), so the heap never holds the budget; the store is handed
a view of the block, which goes back to the system whole once the part is
stored.  Reads kept without a block (before the grant, past a block's
end) are put together, when a part is made of more than one, in the thread pool
(L{UploadBuffers.assemble}), where C{bytes.join} runs without the GIL,
unless they are no more than one read (L{INLINE_JOIN}).
"""

from __future__ import annotations

import ctypes
import mmap
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol, TypeVar, Union

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

log = Logger()

T = TypeVar("T")

#: The bytes an upload holds before it claims its first part.  An upload
#: that passes them holds them and the read that did, without a claim,
#: until its claim is granted: 32 FTP uploads starting together held 40
#: MiB so at 256 KiB (a first read of about 220 KiB each, then a whole
#: read of 1 MiB), beside a 32 MiB budget; 7 MiB at 64 KiB.
UNCLAIMED = 64 * 1024
#: Parts up to this size are put together on the reactor: a copy no larger
#: than one read of a data connection costs less than a trip to a thread.
INLINE_JOIN = 1024 * 1024


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Blocks this large or larger get their own mapping, unmapped when freed.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free memory at the top of the heap kept for reuse, not given back.
TRIM_THRESHOLD = 32 * 1024 * 1024


def tune_malloc() -> bool:
    """
    Make glibc's allocator follow the budgets: one heap for all threads,
    and blocks of L{MMAP_THRESHOLD} or more (the 16 MiB a login's scrypt
    takes in OpenSSL, reads put together in the pool; upload parts have
    blocks of their own, L{part_block}) mapped on their own and given back
    to the system when freed, so they never leave holes in the heap that
    the heap keeps.

      - One heap: by default glibc gives threads up to 8 heaps per core, and
        parts freed in one heap stay there while another grows (32
        concurrent 32 MiB uploads within a 128 MiB budget peaked at
        520 MiB of RSS with glibc's default heaps, 290 MiB with one).
      - Big blocks mapped: glibc's own threshold starts at 128 KiB and
        rises to the size of the largest mapped block freed, so after the
        first freed part every part, and every login's 16 MiB, came from
        the heap, whose free space the process keeps (32 concurrent 32 MiB
        FTP uploads within a 32 MiB budget: 55 MiB in use and 57 MiB free
        in the heap at the peak, 175 MiB of RSS).  Fixed at 4 MiB, parts
        and logins come and go whole and reads (1 MiB at most) stay in the
        heap: 150 MiB of RSS, for about 0.15 s more CPU per GB uploaded
        (the page faults of each new part; measured here).
      - The top of the heap is kept up to 32 MiB (the threshold glibc's
        own rule would reach), so the heap does not shrink and grow again
        with every read.

    Process-wide, so the service calls it once, before its threads start;
    elsewhere (not glibc) it does nothing.

    @return: Whether malloc took the settings.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(
        mallopt(option, value)
        for option, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )


class Runner(Protocol):
    """Runs a blocking callable off the reactor (L{BlockingRunner})."""

    def run(self, f: Callable[..., T], *args: Any) -> Deferred[T]: ...


#: A read, or a piece of one cut at a part boundary, or a view of a part's
#: block (a view: no copy).
Chunk = Union[bytes, memoryview]


def part_block(size: int) -> Optional[mmap.mmap]:
    """
    Memory for a part of C{size} bytes: an anonymous mapping of its own
    (private: a shared one is a file in the kernel's shmem, slower to fill).
    The kernel provides its pages as they are first written (a short last
    part takes no more than its bytes) and takes them all back when the
    last view of the block goes: a part never leaves room behind in the
    heap, whatever malloc's settings.  None when the system will not map
    that much (a part of GiBs on a small machine): the part keeps its reads
    then, as it does before its claim is granted.
    """
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    except (OSError, ValueError, OverflowError):
        return None


def join_inline(chunks: Sequence[Chunk]) -> Deferred[Chunk]:
    """
    Put a part together at once (no thread pool): for tests and small
    parts.  A single piece is the part as it is.
    """
    if len(chunks) == 1:
        return succeed(chunks[0])
    return succeed(b"".join(chunks))


class BufferClaim:
    """
    Bytes of part buffer one writer holds, or waits to hold, out of an
    L{UploadBuffers}.  Give it back with L{release}, whether granted or not.
    """

    def __init__(
        self,
        buffers: UploadBuffers,
        size: int,
        big: bool,
        on_grant: Callable[[BufferClaim], None],
    ) -> None:
        self.size = size
        #: Bytes already charged that the claim will cover once granted
        #: (its writer's first bytes): they need no more room.
        self.covers = 0
        #: Whether the claim holds its bytes (else it waits its turn).
        self.granted = False
        self.released = False
        self.big = big
        self._buffers = buffers
        self._on_grant = on_grant

    def release(self) -> None:
        """Give the bytes back (or stop waiting for them); idempotent."""
        if not self.released:
            self.released = True
            self._buffers._release(self)

    def shrink(self, size: int) -> None:
        """A granted claim needs only C{size} bytes now (a short last part)."""
        if not self.granted or self.released or size >= self.size:
            return
        self._buffers._shrink(self, size)


class UploadBuffers:
    """
    The part buffers of every upload, within C{limit} bytes; see the
    module docstring for the rules.

    @ivar peak: the most bytes held at once (claims granted plus bytes
        charged), for tests and benchmarks.
    @ivar waited: how many claims had to wait for their turn.
    """

    def __init__(self, limit: int, runner: Optional[Runner] = None) -> None:
        """
        @param limit: the budget in bytes (at least 1).
        @param runner: puts parts together in the thread pool; None puts
            them together at once, on the caller's thread (tests).
        """
        self.limit = max(1, limit)
        self.runner = runner
        self.peak = 0
        self.waited = 0
        #: Bytes held in the ordinary lane: granted claims and charges.
        self._used = 0
        #: Bytes of the granted claim of the big-parts lane, if any.
        self._big_used = 0
        self._granted = 0  # ordinary claims granted and not released
        self._big_granted = 0
        self._waiting: deque[BufferClaim] = deque()
        self._big_waiting: deque[BufferClaim] = deque()
        self._granting = False
        #: Blocks of parts stored, kept for the next parts (L{keep}).
        self._spare: dict[int, list[mmap.mmap]] = {}
        self._spare_bytes = 0

    @property
    def used(self) -> int:
        """Bytes held now: granted claims of both lanes and charged bytes."""
        return self._used + self._big_used

    @property
    def waiting(self) -> int:
        """Claims waiting for their turn."""
        return len(self._waiting) + len(self._big_waiting)

    def claim(
        self, size: int, on_grant: Callable[[BufferClaim], None], covers: int = 0
    ) -> BufferClaim:
        """
        Ask for C{size} bytes of part buffer.

        @param covers: bytes the caller has charged that the claim will
            cover when granted (see L{BufferClaim.covers}).
        @return: The claim, already granted when it could be at once (then
            C{on_grant} is not called); else C{on_grant(claim)} is called
            when its turn comes, unless it was released before.
        """
        claim = BufferClaim(self, size, size > self.limit // 2, on_grant)
        claim.covers = covers
        queue = self._big_waiting if claim.big else self._waiting
        if not queue and self._fits(claim):
            self._hold(claim)
        else:
            queue.append(claim)
            self.waited += 1
        return claim

    def charge(self, size: int) -> None:
        """Count C{size} bytes held without a claim (they arrived anyway)."""
        self._used += size
        self.peak = max(self.peak, self.used)

    def discharge(self, size: int) -> None:
        """C{size} charged bytes are gone (stored, discarded, now claimed)."""
        self._used -= size
        self._grant_waiting()

    def assemble(self, chunks: Sequence[Chunk]) -> Deferred[Chunk]:
        """
        One part's bytes from its pieces: a single piece (a view of the
        part's block, one read) as it is, else the pieces joined.

        @return: A Deferred firing with the part: at once for a single
            piece or a small part, else from the thread pool.
        """
        if (
            self.runner is None
            or len(chunks) == 1
            or sum(len(c) for c in chunks) <= INLINE_JOIN
        ):
            return join_inline(chunks)
        return self.runner.run(b"".join, chunks)

    # -- blocks --------------------------------------------------------------

    def block(self, size: int) -> Optional[mmap.mmap]:
        """
        A block for a part of C{size} bytes whose claim was just granted: a
        spare one of that size, else a new one, once spares of other sizes
        (parts grow as a stream grows) that no longer fit beside the bytes
        the budget holds are dropped.
        """
        spare = self._spare.get(size)
        if spare:
            self._spare_bytes -= size
            return spare.pop()
        for blocks in self._spare.values():
            while blocks and self.used + self._spare_bytes > self.limit:
                self._spare_bytes -= len(blocks.pop())
        return part_block(size)

    def keep(self, block: mmap.mmap, releasing: int) -> None:
        """
        A part's block is free (the part is stored or dropped) and its
        holder is about to give back C{releasing} bytes: keep the block for
        the next part while the budget's bytes and the blocks kept stay
        within the limit, and nothing else can see it.  A new block costs
        a page fault per 4 KiB written (with the faults of a new part for
        every part, 32 concurrent 32 MiB FTP uploads took 0.3 s more CPU
        per GB here); the kernel keeps a block kept, so it is the budget's
        memory reused, not memory beyond it.
        """
        size = len(block)
        if self.used - releasing + self._spare_bytes + size > self.limit:
            return
        try:
            # An mmap will not resize while a view of it is exported (a
            # store's traceback may hold one): the only way to ask.  The
            # same size moves nothing.
            block.resize(size)
        except (BufferError, OSError, SystemError):
            # BufferError: a view is out; the others: a system that cannot
            # remap (no mremap), where the block is simply not kept.
            return
        self._spare.setdefault(size, []).append(block)
        self._spare_bytes += size

    # -- claims --------------------------------------------------------------

    def _fits(self, claim: BufferClaim) -> bool:
        if claim.big:
            return not self._big_granted
        room = claim.size - min(claim.covers, claim.size)
        return not self._granted or self._used + room <= self.limit

    def _hold(self, claim: BufferClaim) -> None:
        claim.granted = True
        if claim.big:
            self._big_granted += 1
            self._big_used += claim.size
        else:
            self._granted += 1
            self._used += claim.size
        self.peak = max(self.peak, self.used)

    def _release(self, claim: BufferClaim) -> None:
        if not claim.granted:
            queue = self._big_waiting if claim.big else self._waiting
            queue.remove(claim)
        elif claim.big:
            self._big_granted -= 1
            self._big_used -= claim.size
        else:
            self._granted -= 1
            self._used -= claim.size
        self._grant_waiting()

    def _shrink(self, claim: BufferClaim, size: int) -> None:
        given_back = claim.size - size
        claim.size = size
        if claim.big:
            self._big_used -= given_back
        else:
            self._used -= given_back
        self._grant_waiting()

    def _next(self) -> Optional[BufferClaim]:
        """The claim whose turn it is, if it can be granted now."""
        for queue in (self._waiting, self._big_waiting):
            if queue and self._fits(queue[0]):
                return queue.popleft()
        return None

    def _grant_waiting(self) -> None:
        """
        Grant waiting claims in order while they fit.  A writer told of its
        grant may release or claim at once; those calls come back here and
        return, and this loop looks again.
        """
        if self._granting:
            return
        self._granting = True
        try:
            while (claim := self._next()) is not None:
                self._hold(claim)
                try:
                    claim._on_grant(claim)
                except Exception:
                    log.failure("an upload failed to take its buffer grant")
        finally:
            self._granting = False


@dataclass
class Held:
    """
    What one part holds of the budget: a claim, bytes charged, or both; and
    its block, if it had one, to be kept for the next part.
    """

    buffers: Optional[UploadBuffers] = None
    claim: Optional[BufferClaim] = None
    charged: int = 0
    block: Optional[mmap.mmap] = None

    def free(self) -> None:
        """The part's bytes are gone (stored, failed, discarded); idempotent."""
        if self.block is not None and self.buffers is not None:
            claimed = self.claim.size if self.claim is not None else 0
            self.buffers.keep(self.block, claimed + self.charged)
        self.block = None
        if self.claim is not None:
            self.claim.release()
            self.claim = None
        if self.charged and self.buffers is not None:
            self.buffers.discharge(self.charged)
        self.charged = 0


class PartBuffer:
    """
    The part an upload writer is filling, and its share of the budget.

    Until the part's claim is granted, its bytes are the reads that brought
    them, kept as they came (an upload's first L{UNCLAIMED} bytes, most
    files whole) and charged.  Once it is granted, the part is one block of
    the claim's size (L{part_block}): what is held is copied into it, and
    so is every later read, which is dropped at once.  A part then lives
    in one place from its first byte until the store has it.  Kept as
    reads until it was put together, it lived in the heap while it filled
    and in a mapping of its own once put together, and the heap keeps the
    room its freed reads took: 32 concurrent 32 MiB FTP uploads within a
    32 MiB budget grew the heap by 60 MiB beside 24 MiB of parts sent.
    The rest of the read that completes a part is kept (a copy: the read
    goes), charged, for the next part.

    Without an L{UploadBuffers} it is always L{ready}, and L{request} maps
    the block at once.
    """

    def __init__(
        self, buffers: Optional[UploadBuffers], on_grant: Callable[[], None]
    ) -> None:
        self.buffers = buffers
        #: Reads kept as they came: before the block, and past its end.
        self.chunks: list[Chunk] = []
        #: Bytes buffered: the block's and the reads'.
        self.size = 0
        self._block: Optional[mmap.mmap] = None
        self._filled = 0
        self._claim: Optional[BufferClaim] = None
        self._charged = 0
        self._on_grant = on_grant
        #: Told when L{holding} changes: uploads waiting for the budget wait
        #: for this part's bytes, so nothing may stop its input meanwhile
        #: (another file's backpressure on a shared SSH connection would
        #: stall both).  Its writer clears the buffer when the upload ends.
        self.on_hunger: Optional[Callable[[bool], None]] = None
        self._hungry = False

    @property
    def ready(self) -> bool:
        """Whether bytes may be cut into a part: its claim is granted."""
        return self.buffers is None or (self._claim is not None and self._claim.granted)

    @property
    def claiming(self) -> bool:
        """Whether the part has its block or a claim, held or waiting."""
        return self._claim is not None or self._block is not None

    @property
    def holding(self) -> bool:
        """Whether a granted claim waits for the bytes of its part."""
        return self._claim is not None and self._claim.granted

    @property
    def block(self) -> Optional[mmap.mmap]:
        """The part's block, once it has one."""
        return self._block

    def _note_hunger(self) -> None:
        holding = self.holding
        if holding != self._hungry:
            self._hungry = holding
            if self.on_hunger is not None:
                self.on_hunger(holding)

    def add(self, data: bytes) -> None:
        """Keep C{data} (in the block, once there is one) and count it."""
        self.size += len(data)
        self._place(data)
        self._sync()

    def _place(self, data: Chunk) -> None:
        block = self._block
        if block is None or self.chunks:
            self.chunks.append(data)
            return
        at, room = self._filled, len(block) - self._filled
        if len(data) <= room:
            block[at : at + len(data)] = data
            self._filled += len(data)
        else:
            view = memoryview(data)
            block[at:] = view[:room]
            self._filled = len(block)
            self.chunks.append(bytes(view[room:]))

    def request(self, size: int) -> bool:
        """
        Claim C{size} bytes for the part (call only when not L{claiming});
        the block is mapped when the claim is granted.

        @return: Whether the claim was granted at once; else the writer's
            C{on_grant} is called when it is.
        """
        assert not self.claiming
        if self.buffers is None:
            self._map(size)
            return True
        self._claim = self.buffers.claim(size, self._granted, self._charged)
        if self._claim.granted:
            self._map(size)
        self._sync()
        return self._claim.granted

    def _map(self, size: int) -> None:
        """Give the part its block and move the bytes held into it."""
        buffers = self.buffers
        self._block = part_block(size) if buffers is None else buffers.block(size)
        if self._block is not None:
            chunks, self.chunks = self.chunks, []
            for chunk in chunks:
                self._place(chunk)

    def take(self, size: int) -> tuple[list[Chunk], Held]:
        """
        Cut the first C{size} bytes (at most L{size}) into a part: its
        pieces (a view of the block, or reads), and what it holds of the
        budget (the granted claim, shrunk to C{size} if larger, and charges
        for the rest).  A claim still waiting stays with the buffer.
        """
        pieces, block = self.chunks, self._block
        if block is not None:
            if self._filled:
                pieces = [memoryview(block)[: self._filled], *pieces]
            self._block, self._filled = None, 0
        count = total = 0
        while count < len(pieces) and total + len(pieces[count]) <= size:
            total += len(pieces[count])
            count += 1
        taken, self.chunks = pieces[:count], pieces[count:]
        if total < size:
            # The boundary falls inside a piece: two views of it, no copy.
            view = memoryview(self.chunks[0])
            taken.append(view[: size - total])
            self.chunks[0] = view[size - total :]
        claim = self._claim if self.ready else None
        covered = 0
        if claim is not None:
            claim.shrink(size)
            covered = claim.size
            self._claim = None
        held = Held(self.buffers, claim, size - covered, block)
        # The part's charges move with it; the rest are counted again.
        self._charged -= held.charged
        self.size -= size
        self._sync()
        return taken, held

    def clear(self) -> None:
        """Drop the bytes and give back the claim and the charges."""
        self.chunks = []
        self._block, self._filled = None, 0
        self.size = 0
        if self._claim is not None:
            self._claim.release()
            self._claim = None
        self._sync()

    def _covered(self) -> int:
        if self._claim is None or not self._claim.granted:
            return 0
        return min(self.size, self._claim.size)

    def _sync(self) -> None:
        """Charge exactly the bytes the claim does not cover."""
        if self.buffers is None:
            return
        want = self.size - self._covered()
        if want > self._charged:
            self.buffers.charge(want - self._charged)
        elif want < self._charged:
            self.buffers.discharge(self._charged - want)
        self._charged = want
        if self._claim is not None and not self._claim.granted:
            self._claim.covers = want
        self._note_hunger()

    def _granted(self, claim: BufferClaim) -> None:
        self._map(claim.size)
        self._sync()
        self._on_grant()
