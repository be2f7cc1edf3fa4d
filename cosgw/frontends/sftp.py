"""
SFTP (version 3, draft-ietf-secsh-filexfer-02) over a user's
L{ObjectFileSystem}: the same home confinement, permissions, transfer code
and upload rules as FTP, reached through Conch's L{FileTransferServer}.

How SFTP's random access meets an object store:

  - Reading: each handle reads through a L{RangedReader}: one ranged GET
    streamed ahead of the client, reopened when a read falls outside its
    window.
  - Writing: a handle opened to create or truncate a file streams into a
    multipart upload through a L{PositionalWriter} (in-order writes go
    straight in, out-of-order ones wait in a bounded reorder map or a
    bounded spool).  Opening an existing file without TRUNC decides at the
    first write: a write at the file's end (or at the end of an interrupted
    upload) appends through the server-side copy strategy FTP's APPE uses;
    any other write modifies the file in place, which needs a copy of it in
    a bounded spool, uploaded whole at close.
  - Close answers only once the store confirmed the object; a session that
    drops aborts its uploads (Conch would close them as if finished).

Errors become SFTP status codes in one place, L{status_for}; no traceback
reaches a client.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OK,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FXP_NAME,
    SFTPError,
)
from twisted.internet.defer import (
    Deferred,
    ensureDeferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.logger import (
    Logger,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw import vfs
from cosgw.frontends.ftp_facts import format_list_line, unix_mode
from cosgw.frontends.ssh import ConchLogger
from cosgw.interfaces import StoreError
from cosgw.positional import (
    PositionalWriter,
    RangedReader,
    RewriteRefused,
    Spool,
    SpoolFull,
)
from cosgw.transfer import TransferStopped, UploadWriter

log = Logger()

MiB = 1024 * 1024
#: Entries per READDIR reply (OpenSSH's server sends at most 100; Conch 250).
READDIR_BATCH = 100
#: The largest READ answered (OpenSSH asks 32 KiB..256 KiB).
MAX_READ = 256 * 1024

_S_IFDIR = 0o040000
_S_IFREG = 0o100000


@dataclass(frozen=True)
class SFTPSettings:
    """Per-gateway knobs of SFTP's random-access emulation."""

    read_window: int = 8 * MiB
    reorder_window: int = 16 * MiB
    spool_limit: int = 1024 * MiB
    spool_dir: Optional[str] = None


# -- errors -----------------------------------------------------------------


def status_for(failure: Failure, action: str = "request") -> tuple[int, str]:
    """
    The one place where errors become SFTP status codes and messages.
    Version 3 has few codes: what has none (not a directory, not empty,
    quota) is FX_FAILURE with a message saying exactly what.  Unexpected
    errors are logged with their traceback and shown as a plain failure.
    """
    e = failure.value
    if isinstance(e, SFTPError):
        return e.code, str(e.message)
    if isinstance(e, EOFError):
        return FX_EOF, "end of file"
    if isinstance(e, NotImplementedError):
        return FX_OP_UNSUPPORTED, str(e.args[0]) if e.args else "not supported"
    if isinstance(e, vfs.NotFound):
        return FX_NO_SUCH_FILE, f"{e.path}: no such file or directory"
    if isinstance(e, vfs.PermissionDenied):
        return FX_PERMISSION_DENIED, f"{e.path}: {e.message}"
    if isinstance(e, vfs.StoreFailure):
        rid = f" (request {e.request_id})" if e.request_id else ""
        return FX_FAILURE, f"{e.path}: {e.message}; try again later{rid}"
    if isinstance(e, vfs.FSError):
        return FX_FAILURE, f"{e.path}: {e.message}"
    if isinstance(e, (RewriteRefused, SpoolFull)):
        return FX_FAILURE, str(e)
    if isinstance(e, TransferStopped):
        return FX_FAILURE, "the transfer was stopped"
    if isinstance(e, StoreError):
        return FX_FAILURE, f"the store failed: {e}; try again later"
    log.failure("unexpected error in SFTP {action}", failure, action=action)
    return FX_FAILURE, "internal error; the gateway's log has the details"


