"""
Positional reads (SFTP's READ, each with an offset) over the sequential
streams an object store offers.

L{RangedReader} keeps one ranged GET open per file handle and serves every
read that falls inside a bounded window around it, in any order; OpenSSH
sends many reads at increasing offsets at once and they are answered as the
stream reaches them.  A read outside the window moves the stream there (a
new ranged GET at that offset).  Memory per handle is about
C{window + chunk}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IByteSource, IntegrityError
from cosgw.transfer.errors import TransferStopped
from cosgw.transfer.settings import MiB

log = Logger()


class _Read:
    __slots__ = ("offset", "end", "deferred")

    def __init__(self, offset: int, end: int) -> None:
        self.offset = offset
        self.end = end
        self.deferred: Deferred[bytes] = Deferred()


class RangedReader:
    """
    Reads at any offset of one object, from one sequential stream where it
    can.  The object must not change while it is read: a stream reopened on
    a different version fails the reads with L{IntegrityError}.
    """

    def __init__(
        self,
        source: IByteSource,
        reopen: Callable[[int], Deferred[IByteSource]],
        window: int = 8 * MiB,
        chunk: int = MiB,
    ) -> None:
        """
        @param source: the stream from offset 0 (or wherever reading starts).
        @param reopen: opens a new stream at an offset.
        """
        self.info = source.info
        self.size = source.info.size
        self.window = window
        self.chunk = chunk
        self._reopen_at = reopen
        self._source: Optional[IByteSource] = source
        self._generation = 0
        self._reading = False
        #: Buffered stream bytes: chunks (offset, data), contiguous, ending
        #: at C{_pos}, the offset of the next byte the stream yields.
        self._chunks: list[tuple[int, bytes]] = []
        self._pos = source.offset
        self._requests: list[_Read] = []
        #: The end of the furthest read answered: read-ahead runs from here.
        self._served = source.offset
        self._failure: Optional[Failure] = None
        self._closed = False

    @property
    def _start(self) -> int:
        return self._chunks[0][0] if self._chunks else self._pos

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """
        @return: Deferred firing with up to C{length} bytes at C{offset}
            (fewer only at the end of the object; C{b""} at or past it);
            failing with L{IntegrityError}/L{StoreError} if the stream broke,
            or L{TransferStopped} after L{close}.
        """
        if self._closed:
            return fail(TransferStopped("the file is closed"))
        if self._failure is not None:
            return fail(self._failure)
        end = min(offset + max(length, 0), self.size)
        if offset >= end:
            return succeed(b"")
        if self._start <= offset and end <= self._pos:
            data = self._slice(offset, end)
            self._served = max(self._served, end)
            self._trim()
            self._fill()
            return succeed(data)
        request = _Read(offset, end)
        self._requests.append(request)
        if not (self._start <= offset <= self._pos + self.window):
            self._move(offset)
        self._fill()
        return request.deferred

    def close(self) -> None:
        """Release the stream; pending reads fail with L{TransferStopped}."""
        if self._closed:
            return
        self._closed = True
        self._generation += 1
        if self._source is not None:
            self._source.close()
            self._source = None
        self._chunks.clear()
        requests, self._requests = self._requests, []
        for r in requests:
            r.deferred.errback(TransferStopped("the file is closed"))

    # -- the stream -------------------------------------------------------

    def _slice(self, offset: int, end: int) -> bytes:
        pieces = []
        for start, data in self._chunks:
            stop = start + len(data)
            if stop <= offset:
                continue
            if start >= end:
                break
            pieces.append(data[max(offset - start, 0) : min(end, stop) - start])
        return b"".join(pieces)

    def _trim(self) -> None:
        """Drop buffered chunks nobody waits for and read-ahead has passed."""
        behind = max(2 * self.chunk, self.window // 2)
        low = min([r.offset for r in self._requests] + [self._served - behind])
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= low:
            self._chunks.pop(0)

    def _move(self, offset: int) -> None:
        """Reopen the stream at C{offset}; reads it strands go one-shot."""
        log.debug("reopening {key} at {offset}", key=self.info.key, offset=offset)
        self._generation += 1
        if self._source is not None:
            self._source.close()
            self._source = None
        self._reading = True
        self._chunks.clear()
        self._pos = self._served = offset
        stranded = [r for r in self._requests if r.offset < offset]
        self._requests = [r for r in self._requests if r.offset >= offset]
        for r in stranded:
            self._one_shot(r)
        generation = self._generation
        d = self._reopen_at(offset)
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
        self._reading = False
        self._fill()

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

    def _fill(self) -> None:
        if self._reading or self._source is None or self._pos >= self.size:
            return
        wanted = max([r.end for r in self._requests], default=0)
        ahead = min(self.size, self._served + self.window)
        if self._pos >= max(wanted, ahead):
            return
        self._reading = True
        generation = self._generation
        d = self._source.read(self.chunk)
        d.addCallbacks(
            self._got,
            self._failed,
            callbackArgs=(generation,),
            errbackArgs=(generation,),
        )

    def _got(self, data: bytes, generation: int) -> None:
        if generation != self._generation:
            return
        self._reading = False
        if not data:
            if self._pos < self.size:
                self._failed(
                    Failure(IntegrityError(f"{self.info.key} ended early")), generation
                )
            return
        self._chunks.append((self._pos, data))
        self._pos += len(data)
        ready = [r for r in self._requests if r.end <= self._pos]
        self._requests = [r for r in self._requests if r.end > self._pos]
        for r in ready:
            self._served = max(self._served, r.end)
        answers = [(r, self._slice(r.offset, r.end)) for r in ready]
        self._trim()
        self._fill()
        for r, answer in answers:
            r.deferred.callback(answer)

    def _failed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation:
            return
        self._reading = False
        self._failure = failure
        if self._source is not None:
            self._source.close()
            self._source = None
        requests, self._requests = self._requests, []
        for r in requests:
            r.deferred.errback(failure)

    def _one_shot(self, request: _Read) -> None:
        """Answer one read with its own short stream."""

        async def fetch() -> bytes:
            source = await self._reopen_at(request.offset)
            try:
                if not self._same_version(source):
                    raise IntegrityError(f"{self.info.key} changed while being read")
                pieces, got = [], 0
                while got < request.end - request.offset:
                    data = await source.read(request.end - request.offset - got)
                    if not data:
                        raise IntegrityError(f"{self.info.key} ended early")
                    pieces.append(data)
                    got += len(data)
                return b"".join(pieces)[: request.end - request.offset]
            finally:
                source.close()

        Deferred.fromCoroutine(fetch()).chainDeferred(request.deferred)
