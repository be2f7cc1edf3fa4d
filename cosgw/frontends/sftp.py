"""
SFTP (version 3, draft-ietf-secsh-filexfer-02) over a user's
L{ObjectFileSystem}: the same home confinement, permissions, transfer code
and upload rules as FTP, reached through Conch's L{FileTransferServer}.

How SFTP's random access meets an object store (reads through one ranged
stream, writes at offsets into a multipart upload, in-place changes through
a bounded spool) is the file system's business: an OPEN is one
L{ObjectFileSystem.open_file} call, and each handle adapts the file it
returns (see L{cosgw.vfs.editing}).  This module speaks the protocol:

  - Close answers only once the store confirmed the object; a session that
    drops aborts its uploads (Conch would close them as if finished).
  - A handle whose writes wait (for the store or the user's rate) holds its
    session's input, so a client that ignores acknowledgements is stopped.

Errors become SFTP status codes in one place, L{status_for}; no traceback
reaches a client.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence
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
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import (
    Logger,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw import vfs
from cosgw.frontends.ftp_facts import format_list_line, unix_mode
from cosgw.frontends.ssh import ConchLogger
from cosgw.interfaces import IFileSystem, IListing, IRandomAccessFile, ObjectInfo

log = Logger()

MiB = 1024 * 1024
#: Entries per READDIR reply (OpenSSH's server sends at most 100; Conch 250).
READDIR_BATCH = 100
#: The largest READ answered (OpenSSH asks 32 KiB..256 KiB).
MAX_READ = 256 * 1024

_S_IFDIR = 0o040000
_S_IFREG = 0o100000


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
    if isinstance(e, vfs.NotSupported):
        return FX_OP_UNSUPPORTED, f"{e.path}: {e.message}"
    if isinstance(e, vfs.StoreFailure):
        rid = f" (request {e.request_id})" if e.request_id else ""
        return FX_FAILURE, f"{e.path}: {e.message}; try again later{rid}"
    if isinstance(e, vfs.FSError):
        return FX_FAILURE, f"{e.path}: {e.message}"
    if isinstance(e, vfs.TransferStopped):
        return FX_FAILURE, "the transfer was stopped"
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
        fs: IFileSystem,
        settings: Optional[vfs.RandomAccessSettings] = None,
    ) -> None:
        """
        @param settings: the buffers behind reads and writes at offsets.
        """
        self.fs = fs
        self.settings = settings or vfs.RandomAccessSettings()
        #: ISFTPServer's avatar; this server is built for one, not by
        #: adapting it, and needs nothing from it.
        self.avatar: Any = None
        #: Open file handles, so a lost session can abort their uploads.
        self.handles: set[Any] = set()
        #: Set by the protocol: pauses (True) or resumes reading the
        #: connection while a handle's writes wait.
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
        """SSH_FXP_OPEN: POSIX open's flags, which the file system honours."""
        segments = self.segments(filename)
        input = _Input(self)
        d = self.fs.open_file(
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
        return d.addCallback(lambda file: FileHandle(self, segments, file, input))

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
            stat = self.fs.stat(self.segments(path))
            return stat.addCallback(lambda _: self._statvfs())
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

    def __init__(self, server: GatewaySFTPServer, listing: IListing) -> None:
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


@implementer(IPushProducer)
class _Input:
    """
    One handle's hold on its session's input: the file system pauses it
    while the handle's writes wait for the store or for the user's rate,
    and the session stops reading the connection while any handle holds it.
    """

    def __init__(self, server: GatewaySFTPServer) -> None:
        self.server = server

    def pauseProducing(self) -> None:
        self.server.pressure(self, True)

    def resumeProducing(self) -> None:
        self.server.pressure(self, False)

    def stopProducing(self) -> None:
        self.server.pressure(self, False)


@implementer(ISFTPFile)
class FileHandle:
    """An open file: SFTP's READ, WRITE, FSTAT, FSETSTAT and CLOSE on it."""

    def __init__(
        self,
        server: GatewaySFTPServer,
        segments: list[str],
        file: IRandomAccessFile,
        input: _Input,
    ) -> None:
        self.server = server
        self.segments = segments
        self.file = file
        self._input = input
        server.handles.add(self)

    def readChunk(self, offset: int, length: int) -> Deferred[bytes]:
        return self.file.read(offset, min(length, MAX_READ))

    def writeChunk(self, offset: int, data: bytes) -> Any:
        if not self.file.writable:
            raise SFTPError(
                FX_PERMISSION_DENIED, "the file was opened for reading only"
            )
        return self.file.write(offset, data)

    def getAttrs(self) -> dict:
        return _attrs(self.file.entry, self.server.fs.permissions)

    def setAttrs(self, attrs: dict) -> Deferred[None]:
        """
        lftp sends FSETSTAT{size, atime, mtime} just before CLOSE: the size
        becomes the file's final size, the time is stored with the file.
        Ownership and modes are ignored, as in L{GatewaySFTPServer.setAttrs}.
        """
        size = int(attrs["size"]) if "size" in attrs else None
        mtime = float(attrs["mtime"]) if "mtime" in attrs else None
        return self.file.set_attributes(size=size, mtime=mtime)

    def close(self) -> Deferred[None]:
        self.server.handles.discard(self)
        return self.file.close().addCallback(self._stored)

    def _stored(self, info: Optional[ObjectInfo]) -> None:
        if info is not None:
            log.info(
                "{user}: stored {path} ({size} bytes) over SFTP",
                user=self.server.fs.user,
                path=vfs.display(self.segments),
                size=info.size,
            )

    def abort(self) -> None:
        """The session went: nothing of an upload may remain."""
        self.server.handles.discard(self)
        self.file.abort("the SFTP session was lost")


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
                    user=getattr(getattr(self.client, "fs", None), "user", None),
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
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