# -- attributes ---------------------------------------------------------------


def _attrs(entry: vfs.Entry, permissions: frozenset[str]) -> dict[str, int]:
    mode = unix_mode(entry, permissions) | (_S_IFDIR if entry.is_dir else _S_IFREG)
    mtime = int(entry.mtime or time.time())
    return {
        "size": entry.size,
        "uid": 0,
        "gid": 0,
        "permissions": mode,
        "atime": mtime,
        "mtime": mtime,
    }


# -- the server -----------------------------------------------------------


@implementer(ISFTPServer)
class GatewaySFTPServer:
    """One session's SFTP requests, over the user's file system."""

    def __init__(
        self,
        fs: vfs.ObjectFileSystem,
        settings: Optional[SFTPSettings] = None,
    ) -> None:
        self.fs = fs
        self.settings = settings or SFTPSettings()
        #: Open file handles, so a lost session can abort their uploads.
        self.handles: set[Any] = set()
        #: Set by the protocol: pauses (True) or resumes reading the
        #: connection when a handle holds too many unacknowledged bytes.
        self.pause_input: Callable[[bool], None] = lambda on: None
        self._paused_by: set[int] = set()

    # -- helpers ------------------------------------------------------------

    def segments(self, path: bytes) -> list[str]:
        """A client's path (UTF-8 bytes; relative ones start at the home)."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise SFTPError(FX_FAILURE, "the path is not valid UTF-8") from None
        try:
            return vfs.resolve([], text)
        except vfs.InvalidName as e:
            raise SFTPError(FX_FAILURE, f"{e.path}: {e.message}") from None

    def pressure(self, handle: object, on: bool) -> None:
        """A handle asks to stop (or resume) reading the connection."""
        before = bool(self._paused_by)
        if on:
            self._paused_by.add(id(handle))
        else:
            self._paused_by.discard(id(handle))
        if bool(self._paused_by) != before:
            self.pause_input(bool(self._paused_by))

    def connection_lost(self) -> Deferred[None]:
        """The session is gone: abort every upload still open."""
        handles, self.handles = list(self.handles), set()
        for handle in handles:
            handle.abort()
        return succeed(None)

    # -- ISFTPServer ------------------------------------------------------

    def gotVersion(self, otherVersion: int, extData: dict) -> dict[bytes, bytes]:
        return {
            b"posix-rename@openssh.com": b"1",
            b"statvfs@openssh.com": b"2",
        }

    def openFile(self, filename: bytes, flags: int, attrs: dict) -> Deferred[Any]:
        segments = self.segments(filename)
        return ensureDeferred(self._open(segments, flags, attrs))

    async def _open(self, segments: list[str], flags: int, attrs: dict) -> Any:
        fs = self.fs
        writes = flags & (FXF_WRITE | FXF_APPEND | FXF_TRUNC)
        if not writes and not flags & FXF_CREAT:
            source = await fs.open_read(segments)
            return ReadHandle(self, segments, source)
        try:
            existing: Optional[vfs.Entry] = await fs.stat(segments)
        except vfs.NotFound:
            existing = None
        if not writes and existing is not None and not flags & FXF_EXCL:
            # O_CREAT alone on an existing file opens it, as POSIX does.
            source = await fs.open_read(segments)
            return ReadHandle(self, segments, source)
        fs.require("upload", segments)
        if existing is not None:
            if existing.is_dir:
                raise vfs.IsADirectory(vfs.display(segments))
            if flags & FXF_CREAT and flags & FXF_EXCL:
                raise vfs.AlreadyExists(vfs.display(segments))
            fs.require("overwrite", segments)
        elif not flags & FXF_CREAT:
            raise vfs.NotFound(vfs.display(segments))
        elif segments[:-1]:
            await fs.require_directory(segments[:-1])
        handle = WriteHandle(self, segments, flags, existing)
        if existing is None or flags & FXF_TRUNC:
            await handle.start_stream(0)
        elif flags & FXF_APPEND:
            await handle.start_stream(None)
        return handle

    def removeFile(self, filename: bytes) -> Deferred[None]:
        return self.fs.remove(self.segments(filename))

    def renameFile(self, oldpath: bytes, newpath: bytes) -> Deferred[None]:
        """
        SSH_FXP_RENAME: "It is an error if there already exists a file with
        the name specified by newpath" (draft-02 section 6.5).  OpenSSH's
        posix-rename extension overwrites; see L{extendedRequest}.
        """
        source, target = self.segments(oldpath), self.segments(newpath)

        async def rename() -> None:
            try:
                await self.fs.stat(target)
            except vfs.NotFound:
                pass
            else:
                if target != source:
                    raise vfs.AlreadyExists(vfs.display(target))
            await self.fs.rename(source, target)

        return ensureDeferred(rename())

    def makeDirectory(self, path: bytes, attrs: dict) -> Deferred[None]:
        return self.fs.mkdir(self.segments(path))

    def removeDirectory(self, path: bytes) -> Deferred[None]:
        return self.fs.rmdir(self.segments(path))

    def openDirectory(self, path: bytes) -> Deferred[Any]:
        segments = self.segments(path)
        listing = self.fs.listing(segments)

        async def open_directory() -> Directory:
            await self.fs.require_directory(segments)
            return Directory(self, listing)

        return ensureDeferred(open_directory())

    def getAttrs(self, path: bytes, followLinks: bool) -> Deferred[dict]:
        d = self.fs.stat(self.segments(path))
        return d.addCallback(_attrs, self.fs.permissions)

    def setAttrs(self, path: bytes, attrs: dict) -> Deferred[None]:
        return ensureDeferred(self._set_attrs(self.segments(path), attrs))

    async def _set_attrs(self, segments: list[str], attrs: dict) -> None:
        """
        Ownership and modes are accepted and ignored (an object has none;
        scp and WinSCP set them after every upload and an error makes them
        warn).  A time is kept as MFMT keeps it.  A size is honoured only
        when it is the current size or 0.
        """
        entry = await self.fs.stat(segments)
        if "size" in attrs and attrs["size"] != entry.size:
            if entry.is_dir or attrs["size"] != 0:
                raise SFTPError(
                    FX_OP_UNSUPPORTED,
                    f"{vfs.display(segments)}: a stored file's size can only be "
                    "changed to 0 (upload it again instead)",
                )
            writer = await self.fs.open_write(segments)
            await self.fs.commit(writer, segments)
        if "mtime" in attrs and not entry.is_dir:
            if int(attrs["mtime"]) != int(entry.mtime):
                await self.fs.set_mtime(segments, float(attrs["mtime"]))

    def readLink(self, path: bytes) -> Any:
        raise NotImplementedError("this server has no symbolic links")

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> Any:
        raise NotImplementedError("this server has no symbolic links")

    def realPath(self, path: bytes) -> bytes:
        return vfs.display(self.segments(path)).encode("utf-8")

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> Any:
        if extendedName == b"posix-rename@openssh.com":
            oldpath, rest = getNS(extendedData)
            newpath, _ = getNS(rest)
            d = self.fs.rename(self.segments(oldpath), self.segments(newpath))

            def done(_: object) -> None:
                # The extension answers with a STATUS, not an EXTENDED_REPLY:
                # Conch sends a STATUS for an SFTPError, so OK travels as one.
                raise SFTPError(FX_OK, "renamed")

            return d.addCallback(done)
        if extendedName == b"statvfs@openssh.com":
            path, _ = getNS(extendedData)
            d = self.fs.stat(self.segments(path))
            return d.addCallback(lambda _: self._statvfs())
        raise NotImplementedError(
            f"unsupported extension {extendedName.decode('ascii', 'replace')}"
        )

    def _statvfs(self) -> bytes:
        """
        statvfs@openssh.com: eleven uint64s (bsize, frsize, blocks, bfree,
        bavail, files, ffree, favail, fsid, flag, namemax).  A bucket has no
        capacity of its own; report 1 PiB free unless a quota says less.
        """
        block = 4096
        total = 1 << 50
        free = total
        quota = getattr(self.fs, "usage", None)
        if quota is not None and getattr(quota, "max_bytes", None):
            total = quota.max_bytes
            free = max(0, total - quota.bytes)
        blocks, bfree = total // block, free // block
        files = 1 << 32
        ffree = files
        flag = 0 if "upload" in self.fs.permissions else 1  # ST_RDONLY
        return struct.pack(
            "!11Q",
            block,
            block,
            blocks,
            bfree,
            bfree,
            files,
            ffree,
            ffree,
            0,
            flag,
            255,
        )


# -- directories ----------------------------------------------------------


class Directory:
    """An open directory: the listing's pages, sent in batches."""

    def __init__(self, server: GatewaySFTPServer, listing: vfs.Listing) -> None:
        self.server = server
        self.listing = listing
        self._entries: list[vfs.Entry] = []
        self._done = False
        self._now = time.time()

    def __iter__(self) -> Directory:
        # Conch calls iter() on an opened directory; READDIR goes through
        # next_batch (see FileTransfer.packet_READDIR) instead.
        return self

    def __next__(self) -> Any:
        raise StopIteration

    def next_batch(self) -> Deferred[list[tuple[bytes, bytes, dict]]]:
        """
        @return: Deferred firing with up to L{READDIR_BATCH} entries;
            failing with EOFError at the end.
        """
        return ensureDeferred(self._next_batch())

    async def _next_batch(self) -> list[tuple[bytes, bytes, dict]]:
        while not self._entries and not self._done:
            page = await self.listing.next_page()
            if page is None:
                self._done = True
            else:
                self._entries.extend(page)
        if not self._entries:
            raise EOFError()
        batch, self._entries = (
            self._entries[:READDIR_BATCH],
            self._entries[READDIR_BATCH:],
        )
        fs = self.server.fs
        return [
            (
                e.name.encode("utf-8"),
                format_list_line(e, fs.permissions, fs.user, self._now).encode("utf-8"),
                _attrs(e, fs.permissions),
            )
            for e in batch
        ]

    def close(self) -> None:
        self._entries = []
        self._done = True


