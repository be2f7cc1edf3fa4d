"""
An upload of one file: what L{ObjectFileSystem.open_upload} hands a
frontend, with the user's quota, size limit, upload rate and error
translation already inside.

As a stream (FTP's STOR) it is an L{IConsumer}: the data connection
registers as its producer and writes into it; it is paused while the
store's parts in flight are full and while the user is over their rate,
each a separate reason (L{PauseGate}), and stopped when the upload fails on
the store's side, so the client stops sending.  As a file written at
offsets (SFTP's WRITE) it takes L{Upload.write_at}; the registered producer
(the client's input) is then paused when too many replies are held back.
Either way nothing is visible until L{Upload.commit}.

An upload the file system handed out is an upload in the session's live
transfers (L{Upload.metered}) that ends exactly once: committed (after the
store confirmed it) or failed, at L{Upload.commit}; interrupted at
L{Upload.interrupt} (with C{kept} when its parts were kept for a resume)
or L{Upload.abort}, unless a commit is under way, whose outcome then
stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import (
    MIN_PART_SIZE,
    Entry,
    IntegrityError,
    IObjectStore,
    IUpload,
    NoSuchKey,
    ObjectInfo,
    StoreError,
)
from cosgw.policy.quota import QuotaFull, Reservation
from cosgw.policy.throttle import PauseGate, ThrottledReceiver
from cosgw.transfer import (
    PositionalWriter,
    RandomAccessSettings,
    Spool,
    TransferStopped,
    UploadState,
    UploadWriter,
)
from cosgw.vfs.errors import InvalidOffset, translate
from cosgw.vfs.metering import COMMIT, Meter, StoreHold
from cosgw.vfs.names import display
from cosgw.vfs.rates import ReplyHold
from cosgw.vfs.resume import Resumable, supersede

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()

#: The reason a file written at offsets pauses its client's input when too
#: many replies wait for the store (see L{PauseGate}).
HELD = "held"


@implementer(IUpload)
class Upload:
    """
    One upload in progress; see the module docstring.  Writes go in either
    as a stream (L{write}) or at offsets (L{write_at}), as chosen when it
    was opened.
    """

    def __init__(
        self,
        fs: ObjectFileSystem,
        segments: Sequence[str],
        writer: UploadWriter,
        random_access: Optional[RandomAccessSettings] = None,
        append_writes: bool = False,
        replaces: bool = False,
    ) -> None:
        """
        @param random_access: the buffers of writes at offsets; None for a
            stream.
        @param append_writes: every write at an offset goes to the end (the
            SFTP APPEND flag, as O_APPEND).
        @param replaces: a file was visible under the name when the upload
            began: if it is interrupted, nothing is kept (L{interrupt}).
        """
        self._fs = fs
        self.segments = list(segments)
        self.path = display(segments)
        self._writer = writer
        self._replaces = replaces
        self._gate: Optional[PauseGate] = None
        self._receiver: Optional[ThrottledReceiver] = None
        self._replies = ReplyHold(fs.rates.upload, None)
        self._positional: Optional[PositionalWriter] = None
        self._meter = Meter(None, "upload", self.path)
        self._progress = self._meter.progress
        self._committing = False
        if random_access is not None:
            spool = Spool(
                fs.runner,
                random_access.spool_dir,
                random_access.spool_limit,
                random_access.spool_budget,
            )
            self._positional = PositionalWriter(
                writer,
                window=random_access.reorder_window,
                spool=spool,
                on_pressure=self._pressure,
                append=append_writes,
            )

    def metered(self, meter: Meter) -> None:
        """Record this upload as the transfer C{meter}; see the module."""
        self._meter = meter
        self._progress = meter.progress
        if self._positional is not None and meter.recording:
            # The positional writer is what the upload writer holds back.
            self._writer.registerProducer(StoreHold(self._positional, meter), True)

    @property
    def meter(self) -> Meter:
        """This upload's transfer record."""
        return self._meter

    @property
    def received(self) -> int:
        """Bytes received from the client so far."""
        return self._writer.received

    @property
    def base(self) -> int:
        """The offset the client's bytes start at (a resume, an append)."""
        return self._writer.base

    @property
    def failed(self) -> bool:
        """Whether the upload failed on the store's side (commit says why)."""
        return self._writer.state is UploadState.FAILED

    @property
    def end(self) -> int:
        """The size of the file as written so far (its furthest byte)."""
        if self._positional is not None:
            return self._positional.end
        return self._writer.size

    @property
    def uploaded(self) -> int:
        """Bytes already on their way to the store, which cannot change."""
        if self._positional is not None:
            return self._positional.next
        return self._writer.size

    # -- IConsumer: the stream ------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register the client's connection (a push producer).  For a stream
        it is paused for the store and the rate and stopped if the upload
        fails; for writes at offsets it is paused while replies are held.
        """
        gate = PauseGate(IPushProducer(producer))
        self._gate = gate
        self._replies = ReplyHold(self._fs.rates.upload, gate)
        if self._positional is None:
            held: IPushProducer = gate
            if self._meter.recording:
                held = StoreHold(gate, self._meter)
            self._writer.registerProducer(held, True)
            self._receiver = self._fs.rates.receiving(gate)
        else:
            # An SFTP handle's input: told while the upload holds its turn
            # in the upload buffer budget, so its connection keeps being
            # read whatever other files on it wait for (PartBuffer.on_hunger).
            self._writer.watch_hunger(getattr(producer, "hunger", None))

    def unregisterProducer(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None
        if self._positional is None:
            self._writer.unregisterProducer()
        self._gate = None

    def write(self, data: bytes) -> None:
        """The next bytes of a stream."""
        if self._positional is not None:
            raise RuntimeError(f"{self.path} takes writes at offsets")
        self._writer.write(data)
        self._progress(len(data))
        if self._receiver is not None:
            self._receiver.received(len(data))

    # -- writes at offsets ------------------------------------------------------

    def write_at(self, offset: int, data: bytes) -> Optional[Deferred[None]]:
        """
        Take C{data} at C{offset} of the file (see L{PositionalWriter}).

        @return: None when the write may be acknowledged at once; else a
            Deferred firing when it may (the store caught up and the user's
            rate allows), or failing with the file's error.
        @raise WriteRefused: the bytes are behind the upload, or need more
            temporary space than allowed; the file has failed.
        @raise FSError: the upload already failed (its error, translated).
        """
        if self._positional is None:
            raise RuntimeError(f"{self.path} takes a stream")
        try:
            ack = self._positional.write(offset, data)
        except Exception:
            translate(Failure(), self.path).raiseException()
        self._progress(len(data))
        held = self._replies.hold(len(data))
        if ack is None:
            return held
        ack.addErrback(translate, self.path)
        if held is not None:
            ack.addCallback(lambda _: held)
        return ack

    def _pressure(self, on: bool) -> None:
        if self._gate is not None:
            if on:
                self._gate.pause(HELD)
            else:
                self._gate.resume(HELD)

    # -- the end ------------------------------------------------------------------

    async def _commit(self, size: Optional[int]) -> ObjectInfo:
        if self._positional is not None:
            try:
                await self._positional.finish(size)
            except BaseException:
                await self._writer.abort()
                raise
        info = await self._writer.finish()
        self._fs.directories.saw(self.segments[:-1])
        # The name is visible now: an upload of it kept meanwhile (a
        # concurrent one, interrupted) can no longer be resumed.
        await supersede(self._fs, self._writer.key)
        return info

    def commit(self, size: Optional[int] = None) -> Deferred[ObjectInfo]:
        """
        The client's bytes are all in (a clean end of the stream, SFTP's
        CLOSE): store the file.

        @param size: the file's final size when the client set one (SFTP's
            setstat), cutting it or extending it with zeros.
        @return: Deferred firing with the stored object's L{ObjectInfo} once
            the store confirmed it; failing with L{StoreFailure},
            L{IntegrityFailure}, L{FileTooLarge}, L{QuotaExceeded} or
            L{WriteRefused} (nothing is then left in the store).
        """
        return self._committed(ensureDeferred(self._commit(size)))

    def _committed(self, d: Deferred[ObjectInfo]) -> Deferred[ObjectInfo]:
        """C{d}, a commit: its outcome is the transfer's end."""
        self._committing = True
        self._meter.wait_start(COMMIT)
        d.addErrback(translate, self.path)

        def ended(result: ObjectInfo | Failure) -> ObjectInfo | Failure:
            meter = self._meter
            meter.wait_end(COMMIT)
            meter.counted(parts=self._writer.parts_stored, retries=self._writer.retries)
            if isinstance(result, Failure):
                meter.finish(result.value)
            else:
                meter.request_id(result.request_id)
                meter.counted(retries=result.retries)
                meter.finish(None)
            return result

        return d.addBoth(ended)

    async def _commit_spool(self, spool: Spool, size: int) -> ObjectInfo:
        positional = PositionalWriter(self._writer, window=0, spool=spool)
        positional.adopt_spool(size)
        try:
            await positional.finish(size)
        except BaseException:
            await self._writer.abort()
            raise
        info = await self._writer.finish()
        self._fs.directories.saw(self.segments[:-1])
        return info

    def commit_spool(self, spool: Spool, size: int) -> Deferred[ObjectInfo]:
        """
        Store the first C{size} bytes of C{spool} as the file (a file
        changed in place); as L{commit}.  Only for a stream nothing was
        written to.
        """
        return self._committed(ensureDeferred(self._commit_spool(spool, size)))

    def abort(self, reason: Optional[str] = None) -> Deferred[None]:
        """
        Discard the upload (FTP's ABOR, a lost SFTP session): nothing is
        stored and nothing is kept for a resume.

        @param reason: why, for the log; None when the caller logs.
        @return: Deferred firing with None once the store is settled.
        """
        if self._positional is not None:
            self._positional.fail(Failure(TransferStopped(reason or "upload aborted")))
        if reason is not None:
            log.info(
                "{user}: upload of {path} aborted: {reason} after {received} bytes",
                user=self._fs.user,
                path=self.path,
                reason=reason,
                received=self.received,
            )
        if not self._committing:
            self._ended(TransferStopped(reason or "upload aborted"), kept=False)
        return self._writer.abort()

    def _ended(self, error: BaseException, kept: bool) -> None:
        """Interrupted: the transfer's end, with what it stored."""
        if self._meter.finished:
            return
        self._meter.counted(
            parts=self._writer.parts_stored, retries=self._writer.retries
        )
        self._meter.finish(error, interrupted=True, kept=kept)

    def interrupt(self, reason: str = "the client went away") -> Deferred[int]:
        """
        The client went away in the middle of the upload (or, as C{reason}
        tells the audit event, the gateway stopped it): keep what is
        stored for a resume when the settings allow and the name has no
        visible object, else discard it.  An interrupted overwrite never
        keeps anything: the old file stays as it was, and SIZE, APPE and
        REST go on seeing it (L{cosgw.vfs.resume}).  Nothing appears under
        the file's name either way.

        @return: Deferred firing with the bytes kept for a resume.
        """
        d = ensureDeferred(self._interrupt())

        def ended(result: int | Failure) -> int | Failure:
            if not self._committing:
                kept = isinstance(result, int) and result > 0
                self._ended(TransferStopped(reason), kept=kept)
            return result

        return d.addBoth(ended)

    async def _interrupt(self) -> int:
        fs, writer = self._fs, self._writer
        if not fs.settings.resume_uploads:
            await writer.abort()
            return 0
        why = "it replaced a file, which stays" if self._replaces else None
        if why is None and await self._name_taken():
            why = "a file of that name was stored meanwhile"
        if why is not None:
            await writer.abort()
            log.info(
                "{user}: upload of {path} interrupted after {received} bytes; "
                "nothing kept: {why}",
                user=fs.user,
                path=self.path,
                received=writer.received,
                why=why,
            )
            return 0
        kept = await writer.suspend()
        log.info(
            "{user}: upload of {path} interrupted after {received} bytes; "
            "{kept} bytes kept for a resume",
            user=fs.user,
            path=self.path,
            received=writer.received,
            kept=kept,
        )
        if kept and writer.upload_id is not None:
            await supersede(fs, writer.key, keep=writer.upload_id)
        return kept

    async def _name_taken(self) -> bool:
        """
        Whether an object appeared under the name of this new file since the
        upload began (another session's upload of it finished first).  When
        the store cannot tell, the parts are kept: a kept upload replaces
        nothing until a client resumes it.
        """
        try:
            await self._fs.store.head(self._writer.key)
        except NoSuchKey:
            return False
        except StoreError as e:
            log.warn(
                "{user}: cannot tell whether {path} exists ({error}); "
                "keeping the interrupted upload",
                user=self._fs.user,
                path=self.path,
                error=str(e),
            )
            return False
        return True


