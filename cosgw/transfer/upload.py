"""
An upload: bytes in from a push producer (the data connection), an object
out.

The data connection is a push producer writing into an L{UploadWriter},
which cuts parts of the current part size and uploads up to
C{parts_in_flight} of them at once; when that many are held it pauses the
data connection, so TCP pushes back on the client.  Memory per upload is
therefore bounded by (parts in flight + 1) x part size, and all uploads
together by the gateway's L{UploadBuffers} (C{settings.buffers}): before
filling a part the writer claims its size there, and while the claim waits
its turn the data connection is paused too.  A part's bytes are copied into
one block of its size as they come (L{PartBuffer}).  When the upload fails
on the store's side (a part, the quota, the size limit) the writer stops
its producer, as a consumer that can take no more does.

Upload state machine (L{UploadState}).  "The final call" is the single PUT
of a small upload or the CompleteMultipartUpload of a large one.

    =========  ====================================  =========
    state      event                                 next
    =========  ====================================  =========
    OPEN       write(), a part stored                OPEN
    OPEN       finish()                              FINISHING
    OPEN       a part/create fails, too large        FAILED
    OPEN       abort()                               ABORTED
    FINISHING  last parts stored: final call issued  FINISHING
    FINISHING  final call succeeds                   DONE
    FINISHING  any failure                           FAILED
    FINISHING  abort() before the final call         ABORTED
    FINISHING  abort() during the final call         (waits)
    =========  ====================================  =========

In FAILED and ABORTED the multipart upload (if one was started) is aborted
once no part is in flight, so no part outlives the upload.  An abort() that
arrives while the final call is in flight waits for it: if it succeeds, every
byte arrived before a clean end of stream and the object is whole, so it
stays (deleting it would also destroy the version it replaced); if it fails,
the upload is cleaned up as any failed one.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import MAX_PARTS, IObjectStore, ObjectInfo, PartInfo
from cosgw.transfer.buffers import UNCLAIMED, Chunk, Held, PartBuffer, join_inline
from cosgw.transfer.errors import (
    QuotaReached,
    TransferStopped,
    UploadTooLarge,
    log_cleanup_failure,
)
from cosgw.transfer.parts import (
    CopyRange,
    contiguous_parts,
    copy_ranges,
    part_size_for,
)
from cosgw.transfer.registry import UploadRegistry
from cosgw.transfer.settings import TransferSettings

log = Logger()


class UploadState(enum.Enum):
    OPEN = "open"
    FINISHING = "finishing"
    DONE = "done"
    FAILED = "failed"
    ABORTED = "aborted"
    SUSPENDED = "suspended"


@implementer(IConsumer)
class UploadWriter:
    """
    The consumer side of an upload: bytes in, an object out.

    The producer (a data connection) is registered with C{registerProducer}
    and paused and resumed by this writer.  End of stream is not
    C{unregisterProducer} (a connection reset looks the same to it); the
    protocol decides and calls L{finish} or L{abort}.
    """

    def __init__(
        self,
        store: IObjectStore,
        key: str,
        settings: TransferSettings,
        size_hint: Optional[int] = None,
        metadata: Optional[Mapping[str, str]] = None,
        registry: Optional[UploadRegistry] = None,
        resume: Optional[tuple[str, Sequence[PartInfo]]] = None,
        copy_prefix: Optional[tuple[str, int]] = None,
        initial: bytes = b"",
        budget: Optional[Any] = None,
    ) -> None:
        """
        @param resume: (upload id, its parts 1..k) of an interrupted upload
            to continue: new bytes become parts k+1, k+2, ...
        @param copy_prefix: (key, n): the object starts with the first n
            bytes (n >= 1 MiB) of the existing object C{key}, copied
            server-side, then the new bytes (APPE, REST n + STOR).
        @param initial: bytes the object starts with before the new ones
            (a prefix too small for a server-side part copy).
        @param budget: the user's quota reservation (L{cosgw.policy.quota.Reservation}):
            the object's size is claimed as it grows, committed when the
            object is stored, turned into a claim of the kept parts when the
            upload is suspended with parts kept, released otherwise.
        """
        self.store = store
        self.key = key
        self.settings = settings
        self.size_hint = size_hint
        self.metadata = dict(metadata) if metadata else None
        self.state = UploadState.OPEN
        self.received = 0
        self.upload_id: Optional[str] = None
        self._producer: Optional[IPushProducer] = None
        self._paused = False
        buffers = settings.buffers
        self._fill = PartBuffer(buffers, self._advance)
        self._assemble = buffers.assemble if buffers is not None else join_inline
        #: The single PUT's hold on the budget, freed when it settles.
        self._final_held = Held()
        self._next_number = 1
        self._pending: deque[tuple[int, list[Chunk] | CopyRange, Held]] = deque()
        self._in_flight = 0
        self._parts: list[PartInfo] = []
        self._creating: Optional[Deferred[str]] = None
        #: Whether create_multipart has answered (not C{_creating.called}: a
        #: Deferred waiting on another one counts as called before it has
        #: a result).
        self._create_settled = False
        self._final: Optional[Deferred[ObjectInfo]] = None
        self._abort_requested = False
        self._outcome: Optional[ObjectInfo | Failure] = None
        self._waiters: list[Deferred[ObjectInfo]] = []
        self._cleanup_requested = False
        self._aborting = False
        self._clean = False
        self._clean_waiters: list[Deferred[None]] = []
        self._registry = registry
        self._registered: Optional[str] = None
        #: Bytes of the object that did not come from this stream (kept
        #: parts of a resumed upload, a copied prefix).
        self.base = 0
        #: Parts stored, and the store's retries of them (for the audit).
        self.parts_stored = self.retries = 0
        self._start_from(resume, copy_prefix, initial)
        self._budget = budget
        if budget is not None and not budget.grow(self.size):
            self._fail(Failure(QuotaReached(f"{key}: over the quota")))
            return
        self._pump()
        self._advance()

    def _start_from(
        self,
        resume: Optional[tuple[str, Sequence[PartInfo]]],
        copy_prefix: Optional[tuple[str, int]],
        initial: bytes,
    ) -> None:
        """What the object starts with, before the stream (see __init__)."""
        if resume is not None:
            self.upload_id, parts = resume
            self._parts = sorted(parts, key=lambda p: p.number)
            self._next_number = len(self._parts) + 1
            self.base = sum(p.size for p in self._parts)
            if self._registry is not None:
                self._registry.add(self.upload_id)
                self._registered = self.upload_id
        if copy_prefix is not None:
            source, length = copy_prefix
            for first, last in copy_ranges(length):
                self._pending.append(
                    (self._next_number, CopyRange(source, first, last), Held())
                )
                self._next_number += 1
            self.base += length
        self._current_part = part_size_for(
            self._next_number, self.settings.part_size, self.size_hint
        )
        if initial:
            self.base += len(initial)
            self._fill.add(initial)

    def watch_hunger(self, hook: Optional[Callable[[bool], None]]) -> None:
        """
        Call C{hook(True)} when the writer comes to hold a granted claim of
        the upload buffer budget for the part it fills, C{hook(False)} when
        it no longer does (L{PartBuffer.on_hunger}).
        """
        self._fill.on_hunger = hook

    @property
    def size(self) -> int:
        """The size of the object so far: what it started with plus the stream."""
        return self.base + self.received

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """@raise TypeError: C{producer} is not a push producer."""
        self._producer = IPushProducer(producer)
        if self._paused:
            self._producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if self.state is not UploadState.OPEN:
            return
        self.received += len(data)
        limit = self.settings.max_file_size
        if limit is not None and self.size > limit:
            self._fail(Failure(UploadTooLarge(f"{self.key}: over {limit} bytes")))
            return
        if self._budget is not None and not self._budget.grow(self.size):
            self._fail(Failure(QuotaReached(f"{self.key}: over the quota")))
            return
        self._fill.add(data)
        self._advance()

    # control

    def finish(self) -> Deferred[ObjectInfo]:
        """
        The stream ended cleanly: store what was received.

        @return: A Deferred (a new one for each call) firing with the
            L{ObjectInfo} once the store has confirmed the object, or failing
            with the upload's first error, or with L{TransferStopped} if it
            was aborted, once nothing of it is left in the store.
        """
        if self.state is UploadState.OPEN:
            self.state = UploadState.FINISHING
            if (
                self._next_number == 1
                and self._creating is None
                and self.upload_id is None
            ):
                chunks, self._final_held = self._fill.take(self._fill.size)
                self._fill.clear()
                self._final_call(
                    self._assemble(chunks).addCallback(
                        lambda data: self.store.put(self.key, data, self.metadata)
                    )
                )
            else:
                # What is buffered goes now, claimed or not: it is in
                # memory already, and storing it is what frees it.
                while self._fill.size and self.state is UploadState.FINISHING:
                    self._cut(min(self._fill.size, self._current_part))
                self._fill.clear()
                self._maybe_complete()

        def clean_first(failure: Failure) -> Deferred[ObjectInfo]:
            # Report a failure only once the store is clean (no parts in
            # flight, the multipart upload aborted), so a client that
            # retries at once never races the cleanup of its last attempt.
            return self._cleanup().addCallback(lambda _: failure)

        return self._wait().addErrback(clean_first)

    def abort(self, reason: Optional[Failure] = None) -> Deferred[None]:
        """
        Discard the upload: nothing becomes visible, the multipart upload is
        aborted once its parts in flight settle.  If the final call is
        already in flight, its result stands (see the state table).

        @return: A Deferred firing with None when the store is settled;
            store errors during cleanup are logged, not raised.
        """
        if self.state is UploadState.OPEN or (
            self.state is UploadState.FINISHING and self._final is None
        ):
            self.state = UploadState.ABORTED
            self._discard()
            self._settle(reason or Failure(TransferStopped("upload aborted")))
        elif self.state is UploadState.FINISHING:
            self._abort_requested = True
        return self._cleanup()

    def suspend(self) -> Deferred[int]:
        """
        The client went away in the middle of the stream (not an ABOR):
        keep the parts already stored, invisible, so that the client can
        resume after them; drop what was not yet stored.  If nothing was
        stored the multipart upload is aborted.  Like L{abort}, a final call
        already in flight is left to settle.

        @return: A Deferred firing, once nothing is in flight, with the
            number of bytes kept (whole parts 1..k), 0 when nothing was.
        """
        if self.state is UploadState.OPEN or (
            self.state is UploadState.FINISHING and self._final is None
        ):
            self.state = UploadState.SUSPENDED
            self._discard()
            self._settle(Failure(TransferStopped("upload interrupted")))
        elif self.state is UploadState.FINISHING:
            self._abort_requested = True
        return self._cleanup().addCallback(lambda _: self.kept)

    @property
    def failure(self) -> Optional[Failure]:
        """Why the upload failed, once it has; else None."""
        return self._outcome if isinstance(self._outcome, Failure) else None

    @property
    def kept(self) -> int:
        """Bytes stored in parts 1..k with no gap: what a resume continues."""
        if self.state is not UploadState.SUSPENDED or self.upload_id is None:
            return 0
        return sum(p.size for p in contiguous_parts(self._parts))

    # the outcome, for any number of callers

    def _wait(self) -> Deferred[ObjectInfo]:
        outcome = self._outcome
        if isinstance(outcome, Failure):
            return fail(outcome)
        if outcome is not None:
            return succeed(outcome)
        d: Deferred[ObjectInfo] = Deferred()
        self._waiters.append(d)
        return d

    def _settle(self, outcome: ObjectInfo | Failure) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        if self._budget is not None:
            if not isinstance(outcome, Failure):
                self._budget.commit(outcome.size)
            elif self.state is not UploadState.SUSPENDED:
                self._budget.release()
            # Suspended: the claim becomes the kept parts' once they are
            # known, when nothing is in flight any more (_mark_clean).
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    # parts

    def _advance(self) -> None:
        """
        Cut every whole part the claim allows, claim the budget for the
        next one (once the stream has begun and while the parts of this
        upload leave room), then pause or resume the producer.
        """
        fill = self._fill
        while self.state is UploadState.OPEN:
            if fill.ready and fill.size >= self._current_part:
                self._cut(self._current_part)
            elif (
                not fill.claiming
                and self._started
                and self._in_flight + len(self._pending) < self._max_in_flight()
            ):
                if not fill.request(self._current_part):
                    break
            else:
                break
        self._update_flow()

    @property
    def _started(self) -> bool:
        # Whether the upload claims budget yet: not for a small file.
        return max(self.received, self._fill.size) > UNCLAIMED

    def _cut(self, size: int) -> None:
        """Queue the next C{size} buffered bytes as a part."""
        chunks, held = self._fill.take(size)
        if self._next_number > MAX_PARTS:
            held.free()
            self._fail(Failure(UploadTooLarge(f"{self.key}: over {MAX_PARTS} parts")))
            return
        self._pending.append((self._next_number, chunks, held))
        self._next_number += 1
        self._current_part = part_size_for(
            self._next_number, self.settings.part_size, self.size_hint
        )
        self._pump()

    def _max_in_flight(self) -> int:
        # Keep the bytes in flight near parts_in_flight x the first part size
        # as parts grow, so memory does not grow with the upload.
        base = part_size_for(1, self.settings.part_size, self.size_hint)
        budget = self.settings.parts_in_flight * base
        fits = -(-budget // self._current_part)  # rounded up
        return max(1, min(self.settings.parts_in_flight, fits))

    def _pump(self) -> None:
        if self.state not in (UploadState.OPEN, UploadState.FINISHING):
            return
        if self.upload_id is None:
            if self._creating is None and self._pending:
                self._creating = self.store.create_multipart(self.key, self.metadata)
                self._creating.addCallbacks(self._created, self._create_failed)
            return
        while self._pending and self._in_flight < self._max_in_flight():
            number, payload, held = self._pending.popleft()
            self._in_flight += 1
            if isinstance(payload, CopyRange):
                d = self.store.upload_part_copy(
                    self.key,
                    self.upload_id,
                    number,
                    payload.source,
                    payload.first,
                    payload.last,
                )
            else:
                d = self._assemble(payload).addCallback(self._send_part, number)
            d.addCallbacks(
                self._part_done,
                self._part_failed,
                callbackArgs=(held,),
                errbackArgs=(held,),
            )

    def _send_part(self, data: Chunk, number: int) -> Deferred[PartInfo]:
        if self.state not in (UploadState.OPEN, UploadState.FINISHING):
            # Ended while the part was put together: it is not sent.
            raise TransferStopped("upload ended")
        assert self.upload_id is not None
        return self.store.upload_part(self.key, self.upload_id, number, data)

    def _created(self, upload_id: str) -> None:
        self._create_settled = True
        self.upload_id = upload_id
        if self._registry is not None:
            self._registry.add(upload_id)
            self._registered = upload_id
        if self.state in (UploadState.OPEN, UploadState.FINISHING):
            self._pump()
            self._advance()
        else:
            self._try_cleanup()

    def _create_failed(self, failure: Failure) -> None:
        self._create_settled = True
        if self.state in (UploadState.OPEN, UploadState.FINISHING):
            self._fail(failure)
        else:
            self._try_cleanup()

    def _part_done(self, info: PartInfo, held: Held) -> None:
        held.free()  # the part's bytes are gone, stored
        self._in_flight -= 1
        self.parts_stored += 1
        self.retries += info.retries
        if self.state is UploadState.SUSPENDED:
            self._parts.append(info)  # stored: a resume can keep it
        if self.state not in (UploadState.OPEN, UploadState.FINISHING):
            self._try_cleanup()
            return
        self._parts.append(info)
        self._pump()
        self._advance()
        self._maybe_complete()

    def _part_failed(self, failure: Failure, held: Held) -> None:
        held.free()
        self._in_flight -= 1
        if self.state in (UploadState.OPEN, UploadState.FINISHING):
            self._fail(failure)
        else:
            self._try_cleanup()

    def _maybe_complete(self) -> None:
        if (
            self.state is UploadState.FINISHING
            and self.upload_id is not None
            and self._final is None
            and not self._pending
            and self._in_flight == 0
        ):
            parts = sorted(self._parts, key=lambda p: p.number)
            self._final_call(
                self.store.complete_multipart(self.key, self.upload_id, parts)
            )

    def _final_call(self, d: Deferred[ObjectInfo]) -> None:
        self._final = d
        d.addBoth(self._final_done)

    def _final_done(self, result: ObjectInfo | Failure) -> None:
        self._final = None
        self._final_held.free()
        if isinstance(result, Failure):
            self._fail(result)
        else:
            self.upload_id = None  # completed: nothing left to abort
            self.state = UploadState.DONE
            self._release()
            if self._abort_requested:
                log.info(
                    "{key}: the client left during the final store call; the "
                    "object is whole (clean end of stream) and stays",
                    key=self.key,
                )
            self._settle(result)
        self._try_cleanup()

    def _update_flow(self) -> None:
        busy = self._in_flight + len(self._pending) >= self._max_in_flight()
        # Waiting for its turn in the budget (L{PartBuffer.request}).
        waiting = self.state is UploadState.OPEN and self._started
        should_pause = busy or (waiting and not self._fill.ready)
        if should_pause and not self._paused:
            self._paused = True
            if self._producer is not None:
                self._producer.pauseProducing()
        elif not should_pause and self._paused:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()

    # failure and cleanup

    def _discard(self) -> None:
        self._fill.clear()
        for _number, _payload, held in self._pending:
            held.free()
        self._pending.clear()

    def _fail(self, failure: Failure) -> None:
        if self.state not in (UploadState.OPEN, UploadState.FINISHING):
            return
        self.state = UploadState.FAILED
        self._discard()
        log.warn(
            "upload of {key} failed after {received} bytes: {error}",
            key=self.key,
            received=self.received,
            error=failure.getErrorMessage(),
            request_id=getattr(failure.value, "request_id", None),
        )
        self._settle(failure)
        # Stop the client sending more; the protocol then sees the end of the
        # stream and asks finish() for the result, which is this failure.
        if self._producer is not None:
            self._producer.stopProducing()
        self._cleanup()

    def _cleanup(self) -> Deferred[None]:
        self._cleanup_requested = True
        if self._clean:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._clean_waiters.append(d)
        self._try_cleanup()
        return d

    def _try_cleanup(self) -> None:
        """
        Abort the multipart upload once nothing is in flight: a part that is
        still uploading when the abort lands could otherwise survive it.
        """
        if not self._cleanup_requested or self._clean or self._aborting:
            return
        if self._in_flight or self._final is not None:
            return  # called again when they settle
        if self._creating is not None and not self._create_settled:
            return
        doomed = self.state in (UploadState.FAILED, UploadState.ABORTED) or (
            self.state is UploadState.SUSPENDED and not contiguous_parts(self._parts)
        )
        if doomed and self.upload_id is not None:
            self._aborting = True
            upload_id = self.upload_id
            d = self.store.abort_multipart(self.key, upload_id)
            d.addErrback(
                lambda f: log_cleanup_failure(
                    log,
                    f,
                    "aborting multipart upload {upload_id} of {key}",
                    upload_id=upload_id,
                    key=self.key,
                )
            )

            def aborted(_: object) -> None:
                self.upload_id = None
                self._aborting = False
                self._mark_clean()

            d.addBoth(aborted)
            return
        self._mark_clean()

    def _keep(self) -> None:
        """
        Suspended and settled: the parts kept for a resume are known to the
        registry (so a later upload of the name can supersede them) and
        claimed in the quota, as stored bytes are; nothing kept, nothing
        claimed.
        """
        kept, upload_id = self.kept, self.upload_id
        if kept and upload_id is not None and self._registry is not None:
            self._registry.keep(self.store, self.key, upload_id)
        if self._budget is not None:
            if kept and upload_id is not None:
                self._budget.keep(upload_id, kept)
            else:
                self._budget.release()

    def _release(self) -> None:
        """This session no longer writes the upload: others may resume it."""
        if self._registry is not None and self._registered is not None:
            self._registry.discard(self._registered)
            self._registered = None

    def _mark_clean(self) -> None:
        self._clean = True
        self._release()
        if self.state is UploadState.SUSPENDED:
            self._keep()
        waiters, self._clean_waiters = self._clean_waiters, []
        for d in waiters:
            d.callback(None)
