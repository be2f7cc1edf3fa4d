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

    def refused(
        self, file: vfs.RandomAccessFile, offset: int, data: bytes
    ) -> vfs.WriteRefused:
        """A write whose reply fails with L{vfs.WriteRefused}: the error."""
        ack = file.write(offset, data)
        assert ack is not None
        error: vfs.WriteRefused = self.fails(ack, vfs.WriteRefused)
        return error


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
        One LIST for the name (no file, no directory), one for its
        directory at the same time: no check is repeated by the upload, and
        no resume is looked up for a file written from 0.
        """
        file = self.open("dir/new.bin", **WRITE_NEW)
        self.assertRequests(list=2)
        self.write(file, 0, b"hello")
        info: Any = self.ok(file.close())
        self.assertEqual(info.size, 5)
        self.assertRequests(put=1)
        self.assertEqual(self.stored("dir/new.bin"), b"hello")

    def test_truncating_an_existing_file(self) -> None:
        file = self.open("dir/old.bin", **WRITE_NEW)
        self.assertRequests(list=2)
        self.write(file, 0, b"new")
        info = self.ok(file.close())
        self.assertEqual(info.size if info else None, 3)
        self.assertEqual(self.stored("dir/old.bin"), b"new")

    def test_append(self) -> None:
        """APPEND starts after the file: its bytes are read back (small)."""
        file = self.open("dir/old.bin", write=True, append=True)
        self.assertRequests(list=2, open=1)
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
        self.assertRequests(list=1, open=1)
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
        self.assertRequests(list=2)
        self.assertEqual(self.ok(file.read(0, 10)), self.data[:10])
        self.assertEqual(self.ok(file.read(KiB, 10)), self.data[KiB : KiB + 10])
        self.assertRequests(open=1)
        self.write(file, len(self.data), b"more")
        # The prefix read; the directory was checked at the open, and a
        # visible file has no interrupted upload to look up.
        self.assertRequests(open=1)
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
        self.assertRequests(open=1)
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


class HoleTests(EditingTestCase):
    """Holes beyond the end of a file are stored as zeros: only small ones."""

    settings = vfs.RandomAccessSettings(max_sparse_gap=MiB)

    def setUp(self) -> None:
        super().setUp()
        self.data = pattern(300 * KiB)
        self.put("old", self.data)

    def test_far_write_refused(self) -> None:
        """
        One byte at 300 MiB (the default gap is 64 MiB): refused, the file
        fails, nothing is stored and nothing was uploaded.
        """
        file = self.open("f", **WRITE_NEW)
        self.write(file, 0, b"head")
        error = self.refused(file, 300 * MiB, b"x")
        self.assertIn("max_sparse_gap", error.message)
        self.assertIn("hole of 314572796 bytes", error.message)
        self.fails(file.close(), vfs.WriteRefused)
        self.assertEqual(self.store.stored_keys(), [H + "old"])
        self.assertNothingLeft()
        self.assertEqual(self.store.requests["upload_part"], 0)

    def test_holes_up_to_the_gap(self) -> None:
        """
        A hole of exactly the gap, then writes behind the end (filling it,
        in any order) are fine; one byte more is not.
        """
        file = self.open("f", settings=self.settings, **WRITE_NEW)
        self.write(file, MiB, b"b")
        self.write(file, 10, b"a")
        self.write(file, 2 * MiB + 1, b"c")
        self.ok(file.close())
        expected = bytes(10) + b"a" + bytes(MiB - 11) + b"b" + bytes(MiB) + b"c"
        self.assertEqual(self.stored("f"), expected)
        file = self.open("g", settings=self.settings, **WRITE_NEW)
        self.refused(file, MiB + 1, b"x")

    def test_no_holes(self) -> None:
        """A gap of 0: writes must come in order (or behind the end)."""
        settings = vfs.RandomAccessSettings(max_sparse_gap=0)
        file = self.open("f", settings=settings, **WRITE_NEW)
        self.write(file, 0, b"ab")
        self.write(file, 2, b"cd")
        self.refused(file, 5, b"x")
        self.fails(file.close(), vfs.WriteRefused)
        self.assertEqual(self.store.stored_keys(), [H + "old"])

    def test_size_growth(self) -> None:
        """
        FSETSTAT growing a file past the gap is refused, and only that: the
        file goes on and is stored as written; growth within it is zeros.
        """
        file = self.open("f", settings=self.settings, **WRITE_NEW)
        self.write(file, 0, b"hello")
        with self.assertRaises(vfs.WriteRefused) as caught:
            file.set_attributes(size=200 * MiB)
        self.assertIn("a size change to 209715200", caught.exception.message)
        self.ok(file.close())
        self.assertEqual(self.stored("f"), b"hello")
        file = self.open("g", settings=self.settings, **WRITE_NEW)
        self.write(file, 0, b"hello")
        self.ok(file.set_attributes(size=MiB + 5))
        self.ok(file.close())
        self.assertEqual(self.stored("g"), b"hello" + bytes(MiB))

    def test_in_place(self) -> None:
        """
        A file changed in place: a first write far beyond its end is refused
        before it is copied; size growth and writes measure from its end.
        """
        file = self.open("old", settings=self.settings, write=True)
        self.store.reset_requests()
        self.refused(file, len(self.data) + MiB + 1, b"x")
        self.assertEqual(self.store.requests["open"], 0)
        self.fails(file.close(), vfs.WriteRefused)
        file = self.open("old", settings=self.settings, write=True)
        self.write(file, 0, b"X")
        self.assertRaises(vfs.WriteRefused, file.set_attributes, size=2 * MiB)
        self.ok(file.set_attributes(size=len(self.data) + 10))
        self.write(file, len(self.data) + 10 + MiB, b"end")
        self.ok(file.close())
        expected = b"X" + self.data[1:] + bytes(10 + MiB) + b"end"
        self.assertEqual(self.stored("old"), expected)


class SpoolBudgetTests(EditingTestCase):
    """The spool space all files of the gateway share (max_spool_size)."""

    def setUp(self) -> None:
        super().setUp()
        self.data = [pattern(300 * KiB, seed=i) for i in range(3)]
        for i, data in enumerate(self.data):
            self.put(f"f{i}", data)

    def test_edits_beyond_the_budget_fail(self) -> None:
        """
        Three files changed in place at once with room for two: the third
        is refused before it is copied; the other two are stored, the
        third stays as it was, and closing gives the space back.
        """
        settings = vfs.RandomAccessSettings(max_spool_size=700 * KiB)
        budget = settings.spool_budget
        assert budget is not None
        files = [self.open(f"f{i}", settings=settings, write=True) for i in range(3)]
        self.write(files[0], 0, b"A")
        self.write(files[1], 0, b"B")
        error = self.refused(files[2], 0, b"C")
        self.assertIn("gateway spool is full", error.message)
        self.assertEqual(budget.used, 600 * KiB)
        self.ok(files[0].close())
        self.ok(files[1].close())
        self.fails(files[2].close(), vfs.WriteRefused)
        self.assertEqual(budget.used, 0)
        self.assertEqual(self.stored("f0"), b"A" + self.data[0][1:])
        self.assertEqual(self.stored("f1"), b"B" + self.data[1][1:])
        self.assertEqual(self.stored("f2"), self.data[2])
        self.assertNothingLeft()
        again = self.open("f2", settings=settings, write=True)
        self.write(again, 0, b"C")
        self.ok(again.close())
        self.assertEqual(self.stored("f2"), b"C" + self.data[2][1:])

    def test_writes_out_of_order_share_it(self) -> None:
        """
        Writes beyond the reorder window spool against the same budget: a
        new file that needs more fails, loudly, and stores nothing.
        """
        settings = vfs.RandomAccessSettings(
            reorder_window=64 * KiB, max_spool_size=256 * KiB
        )
        file = self.open("new", settings=settings, **WRITE_NEW)
        self.write(file, 512 * KiB, pattern(200 * KiB))
        error = self.refused(file, 712 * KiB, pattern(100 * KiB))
        self.assertIn("gateway spool is full", error.message)
        self.fails(file.close(), vfs.WriteRefused)
        self.assertNotIn(H + "new", self.store.stored_keys())
        assert settings.spool_budget is not None
        self.assertEqual(settings.spool_budget.used, 0)
        self.assertNothingLeft()