async def _read_prefix(store: IObjectStore, key: str, length: int) -> bytes:
    source = await store.open(key, 0)
    chunks: list[bytes] = []
    got = 0
    try:
        while got < length:
            chunk = await source.read(min(length - got, MIN_PART_SIZE))
            if not chunk:
                raise IntegrityError(f"{key}: ended before {length} bytes")
            chunks.append(chunk)
            got += len(chunk)
    finally:
        source.close()
    return b"".join(chunks)[:length]


async def begin_upload(
    fs: ObjectFileSystem,
    segments: Sequence[str],
    existing: Optional[Entry],
    resumable: Optional[Resumable],
    offset: int = 0,
    append: bool = False,
    size_hint: Optional[int] = None,
    random_access: Optional[RandomAccessSettings] = None,
    append_writes: bool = False,
) -> Upload:
    """
    Start the upload of a file whose checks are done (L{ObjectFileSystem}'s
    C{_writable}): C{existing} is the visible file, C{resumable} the
    interrupted upload of the name that could be continued (looked up only
    when C{offset} or C{append} asks for one, and only when no file is
    visible).  Other kept uploads of the name are discarded: they can no
    longer be resumed.

    @raise InvalidOffset: C{offset} is neither the end of C{resumable} nor
        inside the file.
    @raise QuotaFull: the user's quota has no room for the upload.
    """
    key = fs.key(segments)
    path = display(segments)
    if append:
        # APPE: after the visible file, else after the interrupted upload a
        # client was told of (SIZE).
        if existing is not None:
            offset = existing.size
        elif resumable is not None:
            offset = resumable.size
    writer_args: dict[str, Any] = {"size_hint": size_hint, "registry": fs.registry}
    resuming: Optional[str] = None
    prefix = 0  # bytes of the existing file read back before the stream
    if offset and existing is not None and existing.size >= offset:
        # The first `offset` bytes of the existing object stay: copied
        # server-side when COS allows a part that small, else read.
        if offset >= MIN_PART_SIZE:
            writer_args["copy_prefix"] = (key, offset)
        else:
            prefix = offset
    elif offset and resumable is not None and resumable.size == offset:
        log.info(
            "{user}: resuming the upload of {path} after {size} stored bytes",
            user=fs.user,
            path=path,
            size=offset,
        )
        resuming = resumable.upload.upload_id
        writer_args["resume"] = (resuming, resumable.parts)
    elif offset:
        have = (
            existing.size
            if existing is not None
            else (resumable.size if resumable is not None else 0)
        )
        raise InvalidOffset(
            path, f"cannot restart at {offset}: {have} bytes are stored"
        )
    await supersede(fs, key, keep=resuming)
    budget = await _reserve(fs, key, existing, resuming, offset)
    try:
        if prefix:
            writer_args["initial"] = await _read_prefix(fs.store, key, prefix)
    except BaseException:
        if budget is not None:
            budget.release()
        raise
    writer = UploadWriter(fs.store, key, fs.settings, budget=budget, **writer_args)
    if resuming is not None:
        fs.emit("resume", segments, offset=offset)
    return Upload(
        fs, segments, writer, random_access, append_writes, existing is not None
    )


async def _reserve(
    fs: ObjectFileSystem,
    key: str,
    existing: Optional[Entry],
    resuming: Optional[str],
    start: int,
) -> Optional[Reservation]:
    """
    The upload's quota reservation, already holding the C{start} bytes the
    object begins with (a resumed upload's kept parts move into it); None
    without a quota.

    @raise QuotaFull: no room for the upload, or for its first bytes (then
        a kept upload it would resume stays kept).
    """
    if fs.usage is None:
        return None
    await fs.usage.ensure()
    budget = fs.usage.reserve(
        key,
        replacing=existing.size if existing is not None else 0,
        new_file=existing is None,
        resuming=resuming,
    )
    if not budget.grow(start):
        budget.release()
        raise QuotaFull(f"disk quota reached ({fs.usage.max_bytes} bytes)")
    return budget
