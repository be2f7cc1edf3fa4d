"""
Unit tests of L{cosgw.vfs.editing}: files opened with POSIX open's flags
(SFTP's OPEN) and read and written at offsets, over a memory store.  Each
open pins its store requests: the checks are made once per file.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import IRandomAccessFile
from tests.doortesting import DoorTestCase, H, KiB, MiB, pattern
from tests.transfertesting import FakeProducer

WRITE_NEW = {"write": True, "create": True, "truncate": True}


class EditingTestCase(DoorTestCase):
    def open(
        self,
        path: str,
        producer: Optional[IPushProducer] = None,
        settings: Optional[vfs.RandomAccessSettings] = None,
        **flags: bool,
    ) -> vfs.RandomAccessFile:
        d = self.fs.open_file(
            vfs.resolve([], path), settings=settings, producer=producer, **flags
        )
        return self.ok(d)  # type: ignore[return-value]

    def write(self, file: vfs.RandomAccessFile, offset: int, data: bytes) -> None:
        """A write that is acknowledged, at once or once it may be."""
        ack = file.write(offset, data)
        if ack is not None:
            self.ok(ack)


class OpenTests(EditingTestCase):
    """What each kind of open costs in store requests, and refuses."""

    def setUp(self) -> None:
        super().setUp()
        self.put("dir/")
        self.put("dir/old.bin", b"x" * 1000)

    def test_interface(self) -> None:
        self.assertTrue(
            verifyObject(IRandomAccessFile, self.open("dir/new", **WRITE_NEW))
        )

    def test_new_file(self) -> None:
        """
        Two requests for the name (no file, no directory), two for its
        directory: no check is repeated by the upload, and no resume is
        looked up for a file written from 0.
        """
        file = self.open("dir/new.bin", **WRITE_NEW)
        self.assertRequests(head=2, list=2)
        self.write(file, 0, b"hello")
        info: Any = self.ok(file.close())
        self.assertEqual(info.size, 5)
        self.assertRequests(put=1)
        self.assertEqual(self.stored("dir/new.bin"), b"hello")

    def test_truncating_an_existing_file(self) -> None:
        file = self.open("dir/old.bin", **WRITE_NEW)
        self.assertRequests(head=2, list=1)
        self.write(file, 0, b"new")
        info = self.ok(file.close())
        self.assertEqual(info.size if info else None, 3)
        self.assertEqual(self.stored("dir/old.bin"), b"new")

    def test_append(self) -> None:
        """APPEND starts after the file: its bytes are read back (small)."""
        file = self.open("dir/old.bin", write=True, append=True)
        self.assertRequests(head=2, list=1, list_multipart=1, open=1)
        self.write(file, 0, b"tail")  # O_APPEND: the offset does not count
        self.ok(file.close())
        self.assertEqual(self.stored("dir/old.bin"), b"x" * 1000 + b"tail")
        self.assertNothingLeft()

    def test_read_only(self) -> None:
        file = self.open("dir/old.bin", read=True)
        self.assertRequests(open=1)
        self.assertFalse(file.writable)
        self.assertEqual(self.ok(file.read(990, 100)), b"x" * 10)
        self.assertEqual(self.ok(file.read(1000, 100)), b"")
        with self.assertRaises(vfs.PermissionDenied):
            file.write(0, b"no")
        self.assertIsNone(self.ok(file.close()))
        self.assertNothingLeft()

    def test_create_alone_opens_an_existing_file(self) -> None:
        """O_CREAT without a write flag on an existing file, as POSIX."""
        file = self.open("dir/old.bin", create=True)
        self.assertRequests(head=1, open=1)
        self.assertFalse(file.writable)
        file.close()

    def test_refusals(self) -> None:
        for path, flags, error in (
            (
                "dir/old.bin",
                {"write": True, "create": True, "exclusive": True},
                vfs.AlreadyExists,
            ),
            ("dir/none", {"write": True}, vfs.NotFound),
            ("none/f", WRITE_NEW, vfs.NotFound),
            ("dir", WRITE_NEW, vfs.IsADirectory),
            ("dir", {"read": True}, vfs.IsADirectory),
            ("dir/none", {"read": True}, vfs.NotFound),
        ):
            self.fails(self.fs.open_file(vfs.resolve([], path), **flags), error)
        self.fs = self.make_fs(ALL_PERMISSIONS - {"overwrite"})
        self.fails(
            self.fs.open_file(["dir", "old.bin"], **WRITE_NEW), vfs.PermissionDenied
        )
        self.ok(self.fs.open_file(["dir", "old.bin"], read=True)).close()
        self.fs = self.make_fs(ALL_PERMISSIONS - {"upload"})
        self.fails(self.fs.open_file(["dir", "new"], **WRITE_NEW), vfs.PermissionDenied)
        self.assertEqual(self.store.stored_keys(), [H + "dir/", H + "dir/old.bin"])


class DecideTests(EditingTestCase):
    """An existing file opened for writing without TRUNC or APPEND."""

    def setUp(self) -> None:
        super().setUp()
        self.data = pattern(300 * KiB)
        self.put("dir/")
        self.put("dir/f", self.data)

    def test_reads_then_a_write_at_the_end_appends(self) -> None:
        file = self.open("dir/f", read=True, write=True)
        self.assertRequests(head=1)
        self.assertEqual(self.ok(file.read(0, 10)), self.data[:10])
        self.assertEqual(self.ok(file.read(KiB, 10)), self.data[KiB : KiB + 10])
        self.assertRequests(open=1)
        self.write(file, len(self.data), b"more")
        # The directory once, the interrupted uploads once, the prefix read.
        self.assertRequests(head=1, list=1, list_multipart=1, open=1)
        with self.assertRaises(vfs.NotSupported):
            file.read(0, 10)  # now streaming into the store
        self.ok(file.close())
        self.assertRequests(put=1)
        self.assertEqual(self.stored("dir/f"), self.data + b"more")
        self.assertNothingLeft()

    def test_a_write_in_the_middle_changes_the_file_in_place(self) -> None:
        file = self.open("dir/f", read=True, write=True)
        self.store.reset_requests()
        self.write(file, 1000, b"EDITED")
        self.assertRequests(head=1, list=1, list_multipart=1, open=1)
        self.assertEqual(
            self.ok(file.read(998, 10)),
            self.data[998:1000] + b"EDITED" + self.data[1006:1008],
        )
        self.assertEqual(file.entry.size, len(self.data))
        self.ok(file.close())
        # The whole file, uploaded at close with no check repeated.
        self.assertRequests(put=1)
        expected = self.data[:1000] + b"EDITED" + self.data[1006:]
        self.assertEqual(self.stored("dir/f"), expected)
        self.assertNothingLeft()

    def test_size_cut_of_an_image(self) -> None:
        file = self.open("dir/f", write=True)
        self.write(file, 0, b"A")
        self.ok(file.set_attributes(size=10))
        self.ok(file.close())
        self.assertEqual(self.stored("dir/f"), b"A" + self.data[1:10])

    def test_size_unchanged_without_a_write(self) -> None:
        file = self.open("dir/f", write=True)
        self.ok(file.set_attributes(size=len(self.data)))
        with self.assertRaises(vfs.NotSupported):
            file.set_attributes(size=5)
        self.ok(file.close())
        self.assertEqual(self.stored("dir/f"), self.data)

    def test_time_stored_at_close(self) -> None:
        file = self.open("dir/f", write=True)
        self.ok(file.set_attributes(mtime=1_000_000.0))
        self.assertEqual(file.entry.mtime, 1_000_000.0)
        self.ok(file.close())
        self.assertEqual(self.ok(self.fs.stat(["dir", "f"])).mtime, 1_000_000.0)

    def test_image_too_large(self) -> None:
        settings = vfs.RandomAccessSettings(spool_limit=100 * KiB)
        file = self.open("dir/f", settings=settings, write=True)
        self.fails(file.write(10, b"x"), vfs.WriteRefused)
        self.fails(file.close(), vfs.WriteRefused)
        self.assertEqual(self.stored("dir/f"), self.data)


class StreamTests(EditingTestCase):
    """Files written front to back at offsets, out of order at times."""

    def test_out_of_order_writes(self) -> None:
        data = pattern(3 * MiB + 100)
        settings = vfs.RandomAccessSettings(reorder_window=256 * KiB)
        file = self.open("f", settings=settings, **WRITE_NEW)
        chunks = list(range(0, len(data), 32 * KiB))
        # The last chunk first: far ahead, it goes to the spool; then groups
        # of eight backwards, which wait in the reorder window.
        body, order = chunks[:-1], chunks[-1:]
        for i in range(0, len(body), 8):
            order += reversed(body[i : i + 8])
        for at in order:
            self.write(file, at, data[at : at + 32 * KiB])
        self.assertEqual(file.entry.size, len(data))
        self.ok(file.close())
        self.assertEqual(self.stored("f"), data)
        self.assertNothingLeft()

    def test_rewrite_refused(self) -> None:
        """A write behind the upload fails the file: never a wrong object."""
        file = self.open("f", **WRITE_NEW)
        self.write(file, 0, pattern(2 * MiB))
        error = self.fails(file.write(10, b"changed"), vfs.WriteRefused)
        self.assertIn("front to back", error.message)
        self.fails(file.close(), vfs.WriteRefused)
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()

    def test_cut_below_the_upload_refused(self) -> None:
        file = self.open("f", **WRITE_NEW)
        self.write(file, 0, pattern(2 * MiB))
        with self.assertRaises(vfs.NotSupported):
            file.set_attributes(size=10)
        self.ok(file.set_attributes(size=3 * MiB))
        self.ok(file.close())
        self.assertEqual(self.stored("f"), pattern(2 * MiB) + bytes(MiB))

    def test_store_failure_fails_the_file(self) -> None:
        """A part the store refuses: the next write and the close say so."""
        file = self.open("f", **WRITE_NEW)
        self.store.fail_next("upload_part")
        self.write(file, 0, pattern(MiB + 10))
        self.fails(file.write(MiB + 10, b"x"), vfs.StoreFailure)
        self.fails(file.close(), vfs.StoreFailure)
        self.flushLoggedErrors()
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()

    def test_abort(self) -> None:
        """A lost session: nothing stored, nothing kept."""
        file = self.open("f", **WRITE_NEW)
        self.write(file, 0, pattern(2 * MiB + 10))
        file.abort("the session was lost")
        self.assertEqual(self.store.stored_keys(), [])
        self.assertNothingLeft()

    def test_upload_rate_holds_replies_and_input(self) -> None:
        """
        Over the user's rate, a write's reply waits, and the client's input
        is paused meanwhile, against a client that does not wait.
        """
        self.fs = self.make_fs(upload_rate=100 * KiB, burst=64 * KiB)
        producer = FakeProducer()
        file = self.open("f", producer=producer, **WRITE_NEW)
        self.assertIsNone(file.write(0, pattern(64 * KiB)))
        ack = file.write(64 * KiB, pattern(32 * KiB))
        self.assertIsInstance(ack, Deferred)
        self.assertEqual(producer.events, ["pause"])
        self.clock.advance(0.33)
        self.ok(ack)  # type: ignore[arg-type]
        self.assertEqual(producer.events, ["pause", "resume"])
        self.ok(file.close())

    def test_set_attributes_by_path(self) -> None:
        """SETSTAT: a size of 0 empties a file; another size is refused."""
        self.put("f", b"content")
        self.ok(self.fs.set_attributes(["f"], size=0))
        self.assertEqual(self.stored("f"), b"")
        self.fails(self.fs.set_attributes(["f"], size=5), vfs.NotSupported)


@implementer(IPushProducer)
class _Unused:
    def pauseProducing(self) -> None:
        raise AssertionError("paused")

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        raise AssertionError("stopped")


class InputTests(EditingTestCase):
    def test_unlimited_writes_leave_the_input_alone(self) -> None:
        file = self.open("f", producer=_Unused(), **WRITE_NEW)
        data = pattern(MiB)
        for at in range(0, len(data), 32 * KiB):
            self.write(file, at, data[at : at + 32 * KiB])
        info: Any = self.ok(file.close())
        self.assertEqual(info.size, len(data))