# -- files ------------------------------------------------------------------


def _reader_for(
    server: GatewaySFTPServer, segments: list[str], source: Any
) -> RangedReader:
    """A ranged reader over C{source}, reopening through the file system."""
    fs = server.fs
    return RangedReader(
        source,
        lambda offset: fs.open_read(segments, offset),
        window=server.settings.read_window,
        chunk=min(fs.settings.read_chunk, MiB),
    )


@implementer(ISFTPFile)
class ReadHandle:
    """A file opened for reading."""

    def __init__(
        self, server: GatewaySFTPServer, segments: list[str], source: Any
    ) -> None:
        self.server = server
        self.segments = segments
        self.reader = _reader_for(server, segments, source)
        self.entry = vfs.Entry(
            segments[-1], False, source.info.size, vfs.client_mtime(source.info)
        )
        server.handles.add(self)

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:
        d = self.reader.read(offset, min(length, MAX_READ))
        limit = self.server.fs.download_limit
        if limit is not None:
            # The user's download rate: the data goes out when it allows.
            d.addCallback(lambda data: limit.hold(len(data), data))
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(StoreError) and not failure.check(vfs.FSError):
            return vfs.translate(failure, vfs.display(self.segments))
        return failure

    def writeChunk(self, offset: int, data: bytes) -> Any:
        raise SFTPError(FX_PERMISSION_DENIED, "the file was opened for reading only")

    def getAttrs(self) -> dict:
        return _attrs(self.entry, self.server.fs.permissions)

    def setAttrs(self, attrs: dict) -> Deferred[None]:
        return self.server.setAttrs(
            vfs.display(self.segments).encode("utf-8"),
            {k: v for k, v in attrs.items() if k != "size"},
        )

    def close(self) -> None:
        self.server.handles.discard(self)
        self.reader.close()

    def abort(self) -> None:
        self.close()


