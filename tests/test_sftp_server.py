"""
Unit tests of L{cosgw.frontends.sftp.server} and
L{cosgw.frontends.sftp.handles}: the ISFTPServer methods called directly
over a real file system on a L{cosgw.testing.MemoryStore} (whose Deferreds
have fired already), and the one mapping from errors to SFTP statuses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Optional

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh.filetransfer import (
    FX_EOF,
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OK,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_CREAT,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.frontends.sftp.handles import MAX_READ, READDIR_BATCH, FileHandle
from cosgw.frontends.sftp.server import GatewaySFTPServer, status_for
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.quota import Usage
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings

HOME = "users/alice"
MiB = 1024 * 1024
START = 1_700_000_000.0


def fail(e: BaseException) -> Failure:
    try:
        raise e
    except BaseException:
        return Failure()


class StatusTests(SynchronousTestCase):
    """L{status_for}: every error a request can end with, one status each."""

    def test_mapping(self) -> None:
        cases: list[tuple[BaseException, tuple[int, str]]] = [
            (SFTPError(FX_OK, "renamed"), (FX_OK, "renamed")),
            (EOFError(), (FX_EOF, "end of file")),
            (NotImplementedError("no links"), (FX_OP_UNSUPPORTED, "no links")),
            (NotImplementedError(), (FX_OP_UNSUPPORTED, "not supported")),
            (
                vfs.NotFound("/a"),
                (FX_NO_SUCH_FILE, "/a: no such file or directory"),
            ),
            (
                vfs.PermissionDenied("/a"),
                (FX_PERMISSION_DENIED, "/a: permission denied"),
            ),
            (vfs.NotSupported("/a", "no"), (FX_OP_UNSUPPORTED, "/a: no")),
            (
                vfs.StoreFailure("/a", "store down", "rid-1"),
                (FX_FAILURE, "/a: store down; try again later (request rid-1)"),
            ),
            (
                vfs.StoreFailure("/a", "store down"),
                (FX_FAILURE, "/a: store down; try again later"),
            ),
            (vfs.NotEmpty("/d"), (FX_FAILURE, "/d: directory not empty")),
            (vfs.QuotaExceeded("/a"), (FX_FAILURE, "/a: quota exceeded")),
            (vfs.TransferStopped(), (FX_FAILURE, "the transfer was stopped")),
        ]
        for error, expected in cases:
            self.assertEqual(status_for(fail(error)), expected, repr(error))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_unexpected_error_logged_not_shown(self) -> None:
        code, message = status_for(fail(ZeroDivisionError("secret detail")), "open")
        self.assertEqual(code, FX_FAILURE)
        self.assertNotIn("secret", message)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class HeldStore(MemoryStore):
    """A memory store whose requests wait, while L{holding}, for L{release}."""

    holding = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: list[Deferred[None]] = []

    def _request(self, method: str, body: Callable[..., Any], *args: Any) -> Any:
        if not self.holding:
            return super()._request(method, body, *args)
        gate: Deferred[None] = Deferred()
        self.waiting.append(gate)
        return gate.addCallback(
            lambda _: super(HeldStore, self)._request(method, body, *args)
        )

    def release(self) -> None:
        self.holding = False
        while self.waiting:
            self.waiting.pop(0).callback(None)


class ServerTests(SynchronousTestCase):
    """L{GatewaySFTPServer} over user alice's file system."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryStore(self.clock)
        self.server = self.make_server(ALL_PERMISSIONS)

    def make_server(
        self,
        permissions: frozenset[str],
        usage: Optional[Usage] = None,
        store: Optional[MemoryStore] = None,
        max_handles: int = 64,
    ) -> GatewaySFTPServer:
        account = Account(
            name="alice",
            store=store or self.store,
            home=HOME,
            permissions=permissions,
            usage=usage,
        )
        accounts = Accounts({"alice": account}, TransferSettings())
        return GatewaySFTPServer(accounts.filesystem("alice"), max_handles=max_handles)

    def put(self, path: str, data: bytes) -> None:
        self.successResultOf(self.store.put(f"{HOME}/{path}", data, None))

    def test_interfaces(self) -> None:
        verifyObject(ISFTPServer, self.server)
        self.put("a.txt", b"hello")
        handle = self.successResultOf(self.server.openFile(b"a.txt", FXF_READ, {}))
        self.assertIsInstance(handle, FileHandle)
        verifyObject(ISFTPFile, handle)
        self.successResultOf(handle.close())

    def test_paths(self) -> None:
        self.assertEqual(self.server.realPath(b"."), b"/")
        self.assertEqual(self.server.realPath(b"a/../../b"), b"/b")
        e = self.assertRaises(SFTPError, self.server.segments, b"\xff")
        self.assertEqual(e.code, FX_FAILURE)

    def test_read_and_attributes(self) -> None:
        self.put("a.txt", b"hello world")
        handle = self.successResultOf(self.server.openFile(b"/a.txt", FXF_READ, {}))
        self.assertEqual(self.successResultOf(handle.readChunk(6, 100)), b"world")
        attrs = handle.getAttrs()
        self.assertEqual(attrs["size"], 11)
        self.assertEqual(attrs["permissions"] & 0o170000, 0o100000)
        self.assertEqual(
            self.successResultOf(self.server.getAttrs(b"a.txt", False))["size"], 11
        )
        self.assertRaises(SFTPError, handle.writeChunk, 0, b"x")
        self.successResultOf(handle.close())
        self.assertEqual(self.server.handles, set())

    def test_write_commits_on_close(self) -> None:
        flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
        handle = self.successResultOf(self.server.openFile(b"new.txt", flags, {}))
        self.assertEqual(self.server.handles, {handle})
        handle.writeChunk(0, b"abc")
        self.assertNotIn(f"{HOME}/new.txt", self.store.stored_keys())
        self.successResultOf(handle.close())
        self.assertEqual(self.store.stored_bytes(f"{HOME}/new.txt"), b"abc")

    def test_lost_session_aborts_uploads(self) -> None:
        flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
        handle = self.successResultOf(self.server.openFile(b"new.txt", flags, {}))
        handle.writeChunk(0, b"abc")
        self.successResultOf(self.server.connection_lost())
        self.assertEqual(self.server.handles, set())
        self.assertEqual(self.store.stored_keys(), [])
        self.assertEqual(self.store.stored_uploads(), [])

    def test_rename_refuses_existing_target(self) -> None:
        """draft-02 section 6.5; posix-rename@openssh.com overwrites."""
        self.put("a.txt", b"a")
        self.put("b.txt", b"b")
        f = self.failureResultOf(self.server.renameFile(b"a.txt", b"b.txt"))
        self.assertEqual(status_for(f)[0], FX_FAILURE)
        data = struct.pack("!L", 5) + b"a.txt" + struct.pack("!L", 5) + b"b.txt"
        f = self.failureResultOf(
            self.server.extendedRequest(b"posix-rename@openssh.com", data)
        )
        self.assertEqual(status_for(f)[0], FX_OK)
        self.assertEqual(self.store.stored_bytes(f"{HOME}/b.txt"), b"a")

    def test_directory_batches(self) -> None:
        for i in range(READDIR_BATCH + 1):
            self.put(f"d/f{i:03}", b"x")
        directory = self.successResultOf(self.server.openDirectory(b"d"))
        first = self.successResultOf(directory.next_batch())
        second = self.successResultOf(directory.next_batch())
        self.assertEqual(len(first), READDIR_BATCH)
        self.assertEqual([name for name, _, _ in second], [b"f100"])
        self.assertTrue(first[0][1].decode().endswith(" f000"))
        self.failureResultOf(directory.next_batch(), EOFError)
        f = self.failureResultOf(self.server.openDirectory(b"nope"))
        self.assertEqual(status_for(f)[0], FX_NO_SUCH_FILE)

    def test_statvfs_read_only(self) -> None:
        server = self.make_server(frozenset({"list", "download"}))
        data = struct.pack("!L", 1) + b"/"
        reply = self.successResultOf(
            server.extendedRequest(b"statvfs@openssh.com", data)
        )
        fields = struct.unpack("!11Q", reply)
        self.assertEqual(fields[9], 1)  # ST_RDONLY
        self.assertEqual(fields[10], 255)

    def test_statvfs_counts_uploads_in_progress(self) -> None:
        """
        Free space under a quota is its room: the bytes stored, those an
        upload in progress has claimed and parts kept for a resume all
        count (the bytes stored alone said 9 MiB here).
        """
        usage = Usage(self.store, HOME + "/", max_bytes=10 * MiB, max_files=None)
        self.put("old.bin", bytes(MiB))
        server = self.make_server(ALL_PERMISSIONS, usage=usage)
        flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
        handle = self.successResultOf(server.openFile(b"new.bin", flags, {}))
        handle.writeChunk(0, bytes(3 * MiB))
        data = struct.pack("!L", 1) + b"/"
        reply = self.successResultOf(
            server.extendedRequest(b"statvfs@openssh.com", data)
        )
        block, _, blocks, bfree, bavail = struct.unpack("!11Q", reply)[:5]
        self.assertEqual((block * blocks, block * bfree), (10 * MiB, 6 * MiB))
        self.assertEqual(bavail, bfree)
        self.successResultOf(handle.close())

    def test_limits(self) -> None:
        """
        limits@openssh.com: 256 KiB packets, reads and writes of 255 KiB
        (OpenSSH's client then asks for those instead of 32 KiB), and the
        session's handle limit.
        """
        server = self.make_server(ALL_PERMISSIONS, max_handles=5)
        self.assertEqual(server.gotVersion(3, {})[b"limits@openssh.com"], b"1")
        reply = server.extendedRequest(b"limits@openssh.com", b"")
        self.assertEqual(
            struct.unpack("!4Q", reply), (256 * 1024, 255 * 1024, 255 * 1024, 5)
        )

    def test_session_lost_during_open(self) -> None:
        """
        A session lost while an OPEN that begins an upload waits for the
        store: once the open completes, the upload is aborted (its quota
        claim released, nothing in the store) and the OPEN fails.
        """
        store = HeldStore(self.clock)
        usage = Usage(store, HOME + "/", max_bytes=10 * MiB, max_files=None)
        server = self.make_server(ALL_PERMISSIONS, usage=usage, store=store)
        store.holding = True
        flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC
        opening = server.openFile(b"new.bin", flags, {})
        self.assertNoResult(opening)
        self.successResultOf(server.connection_lost())
        store.release()
        failure = self.failureResultOf(opening, SFTPError)
        self.assertEqual(status_for(failure), (FX_FAILURE, "the SFTP session was lost"))
        self.assertEqual(server.handles, set())
        self.assertEqual(server.open_handles, 0)
        self.assertEqual((usage.reserved, usage.pending_files), (0, 0))
        self.assertEqual(store.stored_uploads(), [])
        self.assertEqual(store.stored_keys(), [])

    def test_reads_capped(self) -> None:
        self.put("big", b"x" * (MAX_READ + 10))
        handle = self.successResultOf(self.server.openFile(b"big", FXF_READ, {}))
        data: Any = self.successResultOf(handle.readChunk(0, MAX_READ * 2))
        self.assertEqual(len(data), MAX_READ)
        self.successResultOf(handle.close())

    def test_no_links(self) -> None:
        self.assertRaises(NotImplementedError, self.server.readLink, b"a")
        self.assertRaises(NotImplementedError, self.server.makeLink, b"a", b"b")
