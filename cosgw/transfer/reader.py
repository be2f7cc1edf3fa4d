"""
Positional reads (SFTP's READ, each with an offset) over the sequential
streams an object store offers.

L{RangedReader} keeps one GET open per file handle and answers every read
from it.  Clients read a whole file in very different ways: paramiko's
C{get()} sends a READ for every block of the file at once, OpenSSH keeps 64
in flight, rclone and lftp a window of them; a few seek.  Whatever the
pattern, a sequential download is one GET:

  - A read ahead of the stream waits for the stream to reach it: it is a
    small record (an offset, a length, a Deferred), and the reads waiting
    on one file are capped (L{RangedReader.max_waiting}; the SFTP frontend
    caps a session's requests in flight well below that).  Reads are
    answered as the stream passes their last byte.
  - Memory: the bytes buffered are those the reads waiting need, the
    stream's read-ahead past the last read answered (C{ahead}, two chunks
    by default: data ready for the client's next reads, which the SFTP
    session caps), the last read's bytes (a client asking them again needs
    no GET), and the holes the reads left behind the furthest one answered,
    up to C{behind} (two chunks by default): reads sent in order may come
    out of order and fill them.  Bytes every read has passed are dropped
    at once; never a window's worth the client did not ask for (an 8 MiB
    read-ahead and 4 MiB kept behind made 32 OpenSSH downloads hold
    640 MiB; two chunks kept behind whether or not a hole was there,
    120 MiB of the 320 MiB 32 downloads held).  A read of the stream is
    a chunk, up to C{max_chunk} while the download buffer budget has room
    to spare (few downloads at once): each is a hand-off to a thread.
  - A read is I{reachable} when the stream gets to it without skipping more
    than C{window} bytes nobody asked for: counted from the stream's
    position, or from the end of another reachable read (a chain of reads
    is followed, however long).  The stream reads on while a reachable
    read waits.
  - The stream moves (a new GET) only for a real jump: when every read
    waiting is behind the bytes still buffered or beyond the chain, or
    when such a read has waited while the stream delivered C{2 x window}
    bytes to others.  A move strands nothing: the reads it leaves behind
    keep waiting and are answered by the stream, or by a later move.
  - A moved stream is a bounded range (C{bytes=a-b}): the reads waiting
    from there, and at least C{window} bytes.  A reader that goes on in
    order past its end continues with a new range four times longer, so a
    download resumed at an offset is a few GETs, not one per window, and
    a seek costs at most a window of bytes the store sends for nothing.
    (The first stream, from the file's open, is the whole object.)
  - Every new stream must be the same version of the object (size, ETag,
    CRC-64): otherwise the reads fail with L{IntegrityError}, never mixing
    versions.  A stream that reached the end of its range is read once more,
    so the store checks its byte count (and the whole object's CRC-64);
    a read at the end of the file (the client's EOF) waits for that check.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Callable
from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.interfaces import IByteSource, IntegrityError
from cosgw.transfer.download import DownloadBuffers
from cosgw.transfer.errors import TransferStopped
from cosgw.transfer.settings import MiB

log = Logger()

#: How much longer each range that continues a moved stream is.
GROWTH = 4
#: Ranges handed on out of order that a reader remembers (more: the
#: oldest are forgotten, and their chunks kept until they are C{behind}).
_MAX_ISLANDS = 64


class TooManyReads(Exception):
    """More reads wait on one file than L{RangedReader.max_waiting}."""


class _Read:
    __slots__ = ("offset", "end", "since", "deferred")

    def __init__(self, offset: int, end: int, since: int) -> None:
        self.offset = offset
        self.end = end
        #: The stream's delivered bytes when the read came: its age.
        self.since = since
        self.deferred: Deferred[bytes] = Deferred()


class RangedReader:
    """
    Reads at any offset of one object, from one sequential stream at a
    time.  The object must not change while it is read: a stream reopened on
    a different version fails the reads with L{IntegrityError}.
    """

    def __init__(
        self,
        source: IByteSource,
        reopen: Callable[[int, int], Deferred[IByteSource]],
        window: int = 8 * MiB,
        chunk: int = MiB,
        max_waiting: int = 1024,
        ahead: Optional[int] = None,
        buffers: Optional[DownloadBuffers] = None,
        behind: Optional[int] = None,
        max_chunk: Optional[int] = None,
    ) -> None:
        """
        @param source: the stream from where reading starts (the file's
            open), to its own end.
        @param reopen: opens a stream of bytes C{offset..end-1}.
        @param window: how far ahead of the stream a read still waits for
            it rather than moving it, and the least a moved stream reads.
        @param chunk: the most one read of the stream asks for.
        @param max_waiting: reads that may wait at once; more fail with
            L{TooManyReads}.
        @param ahead: how far the stream reads past the last read answered
            while no read waits for it (two chunks when None).
        @param buffers: the budget of all downloads: bytes buffered are
            charged there, and reading ahead waits for room in it.
        @param behind: how far behind the furthest read answered bytes no
            read was handed yet are kept for reads that come out of order
            (two chunks when None).
        @param max_chunk: the most one read of the stream asks for while
            C{buffers} has room to spare (L{DownloadBuffers.spare}): fewer
            reads, each a hand-off to a thread, when few downloads run;
            C{chunk} when None.
        """
        self.info = source.info
        self.size = source.info.size
        self.window = window
        self.chunk = chunk
        self.max_chunk = max(chunk, max_chunk or chunk)
        self.ahead = 2 * chunk if ahead is None else ahead
        self.behind = 2 * chunk if behind is None else behind
        self.buffers = buffers
        #: Bytes the read of the stream in flight charged to the budget.
        self._reading = 0
        self.max_waiting = max_waiting
        #: GETs this reader opened after the first stream (moves and
        #: continuations).
        self.reopened = 0
        self._reopen_at = reopen
        self._source: Optional[IByteSource] = source
        self._generation = 0
        #: A read or an open of the stream is in flight.
        self._busy = False
        #: Buffered stream bytes: chunks (offset, data, bytes of it charged
        #: to the budget), contiguous, ending at C{_pos}, the offset of the
        #: next byte the stream yields.
        self._chunks: deque[tuple[int, bytes, int]] = deque()
        self._pos = source.offset
        #: Where the current stream's range ends, and whether its end was
        #: read (and checked by the source).
        self._stop = source.offset + source.length
        self._ended = False
        #: The length of the range that would continue the current one.
        self._span = GROWTH * window
        #: Reads waiting, sorted by offset; reads at the end of the file
        #: waiting for the stream's end to be checked.
        self._requests: list[_Read] = []
        self._at_eof: list[Deferred[bytes]] = []
        #: The end of the furthest read answered: read-ahead runs from here.
        self._served = source.offset
        #: Every byte before C{_frontier} was handed to a read (or given up
        #: on, L{_trim}); C{_islands}: ranges handed on beyond it, sorted.
        self._frontier = source.offset
        self._islands: list[tuple[int, int]] = []
        #: The length of the last read answered: a re-read of it is served
        #: from memory.
        self._recent = 0
        self._delivered = 0
        self._failure: Optional[Failure] = None
        self._closed = False
        self._pumping = False
        self._again = False

    @property
    def _start(self) -> int:
        return self._chunks[0][0] if self._chunks else self._pos

    @property
    def waiting(self) -> int:
        """Reads waiting for the stream."""
        return len(self._requests) + len(self._at_eof)

    @property
    def buffered(self) -> int:
        """Bytes of the stream held in memory for reads."""
        return sum(len(data) for _, data, _ in self._chunks)

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """
        @return: Deferred firing with up to C{length} bytes at C{offset}
            (fewer only at the end of the object; C{b""} at or past it);
            failing with L{IntegrityError}/L{StoreError} if the stream broke,
            L{TooManyReads} when C{max_waiting} reads wait already, or
            L{TransferStopped} after L{close}.
        """
        if self._closed:
            return fail(TransferStopped("the file is closed"))
        if self._failure is not None:
            return fail(self._failure)
        end = min(offset + max(length, 0), self.size)
        at_eof = offset >= end
        if at_eof and not self._checking_end():
            return succeed(b"")
        if not at_eof and self._start <= offset and end <= self._pos:
            data = self._slice(offset, end)
            self._handed(offset, end)
            self._trim()
            self._pump()
            return succeed(data)
        if self.waiting >= self.max_waiting:
            return fail(TooManyReads(f"more than {self.max_waiting} reads waiting"))
        if at_eof:
            d: Deferred[bytes] = Deferred()
            self._at_eof.append(d)
        else:
            request = _Read(offset, end, self._delivered)
            insort(self._requests, request, key=lambda r: r.offset)
            d = request.deferred
        self._pump()
        return d

    def close(self) -> None:
        """Release the stream; waiting reads fail with L{TransferStopped}."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        if self._source is not None:
            self._source.close()
            self._source = None
        self._discharge(self._reading)
        self._reading = 0
        self._drop_chunks()
        if self.buffers is not None:
            self.buffers.forget(self._pump)
        self._answer_all(Failure(TransferStopped("the file is closed")))

    # -- what to do next ---------------------------------------------------

    def _checking_end(self) -> bool:
        """The stream holds the file's last byte and is about to check its end."""
        return self._pos == self._stop == self.size and not self._ended

    def _chain(self, low: int, frontier: int) -> tuple[int, list[_Read]]:
        """
        The end of the reads the stream reaches from C{frontier} without
        skipping more than C{window} bytes, leaving out reads before
        C{low}; and the waiting reads it does not reach.
        """
        unreached = []
        for i, r in enumerate(self._requests):
            if r.offset < low:
                unreached.append(r)
            elif r.offset <= frontier + self.window:
                frontier = max(frontier, r.end)
            else:
                unreached.extend(self._requests[i:])
                break
        return frontier, unreached

    def _pump(self) -> None:
        """Take the next step, and the next while steps complete at once."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._step()
        finally:
            self._pumping = False

    def _step(self) -> None:
        if self._busy or self._closed or self._failure is not None:
            return
        need, unreached = self._chain(self._start, self._pos)
        starving = [r for r in unreached if self._delivered - r.since > 2 * self.window]
        if starving:
            self._move(min(r.offset for r in starving))
        elif self._pos == self._stop and not self._ended:
            self._read_stream()  # the end of the range: the source checks it
        elif need > self._pos:
            if self._pos < self._stop:
                self._read_stream()
            else:
                end = min(self.size, max(need, self._pos + self._span))
                self._span *= GROWTH
                self._open(self._pos, end, keep=True)
        elif unreached:
            self._move(unreached[0].offset)
        elif self._pos < min(self._stop, self._served + self.ahead):
            self._read_stream(ahead=True)

    # -- the stream -------------------------------------------------------

    def _slice(self, offset: int, end: int) -> bytes:
        pieces = []
        for start, data, _ in self._chunks:
            stop = start + len(data)
            if stop <= offset:
                continue
            if start >= end:
                break
            pieces.append(data[max(offset - start, 0) : min(end, stop) - start])
        return b"".join(pieces)

    def _handed(self, offset: int, end: int) -> None:
        """Bytes C{offset..end-1} were handed to a read."""
        self._served = max(self._served, end)
        self._recent = end - offset
        if offset <= self._frontier:
            self._frontier = max(self._frontier, end)
        else:
            insort(self._islands, (offset, end))
            if len(self._islands) > _MAX_ISLANDS:
                del self._islands[0]
        self._absorb()

    def _absorb(self) -> None:
        """Move the frontier over the islands it reached."""
        islands = self._islands
        while islands and islands[0][0] <= self._frontier:
            self._frontier = max(self._frontier, islands.pop(0)[1])

    def _trim(self) -> None:
        """
        Drop the buffered chunks nobody will read: those every read has
        passed (all their bytes handed on, but for the last read's, which a
        client may ask again), and holes more than C{behind} bytes behind
        the furthest read answered (reads that came out of order fill a
        hole; nothing fills one that far back).
        """
        give_up = self._served - self.behind
        if self._frontier < give_up:
            self._frontier = give_up
            self._absorb()
        low = min(self._frontier, self._served - self._recent)
        start = self._start
        for r in self._requests:
            if r.offset >= start:
                low = min(low, r.offset)
                break
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= low:
            self._discharge(self._chunks.popleft()[2])

    def _drop_chunks(self) -> None:
        charged = sum(charge for _, _, charge in self._chunks)
        self._chunks.clear()
        self._discharge(charged)

    def _discharge(self, size: int) -> None:
        if self.buffers is not None and size:
            self.buffers.discharge(size)

    def _move(self, offset: int) -> None:
        """A real jump: a new stream at C{offset}, bounded."""
        need, _ = self._chain(offset, offset)
        end = min(self.size, max(need, offset + self.window))
        log.debug(
            "reading {key} from {offset} to {end}",
            key=for_log(self.info.key),
            offset=offset,
            end=end,
        )
        self._drop_chunks()
        self._served = self._frontier = offset
        self._islands = []
        self._span = GROWTH * (end - offset)
        # Every read left waiting gets a fresh allowance before it counts
        # as starving, or the reads this move leaves would pull the stream
        # straight back.
        for r in self._requests:
            r.since = self._delivered
        self._open(offset, end, keep=False)

    def _open(self, offset: int, end: int, keep: bool) -> None:
        """
        Replace the stream by one of bytes C{offset..end-1}; C{keep}: it
        continues the buffered bytes, which stay.
        """
        self._generation += 1
        if self._source is not None:
            self._source.close()
            self._source = None
        if not keep:
            self._drop_chunks()
        self._busy = True
        self._pos, self._stop, self._ended = offset, end, False
        self.reopened += 1
        generation = self._generation
        d = self._reopen_at(offset, end)
        d.addCallbacks(
            self._opened,
            self._failed,
            callbackArgs=(generation,),
            errbackArgs=(generation,),
        )

    def _opened(self, source: IByteSource, generation: int) -> None:
        if generation != self._generation:
            source.close()
            return
        if not self._same_version(source):
            source.close()
            self._failed(
                Failure(IntegrityError(f"{self.info.key} changed while being read")),
                generation,
            )
            return
        self._source = source
        self._busy = False
        self._pump()

    def _same_version(self, source: IByteSource) -> bool:
        info = source.info
        if info.size != self.size:
            return False
        if self.info.etag and info.etag and info.etag != self.info.etag:
            return False
        return not (
            self.info.crc64 is not None
            and info.crc64 is not None
            and info.crc64 != self.info.crc64
        )

    def _read_stream(self, ahead: bool = False) -> None:
        """
        Read the stream's next chunk, charged to the budget while it is
        buffered; when only reading ahead (no read waits for it), once the
        budget has room.  So with many downloads the budget holds the
        chunks their reads wait for, and none is read ahead.  While the
        budget has room to spare, the read asks for up to C{max_chunk}.
        """
        assert self._source is not None, "a stream is open when idle"
        left = self._stop - self._pos
        size = max(1, min(self.chunk, left))
        charge = 0
        if self.buffers is not None:
            if not ahead:
                self.buffers.needed(size)
            elif not self.buffers.ahead(size, self._pump):
                return  # pumped again when there is room
            most = min(self.max_chunk, left)
            if ahead:  # not past the read-ahead
                most = min(most, self._served + self.ahead - self._pos)
            more = most - size
            if more > 0 and self.buffers.spare(more):
                size += more
            charge = size
        self._reading = charge
        self._busy = True
        generation = self._generation
        d = self._source.read(size)
        d.addCallbacks(
            self._got,
            self._failed,
            callbackArgs=(generation,),
            errbackArgs=(generation,),
        )

    def _got(self, data: bytes, generation: int) -> None:
        if generation != self._generation:
            return
        self._busy = False
        # What came stays charged while buffered; the rest of the ask not.
        charge = min(self._reading, len(data))
        self._discharge(self._reading - charge)
        self._reading = 0
        if not data:
            self._end_of_range()
            return
        if self._pos + len(data) > self._stop:
            self._discharge(charge)
            self._failed(
                Failure(IntegrityError(f"{self.info.key}: more bytes than asked")),
                generation,
            )
            return
        self._chunks.append((self._pos, data, charge))
        self._pos += len(data)
        self._delivered += len(data)
        start, pos = self._start, self._pos
        ready: list[_Read] = []
        waiting: list[_Read] = []
        for r in self._requests:
            (ready if start <= r.offset and r.end <= pos else waiting).append(r)
        if ready:
            self._requests = waiting
        answers = [(r, self._slice(r.offset, r.end)) for r in ready]
        for r in ready:
            self._handed(r.offset, r.end)
        self._trim()
        self._pump()
        for r, answer in answers:
            r.deferred.callback(answer)

    def _end_of_range(self) -> None:
        if self._pos < self._stop:
            self._failed(
                Failure(IntegrityError(f"{self.info.key} ended early")),
                self._generation,
            )
            return
        self._ended = True
        eof, self._at_eof = self._at_eof, []
        self._pump()
        for d in eof:
            d.callback(b"")

    def _failed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation:
            return
        self._busy = False
        self._discharge(self._reading)
        self._reading = 0
        self._drop_chunks()
        self._failure = failure
        if self._source is not None:
            self._source.close()
            self._source = None
        self._answer_all(failure)

    def _answer_all(self, failure: Failure) -> None:
        requests, self._requests = self._requests, []
        eof, self._at_eof = self._at_eof, []
        for r in requests:
            r.deferred.errback(failure)
        for d in eof:
            d.errback(failure)
