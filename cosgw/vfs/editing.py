"""
Files opened with POSIX open's flags and then read and written at offsets
(SFTP's OPEN, READ, WRITE, FSETSTAT, CLOSE), over objects that are written
once, front to back.

How the flags meet an object store:

  - Opened without a write flag: reads through a L{Reader} (one ranged GET
    streamed ahead of the client, reopened when a read moves).
  - A new file, or opened with TRUNC or APPEND: writes stream into a
    multipart upload at once (L{Upload.write_at}: in-order writes go
    straight in, out-of-order ones wait in a bounded reorder map or spool).
  - An existing file opened for writing without TRUNC or APPEND is decided
    at the first write: a write at the file's end (or at the end of an
    interrupted upload) appends, with the server-side copy FTP's APPE uses;
    any other write changes the file in place, which needs a copy of it in
    a bounded spool (the "image"), uploaded whole at close.  Reads before
    the first write see the stored file.

The checks (the parent directory, the permissions, what is there) are made
once per file, each when it is first needed, never again by the upload.

Holes (bytes nobody wrote, below the end of the file) are stored as zeros,
which are uploaded and billed like any byte: a write, or a size change,
that would leave a hole larger than C{max_sparse_gap} beyond the end of
the file is refused.  The spools count against a budget the whole gateway
shares (see L{cosgw.transfer.spool}); a write that finds it full fails the
file, and the stored file stays as it was.

The session may go (L{RandomAccessFile.abort}) while the first write's
decision is in flight: whatever the decision then starts (an upload with
its quota reservation, a spooled copy) is discarded as soon as it exists.

What is recorded (the session's live transfers and their events, see
L{cosgw.vfs.metering}): a download for the reads from the stored file (a
file opened for reading, or reads before the first write of a file opened
for both), and an upload for the writes that store the file (from the
open for a new file, TRUNC or APPEND; from the first write otherwise).  A
file opened for both that is read and written is both; one that writes
nothing stores nothing and records no upload; reads of a file changed in
place come from its spool and are not a download.

The states of a L{RandomAccessFile}:

    ========== =============================== ==============================
    state      entered when                    writes go to
    ========== =============================== ==============================
    READ       opened without writing          nowhere: refused
    UNDECIDED  existing file (or a name with  (decided by the first write)
               a kept upload), no TRUNC/APPEND
    STREAM     new, TRUNC, APPEND, or first    the multipart upload, at
               write at the end                offsets (L{Upload.write_at})
    IMAGE      first write anywhere else       a spool holding the whole
                                               file, uploaded at close
    FAILED     a write could not be honoured   nowhere: close reports it
    CLOSED     close or abort                  nowhere
    ========== =============================== ==============================
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import Entry, IRandomAccessFile, ObjectInfo
from cosgw.policy.throttle import PauseGate
from cosgw.transfer import RandomAccessSettings, Spool, TransferStopped
from cosgw.transfer.settings import MiB
from cosgw.vfs.changes import check_time_fits
from cosgw.vfs.errors import (
    NotSupported,
    PermissionDenied,
    WriteRefused,
    translate,
)
from cosgw.vfs.metering import Meter
from cosgw.vfs.names import display
from cosgw.vfs.rates import ReplyHold
from cosgw.vfs.reader import Reader
from cosgw.vfs.resume import Resumable
from cosgw.vfs.upload import Upload, begin_upload

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()


@dataclass(frozen=True)
class OpenFlags:
    """POSIX open's flags, as SFTP's OPEN carries them."""

    read: bool = False
    write: bool = False
    append: bool = False
    create: bool = False
    truncate: bool = False
    exclusive: bool = False

    @property
    def writes(self) -> bool:
        return self.write or self.append or self.truncate


class FileMode(enum.Enum):
    """A L{RandomAccessFile}'s state; see the module docstring."""

    READ = "read"
    UNDECIDED = "undecided"
    STREAM = "stream"
    IMAGE = "image"
    FAILED = "failed"
    CLOSED = "closed"