class WriteMode(enum.Enum):
    """
    A write handle's state.

    ========== =============================== ==============================
    state      entered when                    writes go to
    ========== =============================== ==============================
    UNDECIDED  existing file, no TRUNC/APPEND  (decided by the first write)
    STREAM     new, TRUNC, APPEND, or first    the multipart upload through
               write at the end                a PositionalWriter
    IMAGE      first write anywhere else       a spool holding the whole
                                               file, uploaded at close
    FAILED     a write could not be honoured   nowhere: close reports it
    CLOSED     close or abort                  nowhere
    ========== =============================== ==============================
    """

    UNDECIDED = "undecided"
    STREAM = "stream"
    IMAGE = "image"
    FAILED = "failed"
    CLOSED = "closed"


@implementer(ISFTPFile)
class WriteHandle:
    """A file opened for writing; see L{WriteMode}."""

    def __init__(
        self,
        server: GatewaySFTPServer,
        segments: list[str],
        flags: int,
        existing: Optional[vfs.Entry],
    ) -> None:
        self.server = server
        self.fs = server.fs
        self.segments = segments
        self.flags = flags
        self.existing = existing
        self.mode = WriteMode.UNDECIDED
        self.writer: Optional[UploadWriter] = None
        self.positional: Optional[PositionalWriter] = None
        self.image: Optional[Spool] = None
        self.image_size = 0
        self._failure: Optional[Failure] = None
        self._size: Optional[int] = None
        self._mtime: Optional[float] = None
        self._deciding: Optional[Deferred[None]] = None
        self._waiting: list[Deferred[None]] = []
        self._rate_holds = 0
        self._rate_key = object()
        self._reader: Optional[RangedReader] = None
        server.handles.add(self)

    @property
    def path(self) -> str:
        return vfs.display(self.segments)

    # -- starting ---------------------------------------------------------

    async def start_stream(self, offset: Optional[int]) -> None:
        """
        Begin the upload: from 0, at C{offset} (keeping the first bytes of
        the existing file or of an interrupted upload), or, with None, as an
        append.
        """
        fs = self.fs
        writer = await fs.open_write(
            self.segments,
            offset=offset or 0,
            append=offset is None,
            on_stop=self._store_stopped,
        )
        self.writer = writer
        self.positional = PositionalWriter(
            writer,
            window=self.server.settings.reorder_window,
            spool=self._spool(),
            on_pressure=lambda on: self.server.pressure(self, on),
            append=bool(self.flags & FXF_APPEND),
        )
        self.mode = WriteMode.STREAM

    def _spool(self) -> Spool:
        settings = self.server.settings
        return Spool(self.fs.runner, settings.spool_dir, settings.spool_limit)

    async def _start_image(self) -> None:
        """Copy the existing file into a spool, to change it in place."""
        assert self.existing is not None
        if self.existing.size > self.server.settings.spool_limit:
            raise SFTPError(
                FX_FAILURE,
                f"{self.path}: changing a file of {self.existing.size} bytes in "
                "place needs more temporary space than this server allows; "
                "upload it whole instead",
            )
        spool = self._spool()
        source = await self.fs.open_read(self.segments)
        offset = 0
        try:
            while chunk := await source.read(MiB):
                await spool.write(offset, chunk)
                offset += len(chunk)
        except BaseException:
            spool.close()
            raise
        finally:
            source.close()
        self.image, self.image_size = spool, offset
        self.mode = WriteMode.IMAGE
        log.info(
            "{user}: {path} changed in place: {size} bytes spooled",
            user=self.fs.user,
            path=self.path,
            size=offset,
        )

    def _decide(self, offset: int) -> Deferred[None]:
        """
        First write to an existing file opened without TRUNC/APPEND: wait
        until it is decided how the file is written.  Writes that arrive
        meanwhile wait in order, and go on in that order.
        """
        if self._deciding is None:

            async def decide() -> None:
                end = await self.fs.restart_size(self.segments)
                if offset == end:
                    await self.start_stream(offset)
                else:
                    await self._start_image()

            def settled(result: object) -> None:
                self._close_reader()  # the file is being written now
                if isinstance(result, Failure):
                    self._fail(result)
                waiting, self._waiting = self._waiting, []
                for w in waiting:
                    w.callback(None)

            self._deciding = ensureDeferred(decide())
            self._deciding.addBoth(settled)
        d: Deferred[None] = Deferred()
        if self._deciding.called:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    # -- ISFTPFile ----------------------------------------------------------

    def writeChunk(self, offset: int, data: bytes) -> Any:
        ack = self._write(offset, data)
        limit = self.fs.upload_limit
        if limit is None:
            return ack
        # The user's upload rate: the acknowledgement waits until the rate
        # allows, and so that a client that does not wait for
        # acknowledgements is held too, the connection stops being read
        # meanwhile.
        held = limit.hold(len(data))
        if not held.called:
            self._rate_holds += 1
            if self._rate_holds == 1:
                self.server.pressure(self._rate_key, True)
            held.addBoth(self._rate_released)
        if ack is None:
            return held
        return ack.addCallback(lambda _: held)

    def _rate_released(self, result: Any) -> Any:
        self._rate_holds -= 1
        if not self._rate_holds:
            self.server.pressure(self._rate_key, False)
        return result

    def _write(self, offset: int, data: bytes) -> Any:
        if self.mode is WriteMode.UNDECIDED:
            return self._decide(offset).addCallback(lambda _: self._write(offset, data))
        if self.mode is WriteMode.FAILED:
            assert self._failure is not None
            return fail(self._failure)
        if self.mode is WriteMode.CLOSED:
            raise SFTPError(FX_FAILURE, "the file is closed")
        if self.mode is WriteMode.IMAGE:
            assert self.image is not None
            if self.flags & FXF_APPEND:
                offset = self.image_size
            self.image_size = max(self.image_size, offset + len(data))
            try:
                d = self.image.write(offset, data)
            except SpoolFull as e:
                self._fail(Failure(e))
                return fail(e)
            return d.addErrback(self._failed)
        assert self.positional is not None
        try:
            return self.positional.write(offset, data)
        except StoreError as e:
            self._fail(Failure(e))
            return fail(e)

    def readChunk(self, offset: int, length: int) -> Any:
        if self.mode is WriteMode.UNDECIDED and self.flags & FXF_READ:
            return self._read_existing(offset, length)
        if self.mode is WriteMode.IMAGE and self.image is not None:
            length = max(0, min(length, self.image_size - offset, MAX_READ))
            if not length:
                raise EOFError()
            return self.image.read(offset, length)
        raise SFTPError(
            FX_OP_UNSUPPORTED,
            "reading back a file that is being uploaded is not supported",
        )

    def _read_existing(self, offset: int, length: int) -> Deferred[bytes]:
        """
        Reads before the first write (a READ|WRITE open) go through one
        ranged reader, as a read-only handle's do, not a GET each.
        """

        async def read() -> bytes:
            if self._reader is None:
                source = await self.fs.open_read(self.segments, offset)
                self._reader = _reader_for(self.server, self.segments, source)
            return await self._reader.read(offset, min(length, MAX_READ))

        return ensureDeferred(read())

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def getAttrs(self) -> dict:
        if self.mode is WriteMode.IMAGE:
            size = self.image_size
        elif self.positional is not None:
            size = self.positional.end
        else:
            size = self.existing.size if self.existing else 0
        entry = vfs.Entry(self.segments[-1], False, size, self._mtime or time.time())
        return _attrs(entry, self.fs.permissions)

    def setAttrs(self, attrs: dict) -> Any:
        """
        lftp sends FSETSTAT{size, atime, mtime} just before CLOSE; the size
        becomes the file's final size (cutting or extending it with zeros),
        the time is stored once the upload is committed.
        """
        if "mtime" in attrs:
            self._mtime = float(attrs["mtime"])
        if "size" in attrs:
            size = int(attrs["size"])
            if self.mode is WriteMode.IMAGE and self.image is not None:
                self.image_size = size
                return self.image.truncate(size)
            if self.mode is WriteMode.UNDECIDED and self.existing is not None:
                if size != self.existing.size:
                    raise SFTPError(
                        FX_OP_UNSUPPORTED,
                        f"{self.path}: a stored file's size cannot be changed "
                        "without writing it",
                    )
                return None
            if self.positional is not None and size < self.positional.next:
                raise SFTPError(
                    FX_OP_UNSUPPORTED,
                    f"{self.path}: cannot cut the file to {size} bytes: "
                    f"{self.positional.next} are already uploaded",
                )
            self._size = size
        return None

    def close(self) -> Deferred[None]:
        if self.mode is WriteMode.UNDECIDED and self._deciding is not None:
            # Writes wait for the decision: close after them.
            return self._decide(0).addCallback(lambda _: self.close())
        self.server.handles.discard(self)
        self._close_reader()
        mode, self.mode = self.mode, WriteMode.CLOSED
        if mode is WriteMode.FAILED:
            assert self._failure is not None
            return fail(self._failure)
        if mode is WriteMode.UNDECIDED:
            return self._apply_mtime()
        if mode is WriteMode.IMAGE:
            return ensureDeferred(self._upload_image())
        return ensureDeferred(self._commit())

    async def _commit(self) -> None:
        assert self.positional is not None and self.writer is not None
        try:
            await self.positional.finish(self._size)
        except BaseException:
            await self.writer.abort()
            raise
        info = await self.fs.commit(self.writer, self.segments)
        log.info(
            "{user}: stored {path} ({size} bytes) over SFTP",
            user=self.fs.user,
            path=self.path,
            size=info.size,
        )
        await self._apply_mtime()

    async def _upload_image(self) -> None:
        assert self.image is not None
        image, size = self.image, self.image_size
        try:
            writer = await self.fs.open_write(self.segments)
            positional = PositionalWriter(writer, window=0, spool=image)
            positional.adopt_spool(size)
            try:
                await positional.finish(size)
            except BaseException:
                await writer.abort()
                raise
            await self.fs.commit(writer, self.segments)
        finally:
            image.close()
        await self._apply_mtime()

    def _apply_mtime(self) -> Deferred[None]:
        if self._mtime is None:
            return succeed(None)
        return self.fs.set_mtime(self.segments, self._mtime)

    def abort(self) -> None:
        """The session went: nothing of this upload may remain."""
        self.server.handles.discard(self)
        self._close_reader()
        self.mode = WriteMode.CLOSED
        if self.positional is not None:
            self.positional.fail(Failure(TransferStopped("the session was lost")))
        if self.writer is not None:
            writer = self.writer
            writer.abort()
            log.info(
                "{user}: upload of {path} aborted: the SFTP session was lost "
                "after {received} bytes",
                user=self.fs.user,
                path=self.path,
                received=writer.received,
            )
        if self.image is not None:
            self.image.close()

    # -- failures -----------------------------------------------------------

    def _store_stopped(self) -> None:
        """The upload failed (store, quota, size): stop taking writes."""
        failure = None
        if self.writer is not None:
            failure = self.writer.failure
        if failure is None:
            failure = Failure(StoreError("the upload failed in the store"))
        self._fail(vfs.translate(failure, self.path))

    def _failed(self, failure: Failure) -> Failure:
        self._fail(failure)
        return failure

    def _fail(self, failure: Failure) -> None:
        """Nothing of this file will be stored; close reports C{failure}."""
        if self.mode is not WriteMode.CLOSED and self._failure is None:
            self._failure = failure
            self.mode = WriteMode.FAILED
            if self.positional is not None:
                self.positional.fail(failure)
            if self.writer is not None:
                self.writer.abort()
            if self.image is not None:
                self.image.close()


