"""
SFTP (version 3, draft-ietf-secsh-filexfer-02) over a user's
L{IFileSystem}: the same home confinement, permissions, transfer code and
upload rules as FTP, reached through Conch's L{FileTransferServer}.

L{GatewaySFTPServer} turns each request into file-system calls; an OPEN is
one C{open_file} call whose result a L{FileHandle} adapts.  Errors become
SFTP status codes in one place, L{status_for}; no traceback reaches a
client.  A session holds at most C{max_handles} files and directories open
(each file may hold a store connection, a download window or spool space).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from typing import Any, Optional

from twisted.conch.interfaces import ISFTPServer
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.filetransfer import (
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
    SFTPError,
)
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw import vfs
from cosgw.escaping import for_log
from cosgw.frontends.sftp.handles import Directory, FileHandle, InputHold, attributes
from cosgw.interfaces import IFileSystem, IRandomAccessFile

__all__ = ["MAX_SFTP_PACKET", "MAX_TRANSFER", "GatewaySFTPServer", "status_for"]

# The namespace these lines had when SFTP was one module.
log = Logger(namespace="cosgw.frontends.sftp")

#: The longest SFTP packet accepted (its length field), as OpenSSH's
#: sftp-server (SFTP_MAX_MSG_LENGTH).
MAX_SFTP_PACKET = 256 * 1024
#: The longest READ and WRITE data advertised in limits@openssh.com, as
#: OpenSSH's sftp-server: a packet's length less room for its header.
#: OpenSSH's client then asks for reads and writes of this size instead of
#: 32 KiB, eight times fewer requests and replies per byte.
MAX_TRANSFER = MAX_SFTP_PACKET - 1024


def status_for(
    failure: Failure, action: str = "request", quiet: bool = False
) -> tuple[int, str]:
    """
    The one place where errors become SFTP status codes and messages.
    Version 3 has few codes: what has none (not a directory, not empty,
    quota) is FX_FAILURE with a message saying exactly what.  Unexpected
    errors are logged with their traceback and shown as a plain failure;
    C{quiet} (an audit event's status) logs nothing.
    """
    e = failure.value
    if _out_of_descriptors(e):
        log.emit(
            LogLevel.debug if quiet else LogLevel.error,
            "SFTP {action} failed: the process has no file descriptor left ({error})",
            action=action,
            error=str(e),
        )
        return FX_FAILURE, "the server has too many open files; try again later"
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
    if isinstance(e, vfs.NotSupported):
        return FX_OP_UNSUPPORTED, f"{e.path}: {e.message}"
    if isinstance(e, vfs.StoreFailure):
        rid = f" (request {e.request_id})" if e.request_id else ""
        return FX_FAILURE, f"{e.path}: {e.message}; try again later{rid}"
    if isinstance(e, vfs.FSError):
        return FX_FAILURE, f"{e.path}: {e.message}"
    if isinstance(e, vfs.TransferStopped):
        return FX_FAILURE, "the transfer was stopped"
    if not quiet:
        log.failure("unexpected error in SFTP {action}", failure, action=action)
    return FX_FAILURE, "internal error; the gateway's log has the details"


def _out_of_descriptors(e: Optional[BaseException]) -> bool:
    """C{e}, or an error it was raised from, is EMFILE or ENFILE."""
    seen: set[int] = set()
    current: Optional[BaseException] = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (
            errno.EMFILE,
            errno.ENFILE,
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


@implementer(ISFTPServer)
class GatewaySFTPServer:
    """One session's SFTP requests, over the user's file system."""

    def __init__(
        self,
        fs: IFileSystem,
        settings: Optional[vfs.RandomAccessSettings] = None,
        max_handles: int = 64,
    ) -> None:
        """
        @param settings: the buffers behind reads and writes at offsets.
        @param max_handles: files and directories the session may hold open
            at once; opening one more fails with FX_FAILURE.
        """
        if max_handles < 1:
            raise ValueError(f"max_handles must be positive: {max_handles!r}")
        self.fs = fs
        self.settings = settings or vfs.RandomAccessSettings()
        self.max_handles = max_handles
        #: ISFTPServer's avatar; this server is built for one, not by
        #: adapting it, and needs nothing from it.
        self.avatar: Any = None
        #: Open file handles, so a lost session can abort their uploads.
        self.handles: set[FileHandle] = set()
        #: Open directory handles.
        self.directories: set[Directory] = set()
        #: Opens under way, each holding a handle's place.
        self._opening = 0
        #: Set by the protocol: pauses (True) or resumes reading the
        #: connection while a handle's writes wait, unless a handle's
        #: upload holds its turn in the upload buffer budget.
        self.pause_input: Callable[[bool], None] = lambda on: None
        #: Set by the protocol: the connection must be read (True) while
        #: such an upload waits for its bytes, whatever else holds it.
        self.feed_input: Callable[[bool], None] = lambda on: None
        self._paused_by: set[int] = set()
        self._hungry: set[int] = set()
        self._input = (False, False)  # (paused, fed) as last told
        #: The session is gone (L{connection_lost}).
        self.lost = False

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

    @property
    def open_handles(self) -> int:
        """Handles open or being opened."""
        return len(self.handles) + len(self.directories) + self._opening

    def _opened(self, opening: Deferred[Any]) -> Deferred[Any]:
        """
        C{opening}, the open of a handle whose place L{_claim_handle} holds:
        the place is given back when it fails, and taken over by the handle
        (in L{handles} or L{directories}) when it succeeds.
        """

        def settled(result: Any) -> Any:
            self._opening -= 1
            return result

        return opening.addBoth(settled)

    def _claim_handle(self) -> None:
        """
        Hold a handle's place for an open.

        @raise SFTPError: FX_FAILURE when L{max_handles} are open.
        """
        if self.open_handles >= self.max_handles:
            log.info(
                "{user}: SFTP open refused, {count} handles open (max {max})",
                user=for_log(self.fs.user),
                count=self.open_handles,
                max=self.max_handles,
            )
            raise SFTPError(
                FX_FAILURE, f"too many open handles (max {self.max_handles})"
            )
        self._opening += 1

    def pressure(self, handle: object, on: bool) -> None:
        """A handle asks to stop (or resume) reading the connection."""
        (self._paused_by.add if on else self._paused_by.discard)(id(handle))
        self._update_input()

    def hunger(self, handle: object, on: bool) -> None:
        """
        A handle's upload holds (or no longer holds) its turn in the upload
        buffer budget, waiting for the client's bytes: the connection stays
        read whatever the other handles (of any channel: one server serves
        the connection) wait for; uploads waiting for the budget wait for
        this one, and would stall with it.
        """
        (self._hungry.add if on else self._hungry.discard)(id(handle))
        self._update_input()

    def _update_input(self) -> None:
        # A hungry handle that is itself paused waits for the user's rate
        # (its store is not what it waits for: it holds its budget turn), so
        # it must not make the connection read past that rate.
        fed = bool(self._hungry - self._paused_by)
        paused = bool(self._paused_by) and not fed
        was_paused, was_fed = self._input
        self._input = (paused, fed)
        if fed != was_fed:
            self.feed_input(fed)
        if paused != was_paused:
            self.pause_input(paused)

    def connection_lost(self) -> Deferred[None]:
        """
        The session is gone: abort every upload still open, and those whose
        open completes later (L{openFile}).
        """
        self.lost = True
        handles, self.handles = list(self.handles), set()
        for handle in handles:
            handle.abort()
        return succeed(None)

    # -- ISFTPServer ------------------------------------------------------

    def gotVersion(self, otherVersion: int, extData: dict) -> dict[bytes, bytes]:
        return {
            b"posix-rename@openssh.com": b"1",
            b"statvfs@openssh.com": b"2",
            b"limits@openssh.com": b"1",
        }

    def openFile(self, filename: bytes, flags: int, attrs: dict) -> Deferred[Any]:
        """SSH_FXP_OPEN: POSIX open's flags, which the file system honours."""
        segments = self.segments(filename)
        input = InputHold(self)
        self._claim_handle()
        d = self._opened(
            maybeDeferred(
                self.fs.open_file,
                segments,
                read=bool(flags & FXF_READ),
                write=bool(flags & FXF_WRITE),
                append=bool(flags & FXF_APPEND),
                create=bool(flags & FXF_CREAT),
                truncate=bool(flags & FXF_TRUNC),
                exclusive=bool(flags & FXF_EXCL),
                settings=self.settings,
                producer=input,
            )
        )
        return d.addCallback(self._file_opened, segments, input)

    def _file_opened(
        self, file: IRandomAccessFile, segments: list[str], input: InputHold
    ) -> FileHandle:
        """
        An open completed: its handle, unless the session was lost
        meanwhile; then nothing may remain of the file (an upload it began
        holds a quota reservation) and the request fails.
        """
        if self.lost:
            file.abort("the SFTP session was lost")
            raise SFTPError(FX_FAILURE, "the SFTP session was lost")
        return FileHandle(self, segments, file, input)

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
        self._claim_handle()

        async def open_directory() -> Directory:
            listing = self.fs.listing(segments)
            # Its first page shows a directory, which the session then
            # knows, so the stat asks nothing: one LIST in all.
            first = await listing.next_page()
            if not (await self.fs.stat(segments)).is_dir:
                error = vfs.NotADirectory(vfs.display(segments))
                listing.close(error)
                raise error
            return Directory(self, listing, first or [])

        return self._opened(ensureDeferred(open_directory()))

    def getAttrs(self, path: bytes, followLinks: bool) -> Deferred[dict]:
        d = self.fs.stat(self.segments(path))
        return d.addCallback(attributes, self.fs.permissions)

    def setAttrs(self, path: bytes, attrs: dict) -> Deferred[None]:
        """
        Ownership and modes are accepted and ignored (an object has none;
        scp and WinSCP set them after every upload and an error makes them
        warn).  A time is kept as MFMT keeps it; a size is honoured only
        when it is the current size or 0.
        """
        size = int(attrs["size"]) if "size" in attrs else None
        mtime = float(attrs["mtime"]) if "mtime" in attrs else None
        return self.fs.set_attributes(self.segments(path), size=size, mtime=mtime)

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
            return ensureDeferred(self._statvfs(self.segments(path)))
        if extendedName == b"limits@openssh.com":
            # max-packet-length, max-read-length, max-write-length,
            # max-open-handles (OpenSSH's PROTOCOL section 4.8).
            return struct.pack(
                "!4Q", MAX_SFTP_PACKET, MAX_TRANSFER, MAX_TRANSFER, self.max_handles
            )
        raise NotImplementedError(
            f"unsupported extension {extendedName.decode('ascii', 'replace')}"
        )

    async def _statvfs(self, segments: list[str]) -> bytes:
        """
        statvfs@openssh.com: eleven uint64s (bsize, frsize, blocks, bfree,
        bavail, files, ffree, favail, fsid, flag, namemax).  A bucket has no
        capacity of its own; report 1 PiB free unless a quota says less,
        and then its room: what uploads in progress and parts kept for a
        resume have not claimed yet.
        """
        await self.fs.stat(segments)
        block = 4096
        total = 1 << 50
        free = total
        quota = self.fs.usage
        if quota is not None and quota.max_bytes is not None:
            await quota.ensure()
            total = quota.max_bytes
            free = quota.room
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