@implementer(IRandomAccessFile)
class RandomAccessFile:
    """A file open for reads and writes at offsets; see L{FileMode}."""

    def __init__(
        self,
        fs: ObjectFileSystem,
        segments: Sequence[str],
        flags: OpenFlags,
        settings: RandomAccessSettings,
        producer: Optional[IPushProducer],
        existing: Optional[Entry] = None,
        reader: Optional[Reader] = None,
    ) -> None:
        self.fs = fs
        self.segments = list(segments)
        self.path = display(segments)
        self.flags = flags
        self.settings = settings
        self.existing = existing
        self._producer = producer
        self.mode = FileMode.READ if reader is not None else FileMode.UNDECIDED
        #: Reads of a file opened for reading, or before the first write.
        self._reader = reader
        #: Opened UNDECIDED on a name with no file but a kept upload.
        self.kept: Optional[Resumable] = None
        self.upload: Optional[Upload] = None
        self.image: Optional[Spool] = None
        self.image_size = 0
        self._image_replies: Optional[ReplyHold] = None
        self._failure: Optional[Failure] = None
        self._size: Optional[int] = None
        self._mtime: Optional[float] = None
        self._deciding: Optional[Deferred[None]] = None
        self._waiting: list[Deferred[None]] = []
        #: Why the file was aborted, once it was (a lost session).
        self._aborted: Optional[str] = None
        #: The upload's record, once writes store the file.
        self._upload_meter: Optional[Meter] = None

    @property
    def writable(self) -> bool:
        return self.mode is not FileMode.READ

    @property
    def entry(self) -> Entry:
        """
        What a stat of the open file shows: the size as written so far; the
        time a client set (0.0 when none: now).
        """
        if self._reader is not None and self.mode is FileMode.READ:
            return self._reader.entry
        if self.mode is FileMode.IMAGE:
            size = self.image_size
        elif self.upload is not None:
            size = self.upload.end
        elif self.kept is not None:
            size = self.kept.size
        else:
            size = self.existing.size if self.existing else 0
        return Entry(self.segments[-1], False, size, self._mtime or 0.0)

    # -- starting ---------------------------------------------------------

    async def start_stream(
        self,
        append: bool,
        offset: int = 0,
        resumable: Optional[Resumable] = None,
        checked: bool = False,
        since: float = 0.0,
    ) -> None:
        """
        Begin the upload: from 0, at C{offset} (keeping the first bytes of
        the existing file or of the interrupted upload C{resumable}), or as
        an append.

        @param checked: the parent directory is known to exist.
        @param since: when the open (or the first write) began: the
            upload's record starts then.
        """
        fs = self.fs
        if not checked and self.segments[:-1]:
            await fs._require_dir(self.segments[:-1])
        if append:
            resumable = await fs._resumable(fs.key(self.segments), self.existing)
        self.upload = await begin_upload(
            fs,
            self.segments,
            self.existing,
            resumable,
            offset,
            append,
            random_access=self.settings,
            append_writes=self.flags.append,
        )
        if self._aborted is not None:
            # abort() came while the upload was being begun, and found none.
            self.upload.abort(self._aborted)
            raise TransferStopped(self._aborted)
        if self._producer is not None:
            self.upload.registerProducer(self._producer, True)
        self._upload_meter = fs.meter(
            "upload", self.segments, None, self.upload.base, since
        )
        self.upload.metered(self._upload_meter)
        self.mode = FileMode.STREAM

    async def _start_image(self, since: float) -> None:
        """Copy the existing file into a spool, to change it in place."""
        assert self.existing is not None
        if self.existing.size > self.settings.spool_limit:
            raise WriteRefused(
                self.path,
                f"changing a file of {self.existing.size} bytes in place needs "
                "more temporary space than this server allows; upload it whole "
                "instead",
            )
        self.fs.require("download", self.segments)
        settings = self.settings
        spool = Spool(
            self.fs.runner,
            settings.spool_dir,
            settings.spool_limit,
            settings.spool_budget,
        )
        # The whole copy's disk is claimed first: of many files changed at
        # once, some fail at once rather than all midway.
        spool.reserve(self.existing.size)
        source = None
        offset = 0
        try:
            source = await self.fs._open_source(self.segments, 0)
            while chunk := await source.read(MiB):
                self._check_not_aborted()
                await spool.write(offset, chunk)
                offset += len(chunk)
            self._check_not_aborted()
        except BaseException:
            spool.close()
            raise
        finally:
            if source is not None:
                source.close()
        self.image, self.image_size = spool, offset
        gate = PauseGate(self._producer) if self._producer is not None else None
        self._image_replies = ReplyHold(self.fs.rates.upload, gate)
        self._upload_meter = self.fs.meter("upload", self.segments, since=since)
        self.mode = FileMode.IMAGE
        log.info(
            "{user}: {path} changed in place: {size} bytes spooled",
            user=self.fs.user,
            path=self.path,
            size=offset,
        )

    async def _decide_how(self, offset: int, since: float) -> None:
        fs = self.fs
        if self.segments[:-1]:
            await fs._require_dir(self.segments[:-1])
        resumable = await fs._resumable(fs.key(self.segments), self.existing)
        self._check_not_aborted()
        if self.existing is None:
            # Only a kept upload: resumed by a write at its end (reput's
            # way), else the file begins anew and the kept upload goes.
            if resumable is None or offset != resumable.size:
                offset, resumable = 0, None
            await self.start_stream(False, offset, resumable, True, since)
            return
        end = resumable.size if resumable is not None else self.existing.size
        if offset == end:
            await self.start_stream(False, offset, resumable, True, since)
        else:
            self._check_hole(offset, self.existing.size)
            await self._start_image(since)

    def _check_not_aborted(self) -> None:
        """@raise TransferStopped: the file was aborted (a lost session)."""
        if self._aborted is not None:
            raise TransferStopped(self._aborted)

    def _check_hole(self, offset: int, end: int, what: str = "a write at") -> None:
        """
        @raise WriteRefused: C{offset} leaves a hole beyond C{end}, the end
            of the file so far, larger than C{max_sparse_gap}.
        """
        gap = self.settings.max_sparse_gap
        if offset - end > gap:
            raise WriteRefused(
                self.path,
                f"{what} {offset} would leave a hole of {offset - end} bytes "
                f"after the end of the file ({end} bytes); holes over {gap} "
                "bytes (max_sparse_gap) are refused, as they would be stored, "
                "and billed, as zeros",
            )

    def _decide(self, offset: int) -> Deferred[None]:
        """
        First write to an existing file opened without TRUNC/APPEND: wait
        until it is decided how the file is written.  Writes that arrive
        meanwhile wait in order, and go on in that order.
        """
        if self._deciding is None:
            since = self.fs.now()

            def settled(result: object) -> None:
                self._close_reader()  # the file is being written now
                if isinstance(result, Failure):
                    failure = translate(result, self.path)
                    # The upload never began: its one event.
                    self.fs.failed_transfer(
                        "upload", self.segments, failure.value, since
                    )
                    self._fail(failure)
                waiting, self._waiting = self._waiting, []
                for w in waiting:
                    w.callback(None)

            self._deciding = ensureDeferred(self._decide_how(offset, since))
            self._deciding.addBoth(settled)
        d: Deferred[None] = Deferred()
        if self._deciding.called:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    # -- reads and writes ---------------------------------------------------

    def write(self, offset: int, data: bytes) -> Optional[Deferred[None]]:
        """
        Write C{data} at C{offset}, at the user's upload rate.

        @return: None when the write may be acknowledged at once, else a
            Deferred firing when it may; failing (or raising) with the
            L{FSError} that failed the file.
        """
        if self.mode is FileMode.READ:
            raise PermissionDenied(self.path, "the file was opened for reading only")
        if self.mode is FileMode.UNDECIDED:
            return self._decide(offset).addCallback(lambda _: self.write(offset, data))
        if self.mode is FileMode.FAILED:
            assert self._failure is not None
            return fail(self._failure)
        if self.mode is FileMode.CLOSED:
            raise WriteRefused(self.path, "the file is closed")
        if self.mode is FileMode.IMAGE:
            return self._write_image(offset, data)
        assert self.upload is not None
        try:
            if not self.flags.append:
                self._check_hole(offset, self.upload.end)
            return self.upload.write_at(offset, data)
        except Exception:
            failure = Failure()
            self._fail(failure)
            return fail(failure)

    def _write_image(self, offset: int, data: bytes) -> Optional[Deferred[None]]:
        assert self.image is not None and self._image_replies is not None
        if self.flags.append:
            offset = self.image_size
        try:
            self._check_hole(offset, self.image_size)
            d = self.image.write(offset, data)
        except Exception:
            failure = translate(Failure(), self.path)
            self._fail(failure)
            return fail(failure)
        self.image_size = max(self.image_size, offset + len(data))
        if self._upload_meter is not None:
            self._upload_meter.progress(len(data))
        d.addErrback(self._failed)
        held = self._image_replies.hold(len(data))
        if held is not None:
            d.addCallback(lambda _: held)
        return d

    def read(self, offset: int, length: int) -> Deferred[bytes]:
        """
        Up to C{length} bytes at C{offset}; C{b""} at the end.  A file is
        readable when opened for reading (before its first write) and while
        it is changed in place, not while it streams into the store.
        """
        if self.mode is FileMode.UNDECIDED and self.flags.read:
            return ensureDeferred(self._read_existing(offset, length))
        if self._reader is not None and self.mode is FileMode.READ:
            return self._reader.read(offset, length)
        if self.mode is FileMode.IMAGE and self.image is not None:
            length = max(0, min(length, self.image_size - offset))
            if not length:
                return succeed(b"")
            return self.image.read(offset, length)
        raise NotSupported(
            self.path, "reading back a file that is being uploaded is not supported"
        )

    async def _read_existing(self, offset: int, length: int) -> bytes:
        """
        Reads before the first write (a READ|WRITE open) go through one
        reader, as a read-only file's do, not a GET each.
        """
        reader = self._reader
        if reader is None:
            since = self.fs.now()
            reader = await self.fs._reader(self.segments, offset, self.settings, since)
            if self.mode is not FileMode.UNDECIDED or self._reader is not None:
                # Meanwhile the file was written, closed, or another read
                # made the reader: this one is not needed.
                reader.close()
                return await self.read(offset, length)
            self._reader = reader
        return await reader.read(offset, length)

    def _close_reader(self, error: Optional[BaseException] = None) -> None:
        if self._reader is not None:
            self._reader.close(error)
            self._reader = None

    # -- attributes ---------------------------------------------------------

    def set_attributes(
        self, size: Optional[int] = None, mtime: Optional[float] = None
    ) -> Deferred[None]:
        """
        FSETSTAT: lftp sends {size, atime, mtime} just before CLOSE; the size
        becomes the file's final size (cutting it or extending it with
        zeros), the time is stored once the file is.  On a file opened for
        reading only the time counts, and is stored at once.

        @raise WriteRefused: the size would extend the file by more than
            C{max_sparse_gap}; nothing changes (the file stays as written).
        """
        if self.mode is FileMode.READ:
            return self.fs.set_attributes(self.segments, mtime=mtime)
        if size is not None and self.mode in (FileMode.STREAM, FileMode.IMAGE):
            end = self.image_size if self.mode is FileMode.IMAGE else self.entry.size
            try:
                self._check_hole(size, end, what="a size change to")
            except WriteRefused as e:
                self._log_refusal(e)
                raise
        if mtime is not None:
            check_time_fits(self.fs, self.segments)  # now, not after CLOSE
            self._mtime = float(mtime)
        if size is not None:
            if self.mode is FileMode.IMAGE and self.image is not None:
                self.image_size = size
                return self.image.truncate(size)
            if self.mode is FileMode.UNDECIDED and self.existing is not None:
                if size != self.existing.size:
                    raise NotSupported(
                        self.path,
                        "a stored file's size cannot be changed without writing it",
                    )
                return succeed(None)
            if self.upload is not None and size < self.upload.uploaded:
                raise NotSupported(
                    self.path,
                    f"cannot cut the file to {size} bytes: "
                    f"{self.upload.uploaded} are already uploaded",
                )
            self._size = size
            if self._upload_meter is not None:
                self._upload_meter.update(size=size)
        return succeed(None)

    # -- the end ------------------------------------------------------------

    def close(self) -> Deferred[Optional[ObjectInfo]]:
        """
        Store the file (a file opened for reading is just closed).

        @return: Deferred firing once the store confirmed it, with the
            stored object's L{ObjectInfo} (None when nothing was written);
            failing with what failed the file.
        """
        if self.mode is FileMode.UNDECIDED and self._deciding is not None:
            # Writes wait for the decision: close after them.
            return self._decide(0).addCallback(lambda _: self.close())
        self._close_reader()
        mode, self.mode = self.mode, FileMode.CLOSED
        if mode is FileMode.FAILED:
            assert self._failure is not None
            return fail(self._failure)
        if mode in (FileMode.READ, FileMode.UNDECIDED, FileMode.CLOSED):
            d = self._apply_mtime() if mode is FileMode.UNDECIDED else succeed(None)
            return d.addCallback(lambda _: None)
        if mode is FileMode.IMAGE:
            stored: Deferred[Optional[ObjectInfo]] = ensureDeferred(
                self._upload_image()
            )
            return stored.addErrback(translate, self.path)
        return ensureDeferred(self._commit())

    async def _commit(self) -> ObjectInfo:
        assert self.upload is not None
        info = await self.upload.commit(self._size)
        await self._apply_mtime()
        return info

    async def _upload_image(self) -> ObjectInfo:
        assert self.image is not None and self.existing is not None
        image, size = self.image, self.image_size
        meter = self._upload_meter
        assert meter is not None
        try:
            try:
                upload = await begin_upload(self.fs, self.segments, self.existing, None)
            except Exception:
                failure = translate(Failure(), self.path)  # translated once
                meter.finish(failure.value)
                failure.raiseException()
            upload.metered(meter)
            self.upload = upload  # an abort now goes through it
            info = await upload.commit_spool(image, size)
        finally:
            image.close()
        await self._apply_mtime()
        return info

    def _apply_mtime(self) -> Deferred[None]:
        if self._mtime is None:
            return succeed(None)
        return self.fs.set_mtime(self.segments, self._mtime)

    def abort(self, reason: str) -> None:
        """
        The client went away (a lost session): nothing of this file may
        remain.  C{reason} is for the log.
        """
        self._aborted = reason
        stopped = TransferStopped(reason)
        self._close_reader(stopped)
        self.mode = FileMode.CLOSED
        if self.upload is not None:
            self.upload.abort(reason)  # its record too, unless it is committing
        elif self._upload_meter is not None:
            self._upload_meter.finish(stopped)
        if self.image is not None:
            self.image.close()

    # -- failures -----------------------------------------------------------

    def _failed(self, failure: Failure) -> Failure:
        failure = translate(failure, self.path)
        self._fail(failure)
        return failure

    def _fail(self, failure: Failure) -> None:
        """Nothing of this file will be stored; close reports C{failure}."""
        if self.mode is not FileMode.CLOSED and self._failure is None:
            if isinstance(failure.value, WriteRefused):
                self._log_refusal(failure.value)
            self._failure = failure
            self.mode = FileMode.FAILED
            if self._upload_meter is not None:
                self._upload_meter.finish(failure.value)
            if self.upload is not None:
                self.upload.abort()
            if self.image is not None:
                self.image.close()

    def _log_refusal(self, error: WriteRefused) -> None:
        log.warn(
            "{user}: {path}: write refused: {reason}",
            user=self.fs.user,
            path=self.path,
            reason=error.message,
        )