# -- the protocol -----------------------------------------------------------


class FileTransfer(filetransfer.FileTransferServer):
    """
    Conch's SFTP server protocol with the fixes cosgw needs: a lost session
    aborts uploads instead of closing them as finished, READDIR fetches
    pages asynchronously, errors become status replies in L{status_for},
    and requests are not logged one by one.
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.filetransfer")

    def __init__(self, data: Any = None, avatar: Any = None) -> None:
        super().__init__(data, avatar)
        server = self.client
        if isinstance(server, GatewaySFTPServer):
            server.pause_input = self._pause_input

    def _pause_input(self, on: bool) -> None:
        transport = _tcp_transport(self)
        if transport is None:
            return
        if on:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def _ebStatus(self, reason: Failure, requestId: bytes, msg: bytes = b"") -> None:
        code, message = status_for(reason, msg.decode("ascii", "replace") or "request")
        self._sendStatus(requestId, code, message.encode("utf-8"))

    def packet_WRITE(self, data: bytes) -> None:
        """
        As Conch's, but bytes after the write's data are ignored instead of
        failing an assertion: rclone 1.60 (pkg/sftp 1.13) sends a short
        write in a packet as long as its whole buffer (OpenSSH's server
        ignores the rest too); and data shorter than its declared length is
        a bad message, not a short write acknowledged as whole.
        """
        requestId = data[:4]
        handle, rest = getNS(data[4:])
        (offset, length) = struct.unpack("!QL", rest[:12])
        write_data = rest[12 : 12 + length]
        if len(write_data) != length:
            raise ValueError("the WRITE's data is shorter than its length")
        if handle not in self.openFiles:
            self._ebWrite(Failure(KeyError(handle)), requestId)
            return
        d = maybeDeferred(self.openFiles[handle].writeChunk, offset, write_data)
        d.addCallback(self._cbStatus, requestId, b"write succeeded")
        d.addErrback(self._ebStatus, requestId, b"write failed")

    def dataReceived(self, data: bytes) -> None:
        """
        Conch's packet loop, except that a request that cannot be parsed is
        answered (FX_BAD_MESSAGE) rather than logged and left unanswered,
        which would leave the client waiting forever.
        """
        self.buf += data
        while len(self.buf) >= 9:
            length, kind = struct.unpack("!LB", self.buf[:5])
            if len(self.buf) < 4 + length:
                return
            packet, self.buf = self.buf[5 : 4 + length], self.buf[4 + length :]
            name = self.packetTypes.get(kind)
            handler = getattr(self, f"packet_{name}", None) if name else None
            if handler is None:
                self._sendStatus(
                    packet[:4], FX_OP_UNSUPPORTED, b"unsupported request type"
                )
                continue
            try:
                handler(packet)
            except Exception as e:
                log.info(
                    "bad SFTP {name} request from {user}: {error}",
                    name=name,
                    user=getattr(self.client, "fs", None) and self.client.fs.user,
                    error=repr(e),
                )
                if kind != filetransfer.FXP_INIT:
                    self._sendStatus(packet[:4], FX_BAD_MESSAGE, b"bad message")

    # Conch calls these for a READ or WRITE on an unknown handle but does
    # not define them.
    def _ebRead(self, reason: Failure, requestId: bytes) -> None:
        self._sendStatus(requestId, FX_FAILURE, b"invalid handle")

    _ebWrite = _ebRead

    def packet_READDIR(self, data: bytes) -> None:
        requestId = data[:4]
        handle, _ = getNS(data[4:])
        if handle not in self.openDirs:
            self._sendStatus(requestId, FX_FAILURE, b"invalid handle")
            return
        directory = self.openDirs[handle][0]
        d = directory.next_batch()
        d.addCallback(self._send_names, requestId)
        d.addErrback(self._ebStatus, requestId, b"readdir")

    def _send_names(
        self, entries: Sequence[tuple[bytes, bytes, dict]], requestId: bytes
    ) -> None:
        body = b"".join(
            NS(name) + NS(longname) + self._packAttributes(attrs)
            for name, longname, attrs in entries
        )
        self.sendPacket(FXP_NAME, requestId + struct.pack("!L", len(entries)) + body)

    def connectionLost(self, reason: Failure) -> None:
        # Not FileTransferServer.connectionLost: it closes every open file
        # as if it had finished, which would commit half an upload.
        filetransfer.FileTransferBase.connectionLost(self, reason)
        self.openFiles = {}
        for directory, _ in self.openDirs.values():
            directory.close()
        self.openDirs = {}
        server = self.client
        if isinstance(server, GatewaySFTPServer):
            server.connection_lost()


def _tcp_transport(protocol: Any) -> Any:
    """The TCP transport under an SFTP subsystem, to pause reading it."""
    session = getattr(protocol.transport, "session", None)
    conn = getattr(session, "conn", None)
    ssh = getattr(conn, "transport", None)
    return getattr(ssh, "transport", None)
