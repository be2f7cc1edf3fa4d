"""
What an SFTP handle refers to: an open directory (L{Directory}, the
listing's pages sent in batches) or an open file (L{FileHandle}, adapting
the L{IRandomAccessFile} the file system's C{open_file} returns).

How SFTP's random access meets an object store (reads through one ranged
stream, writes at offsets into a multipart upload, in-place changes through
a bounded spool) is the file system's business (see L{cosgw.vfs.editing});
a handle speaks the protocol:

  - Close answers only once the store confirmed the object; a session that
    drops aborts its uploads (Conch would close them as if finished).
  - A handle whose writes wait (for the store or the user's rate) holds its
    session's input (L{InputHold}), so a client that ignores
    acknowledgements is stopped.
  - Every handle counts against its session's C{max_handles} from its
    open to its close (L{GatewaySFTPServer.handles} and C{directories}).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from twisted.conch.interfaces import ISFTPFile
from twisted.conch.ssh.filetransfer import FX_PERMISSION_DENIED, SFTPError
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from cosgw import vfs
from cosgw.escaping import for_log
from cosgw.frontends.listing import format_list_line, unix_mode
from cosgw.interfaces import IListing, IRandomAccessFile, ObjectInfo

if TYPE_CHECKING:
    from cosgw.frontends.sftp.server import GatewaySFTPServer

__all__ = [
    "MAX_READ",
    "READDIR_BATCH",
    "Directory",
    "FileHandle",
    "InputHold",
    "attributes",
]

# The namespace these lines had when SFTP was one module.
log = Logger(namespace="cosgw.frontends.sftp")

#: Entries per READDIR reply (OpenSSH's server sends at most 100; Conch 250).
READDIR_BATCH = 100
#: The largest READ answered (OpenSSH asks 32 KiB..256 KiB).
MAX_READ = 256 * 1024

_S_IFDIR = 0o040000
_S_IFREG = 0o100000


def attributes(entry: vfs.Entry, permissions: frozenset[str]) -> dict[str, int]:
    """
    SFTP's ATTRS for C{entry}.  An object has no owner (uid and gid 0) and no
    mode of its own: the mode shows what C{permissions} let the user do, as
    FTP's listings do; an entry without a time (a directory) shows now.
    """
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


class Directory:
    """An open directory: the listing's pages, sent in batches."""

    def __init__(
        self,
        server: GatewaySFTPServer,
        listing: IListing,
        first: Sequence[vfs.Entry] = (),
    ) -> None:
        """@param first: the listing's first page, when already read."""
        self.server = server
        self.listing = listing
        self._entries: list[vfs.Entry] = list(first)
        self._done = False
        self._now = time.time()
        server.directories.add(self)

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
                attributes(e, fs.permissions),
            )
            for e in batch
        ]

    def close(self) -> None:
        self.server.directories.discard(self)
        self._entries = []
        self._done = True


@implementer(IPushProducer)
class InputHold:
    """
    One handle's hold on its session's input: the file system pauses it
    while the handle's writes wait for the store or for the user's rate,
    and the session stops reading the connection while any handle holds it,
    unless a handle's upload holds its turn in the upload buffer budget
    (L{hunger}): that upload needs the connection's bytes to free it.
    """

    def __init__(self, server: GatewaySFTPServer) -> None:
        self.server = server

    def hunger(self, on: bool) -> None:
        self.server.hunger(self, on)

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
        input: InputHold,
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
        return attributes(self.file.entry, self.server.fs.permissions)

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
            # Debug: the upload's audit event is its line at info.
            log.debug(
                "{user}: stored {path} ({size} bytes) over SFTP",
                user=for_log(self.server.fs.user),
                path=for_log(vfs.display(self.segments)),
                size=info.size,
            )

    def abort(self) -> None:
        """The session went: nothing of an upload may remain."""
        self.server.handles.discard(self)
        self.file.abort("the SFTP session was lost")
