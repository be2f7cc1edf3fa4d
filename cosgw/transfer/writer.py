"""
Positional writes (SFTP's WRITE, each with an offset) into an object that
is written once, front to back (a multipart upload).

L{PositionalWriter} turns writes at offsets into that order:

  - a write at the next expected offset goes straight to the
    L{UploadWriter} (the fast path every mainstream client takes);
  - a write ahead of it, within C{window} bytes of memory, waits in a
    reorder map until the gap before it is filled;
  - a write further ahead, or once the memory window is full, goes to a
    L{Spool}, a bounded temporary file, read back when the stream reaches
    it;
  - at the end, holes nobody wrote are zeros, as on a POSIX file;
  - a write behind the stream (rewriting bytes already uploaded) cannot be
    honoured and fails the whole file with L{RewriteRefused}: never a
    silently wrong object.

Backpressure: the writer pauses this object (its producer) while its parts
in flight are full or it waits for its turn in the upload buffer budget.
Acknowledgements of writes are then held back, which is all the flow
control SFTP has (the client stops at its in-flight limit); C{on_pressure}
tells the protocol when held bytes pass C{hold_limit}, so it can stop
reading the connection altogether against a client that ignores
acknowledgements.  While paused the limit is C{paused_hold_limit}: the
bytes taken then reach the upload writer outside any budget claim, and
OpenSSH keeps 64 writes of 255 KiB (16 MiB) in flight per file, so 32
paused uploads held 512 MiB beside the budget without this bound.  At
256 KiB (one such write held, the next stops the session's reading), 32
concurrent SFTP uploads within a 32 MiB budget peaked at 145 MiB of RSS,
against 152 MiB at 512 KiB and 199 MiB at 2 MiB, and were no slower: the
client's bytes wait in the kernel's socket buffers instead.  Held
acknowledgements are released in the order the writes came.  When the
upload fails in the store it stops this producer, which fails the file
with the upload's error.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from typing import Optional

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import StoreError
from cosgw.transfer.errors import RewriteRefused, SpoolFull, TransferStopped
from cosgw.transfer.settings import MiB
from cosgw.transfer.spool import Intervals, Spool
from cosgw.transfer.upload import UploadWriter

log = Logger()

#: Zeros for holes are fed in pieces of this size.
_ZERO_PIECE = MiB
#: What a chunk waiting in memory costs beyond its bytes (the dict entry,
#: the bytes object, its offset), counted against the window so that a
#: flood of tiny writes cannot hold far more memory than the window says.
_CHUNK_COST = 128


def _cost(data: bytes) -> int:
    return len(data) + _CHUNK_COST


@implementer(IPushProducer)
class PositionalWriter:
    """
    Writes at offsets in, the in-order stream of an L{UploadWriter} out; see
    the module docstring.  The object is the upload writer's base (what a
    resumed or appended upload starts with) followed by the bytes written
    from offset C{writer.base}.
    """

    def __init__(
        self,
        writer: UploadWriter,
        window: int = 16 * MiB,
        spool: Optional[Spool] = None,
        hold_limit: int = 16 * MiB,
        on_pressure: Optional[Callable[[bool], None]] = None,
        append: bool = False,
        paused_hold_limit: int = 256 * 1024,
    ) -> None:
        """
        @param spool: where writes beyond the memory window go; without one
            they fail the file with L{SpoolFull}.
        @param on_pressure: called with True when more than C{hold_limit}
            bytes wait for acknowledgement, False when they no longer do.
        @param append: every write goes to the end, whatever its offset (the
            SFTP APPEND flag, as O_APPEND).
        @param paused_hold_limit: the lower C{hold_limit} while the upload
            writer has paused this producer.
        """
        self.writer = writer
        self.window = window
        self.spool = spool
        self.hold_limit = hold_limit
        self.paused_hold_limit = min(hold_limit, paused_hold_limit)
        self.on_pressure = on_pressure
        self.append = append
        #: The offset of the next byte the upload takes.
        self.next = writer.base
        #: The end of the furthest write.
        self.end = writer.base
        self._offsets: list[int] = []  # sorted starts of the memory chunks
        self._memory: dict[int, bytes] = {}
        self._memory_bytes = 0
        self._spooled = Intervals()
        self._spooling = False
        self._paused = False
        self._io = False
        self._held: deque[tuple[int, Deferred[None]]] = deque()
        self._held_bytes = 0
        self._releasing = False
        self._pressure = False
        self._failure: Optional[Failure] = None
        self._final: Optional[int] = None
        self._done: Optional[Deferred[int]] = None
        writer.registerProducer(self, True)

    def adopt_spool(self, size: int) -> None:
        """
        The spool already holds the file's bytes [base, size): feed them at
        L{finish} (a file changed in place, uploaded whole at close).
        """
        self._spooling = True
        self._spooled.add(self.next, size)
        self.end = max(self.end, size)

    # -- the protocol's side ----------------------------------------------

    def write(self, offset: int, data: bytes) -> Optional[Deferred[None]]:
        """
        Take C{data} at C{offset}.

        @return: None when acknowledged at once; else a Deferred firing when
            the write may be acknowledged (the upload caught up).
        @raise RewriteRefused: the bytes are behind the stream.
        @raise SpoolFull: the out-of-order bytes need more space than allowed.
        @raise StoreError: the file already failed.
        """
        if self._failure is not None:
            self._failure.raiseException()
        if self._final is not None:
            raise StoreError("the file is being closed")
        if self.append:
            offset = max(self.end, self.next)
        if not data:
            return None
        end = offset + len(data)
        if offset < self.next:
            raise self._refuse(offset)
        self.end = max(self.end, end)
        if offset == self.next and not self._io and not self._covers_next():
            self._trim_memory(offset, end)
            self._feed(data)
            self._drain()
        elif self._spooling or (
            self.spool is not None
            and (
                end > self.next + self.window
                or self._memory_bytes + _cost(data) > self.window
            )
        ):
            self._spool_write(offset, data)
        elif (
            end > self.next + self.window
            or self._memory_bytes + _cost(data) > self.window
        ):
            raise SpoolFull(
                f"a write at {offset} is too far ahead of the upload at {self.next}"
            )
        else:
            self._trim_memory(offset, end)
            bisect.insort(self._offsets, offset)
            self._memory[offset] = data
            self._memory_bytes += _cost(data)
            self._drain()
        return self._ack(len(data))

    def finish(self, size: Optional[int] = None) -> Deferred[int]:
        """
        No more writes: feed what is left (zeros in holes) into the upload.

        @param size: the file's final size when the client set one (SFTP
            setstat), else the end of the furthest write.
        @return: Deferred firing with the object's size once every byte has
            reached the upload writer (the caller then commits it); failing
            with the error that failed the file.
        """
        if self._failure is not None:
            return fail(self._failure)
        final = self.end if size is None else size
        if final < self.next:
            return fail(
                RewriteRefused(
                    f"cannot make the file {final} bytes long: {self.next} bytes "
                    "are already uploaded"
                )
            )
        if final < self.end:
            # The client cut the file short (SFTP setstat size): what was
            # written beyond the new end is not part of it.
            self._trim_memory(final, self.end)
            self._spooled.drop_above(final)
        self._final = final
        self._done = Deferred()
        self._drain()
        return self._done

    def fail(self, failure: Failure) -> None:
        """Give up: held acknowledgements fail, the spool goes."""
        if self._failure is not None:
            return
        self._failure = failure
        held, self._held = self._held, deque()
        self._held_bytes = 0
        self._set_pressure(False)
        for _, d in held:
            d.errback(failure)
        if self.spool is not None:
            self.spool.close()
        self._memory.clear()
        self._offsets.clear()
        if self._done is not None and not self._done.called:
            self._done.errback(failure)

    # -- IPushProducer (the upload writer's side) -------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._held_bytes > self.paused_hold_limit:
            self._set_pressure(True)

    def resumeProducing(self) -> None:
        self._paused = False
        self._release()
        self._drain()

    def stopProducing(self) -> None:
        """The upload failed (store, quota, size): the file fails with it."""
        self.fail(self.writer.failure or Failure(TransferStopped("the upload stopped")))

    # -- internals ----------------------------------------------------------

    def _refuse(self, offset: int) -> RewriteRefused:
        error = RewriteRefused(
            f"a write at offset {offset} would change bytes already uploaded "
            f"(the upload is at {self.next}); this server stores whole "
            "objects, so files must be written front to back"
        )
        self.fail(Failure(error))
        return error

    def _ack(self, size: int) -> Optional[Deferred[None]]:
        # Behind acknowledgements still held (being released: a reply sent
        # may make the protocol take the next write at once), this one
        # waits its turn: clients such as paramiko need them in order.
        if not self._paused and not self._io and not self._held:
            return None
        d: Deferred[None] = Deferred()
        self._held.append((size, d))
        self._held_bytes += size
        limit = self.paused_hold_limit if self._paused else self.hold_limit
        if self._held_bytes > limit:
            self._set_pressure(True)
        return d

    def _release(self) -> None:
        """Acknowledge the writes held, in order, while not paused."""
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._held and not self._paused:
                size, d = self._held.popleft()
                self._held_bytes -= size
                d.callback(None)
        finally:
            self._releasing = False
        if not self._held:
            self._set_pressure(False)

    def _set_pressure(self, on: bool) -> None:
        if on != self._pressure:
            self._pressure = on
            if self.on_pressure is not None:
                self.on_pressure(on)

    def _feed(self, data: bytes) -> None:
        self.next += len(data)
        self._spooled.drop_below(self.next)
        self.writer.write(data)

    def _covers_next(self) -> bool:
        return self._spooled.covering(self.next) is not None

    def _trim_memory(self, start: int, end: int) -> None:
        """A newer write of [start, end) replaces what memory held there."""
        i = bisect.bisect_left(self._offsets, start)
        if i > 0:
            i -= 1
        while i < len(self._offsets):
            at = self._offsets[i]
            if at >= end:
                break
            data = self._memory[at]
            stop = at + len(data)
            if stop <= start:
                i += 1
                continue
            del self._memory[at]
            del self._offsets[i]
            self._memory_bytes -= _cost(data)
            for keep_at, keep in (
                (at, data[: max(0, start - at)]),
                (end, data[max(0, end - at) :] if stop > end else b""),
            ):
                if keep:
                    j = bisect.bisect_left(self._offsets, keep_at)
                    self._offsets.insert(j, keep_at)
                    self._memory[keep_at] = keep
                    self._memory_bytes += _cost(keep)
            i = bisect.bisect_left(self._offsets, start)
            if i > 0:
                i -= 1

    def _spool_write(self, offset: int, data: bytes) -> None:
        assert self.spool is not None
        if not self._spooling:
            log.info(
                "{key}: writes out of order beyond the reorder window; "
                "spooling them to a temporary file",
                key=self.writer.key,
            )
        self._spooling = True
        self._trim_memory(offset, offset + len(data))
        d = self.spool.write(offset, data)  # SpoolFull propagates
        self._spooled.add(offset, offset + len(data))
        d.addErrback(self.fail)
        self._drain()

    def _drain(self) -> None:
        """Feed the upload from memory, the spool and holes, in order."""
        while not self._paused and not self._io and self._failure is None:
            if self._offsets and self._offsets[0] <= self.next:
                at = self._offsets.pop(0)
                data = self._memory.pop(at)
                self._memory_bytes -= _cost(data)
                if at + len(data) > self.next:
                    self._feed(data[self.next - at :])
                continue
            covering = self._spooled.covering(self.next)
            if covering is not None:
                self._read_spool(min(covering[1] - self.next, MiB))
                return
            if self._final is None:
                break
            if self.next >= self._final:
                self._finished()
                return
            later = self._offsets[:1]
            spooled = self._spooled.first_after(self.next)
            if spooled is not None:
                later.append(spooled)
            gap_end = min(later + [self._final])
            self._feed(bytes(min(gap_end - self.next, _ZERO_PIECE)))
        self._release()

    def _read_spool(self, length: int) -> None:
        assert self.spool is not None
        self._io = True
        start = self.next
        # Reserve the range: a write landing in it meanwhile is a rewrite.
        self.next += length

        def got(data: bytes) -> None:
            self._io = False
            if self._failure is not None:
                return
            self.next = start
            self._feed(data)
            self._drain()

        d = self.spool.read(start, length)
        d.addCallbacks(got, self.fail)

    def _finished(self) -> None:
        if self._done is not None and not self._done.called:
            if self.spool is not None:
                self.spool.close()
            self._release()
            self._done.callback(self.next)
