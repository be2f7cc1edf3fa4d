"""
Resume semantics that never lose data (cosgw.vfs.resume), through the
file system's door objects over a L{MemoryStore}: an upload is kept for a
resume only for a name with no visible object; while a file is visible,
SIZE, stat, reads and APPE see the file; a kept upload is discarded once it
can no longer be resumed; kept parts count against the quota, their name
once.  The same corners through real sockets and real clients are in
tests/test_ftp_resume.py.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred

from cosgw import vfs
from cosgw.policy.quota import Usage
from cosgw.storage.sweeper import UploadSweeper
from tests.doortesting import DoorTestCase, H, KiB, MiB
from tests.transfertesting import FakeProducer

OLD = bytes(range(100))


def blob(size: int, seed: int = 0) -> bytes:
    """C{size} bytes that differ from part to part (fast to make)."""
    block = bytes((i * 7 + seed) % 256 for i in range(4096))
    return (block * (size // 4096 + 1))[:size]


class ResumeTestCase(DoorTestCase):
    def open(
        self,
        path: str,
        fs: vfs.ObjectFileSystem | None = None,
        offset: int = 0,
        append: bool = False,
    ) -> vfs.Upload:
        """Open an upload and register a fake data connection with it."""
        fs = fs or self.fs
        upload = self.ok(fs.open_upload([path], offset=offset, append=append))
        assert isinstance(upload, vfs.Upload)
        upload.registerProducer(FakeProducer(), True)
        return upload

    def feed(self, upload: vfs.Upload, data: bytes) -> None:
        for at in range(0, len(data), 256 * KiB):
            upload.write(data[at : at + 256 * KiB])

    def interrupted(self, path: str, data: bytes) -> int:
        """An upload of C{path} whose client went away after C{data}: bytes kept."""
        upload = self.open(path)
        self.feed(upload, data)
        return self.ok(upload.interrupt())

    def read(self, path: str) -> bytes:
        reader = self.ok(self.fs.open_reader([path]))
        try:
            return self.ok(reader.read(0, 1 << 30))
        finally:
            reader.close()


class VisibleFileTests(ResumeTestCase):
    """A visible file is what every command sees (issue 12, item 11)."""

    def test_interrupted_overwrite_keeps_the_old_file(self) -> None:
        """
        The exact case: a 100-byte file, an interrupted 3 MiB STOR of the
        same name.  Nothing is kept (the multipart upload is aborted, no
        HEAD needed), SIZE, stat and reads agree on the old 100 bytes, and
        APPE of 4 bytes makes the old file plus them.
        """
        self.put("f.bin", OLD)
        self.assertEqual(self.interrupted("f.bin", blob(3 * MiB + 5)), 0)
        self.assertNothingLeft()
        self.assertEqual(self.stored("f.bin"), OLD)
        self.store.reset_requests()
        self.assertEqual(self.ok(self.fs.restart_size(["f.bin"])), 100)
        self.assertRequests()  # the upload's LIST showed the file a moment ago
        self.assertEqual(self.ok(self.fs.stat(["f.bin"])).size, 100)
        self.assertEqual(self.read("f.bin"), OLD)
        upload = self.open("f.bin", append=True)
        self.assertEqual(upload.base, 100)
        upload.write(b"new!")
        self.assertEqual(self.ok(upload.commit()).size, 104)
        self.assertEqual(self.stored("f.bin"), OLD + b"new!")
        self.assertNothingLeft()

    def test_upload_left_in_the_store_is_never_appended_to(self) -> None:
        """
        An unfinished upload of a visible file's name (another writer's, or
        one a gateway kept before this rule) changes nothing: SIZE is the
        file's, APPE appends to the file, without looking uploads up.
        """
        self.put("f.bin", OLD)
        self.clock.advance(10)
        stale = self.ok(self.store.create_multipart(H + "f.bin"))
        self.ok(self.store.upload_part(H + "f.bin", stale, 1, blob(2 * MiB)))
        self.store.reset_requests()
        self.assertEqual(self.ok(self.fs.restart_size(["f.bin"])), 100)
        upload = self.open("f.bin", append=True)
        self.assertRequests(list=1, open=1)  # SIZE's LIST serves APPE's check
        upload.write(b"new!")
        self.ok(upload.commit())
        self.assertEqual(self.stored("f.bin"), OLD + b"new!")

    def test_restart_inside_the_file_copies_its_prefix(self) -> None:
        """REST n + STOR on a visible file keeps the file's first n bytes."""
        self.put("f.bin", OLD)
        upload = self.open("f.bin", offset=60)
        upload.write(b"tail")
        self.ok(upload.commit())
        self.assertEqual(self.stored("f.bin"), OLD[:60] + b"tail")

    def test_interrupt_after_the_name_was_stored_meanwhile(self) -> None:
        """
        An upload of a new name interrupted after another upload of that
        name finished keeps nothing: the name has a visible object now.
        """
        slow = self.open("n.bin")
        self.feed(slow, blob(2 * MiB + 1))
        fast = self.open("n.bin")
        fast.write(b"fast")
        self.ok(fast.commit())
        self.store.reset_requests()
        self.assertEqual(self.ok(slow.interrupt()), 0)
        self.assertEqual(self.store.reset_requests()["head"], 1)
        self.assertNothingLeft()
        self.assertEqual(self.stored("n.bin"), b"fast")


class NewFileTests(ResumeTestCase):
    """An interrupted upload of a new name is kept and can be resumed."""

    data = blob(2 * MiB + 3000, seed=3)

    def test_size_then_rest_stor(self) -> None:
        """
        FileZilla, lftp: SIZE answers the kept bytes, the name is no file
        (stat, reads), REST n + STOR continues the same multipart upload.
        """
        self.assertEqual(self.interrupted("n.bin", self.data), 2 * MiB)
        self.fails(self.fs.stat(["n.bin"]), vfs.NotFound)
        self.fails(self.fs.open_reader(["n.bin"]), vfs.NotFound)
        self.assertEqual(self.ok(self.fs.restart_size(["n.bin"])), 2 * MiB)
        [kept] = self.store.stored_uploads()
        self.store.reset_requests()
        upload = self.open("n.bin", offset=2 * MiB)
        # No LIST: SIZE's showed the name free a moment ago.
        self.assertRequests(list_multipart=1, list_parts=1)
        upload.write(self.data[2 * MiB :])
        self.ok(upload.commit())
        self.assertRequests(upload_part=1, complete_multipart=1)
        self.assertEqual(self.stored("n.bin"), self.data)
        self.assertNothingLeft()

    def test_size_then_appe(self) -> None:
        """curl -C -: SIZE, then APPE of the rest."""
        self.interrupted("n.bin", self.data)
        size = self.ok(self.fs.restart_size(["n.bin"]))
        upload = self.open("n.bin", append=True)
        self.assertEqual(upload.base, size)
        upload.write(self.data[size:])
        self.ok(upload.commit())
        self.assertEqual(self.stored("n.bin"), self.data)
        self.assertNothingLeft()

    def test_upload_from_zero_discards_the_kept_upload(self) -> None:
        """
        A new upload of the name from byte 0 (as STOR truncates a file on
        disk) aborts the kept upload first; nothing is left behind.
        """
        self.interrupted("n.bin", self.data)
        [kept] = self.store.stored_uploads()
        self.store.reset_requests()
        upload = self.open("n.bin")
        # No LIST: the interrupted upload's showed the name free a moment ago.
        self.assertRequests(abort_multipart=1)
        self.assertEqual(self.store.stored_uploads(), [])
        upload.write(b"short")
        self.ok(upload.commit())
        self.assertEqual(self.stored("n.bin"), b"short")
        self.assertNothingLeft()

    def test_a_name_keeps_one_upload(self) -> None:
        """A second interrupted upload of the name replaces the first."""
        first = self.open("n.bin")
        second = self.open("n.bin")
        self.feed(first, self.data)
        self.feed(second, self.data[: MiB + 5])
        self.assertEqual(self.ok(first.interrupt()), 2 * MiB)
        self.assertEqual(self.ok(second.interrupt()), MiB)
        self.assertEqual(len(self.store.stored_uploads()), 1)
        self.assertEqual(self.ok(self.fs.restart_size(["n.bin"])), MiB)

    def test_finished_upload_discards_the_kept_one(self) -> None:
        """
        An upload kept while another upload of the name ran is discarded
        when that one is stored: the name is visible, it can never resume.
        """
        running = self.open("n.bin")
        self.interrupted("n.bin", self.data)
        self.assertEqual(len(self.store.stored_uploads()), 1)
        running.write(b"done")
        self.ok(running.commit())
        self.assertEqual(self.stored("n.bin"), b"done")
        self.assertNothingLeft()

    def test_rename_onto_the_name_discards_the_kept_upload(self) -> None:
        self.interrupted("n.bin", self.data)
        self.put("other", b"other")
        self.ok(self.fs.rename(["other"], ["n.bin"]))
        self.assertEqual(self.ok(self.fs.restart_size(["n.bin"])), 5)
        self.assertNothingLeft()


class QuotaTests(ResumeTestCase):
    """Kept parts count against the quota; a name is one file."""

    def setUp(self) -> None:
        super().setUp()
        self.put("old", b"x" * MiB)
        self.usage = Usage(self.store, H, 4 * MiB, 3)
        self.fs = self.make_fs(usage=self.usage)

    def test_kept_parts_count_until_resumed(self) -> None:
        data = blob(2 * MiB + 10)
        self.assertEqual(self.interrupted("n.bin", data), 2 * MiB)
        self.assertEqual((self.usage.kept, self.usage.room), (2 * MiB, MiB))
        self.assertEqual(self.usage.pending_files, 1)
        # Another upload is stopped at the room the kept parts leave.
        other = self.open("o.bin")
        self.feed(other, blob(MiB + 1))
        self.fails(other.commit(), vfs.QuotaExceeded)
        # The resume takes the claim over; the stored file is counted once.
        upload = self.open("n.bin", offset=2 * MiB)
        self.assertEqual((self.usage.kept, self.usage.reserved), (0, 2 * MiB))
        upload.write(data[2 * MiB :])
        self.ok(upload.commit())
        self.assertEqual(self.stored("n.bin"), data)
        self.assertEqual((self.usage.bytes, self.usage.files), (3 * MiB + 10, 2))
        self.assertEqual((self.usage.kept, self.usage.reserved), (0, 0))
        self.assertNothingLeft()

    def test_claims_end_with_the_kept_upload(self) -> None:
        """Discarded by a new upload, by an ABOR of its resume, by the sweeper."""
        data = blob(2 * MiB + 10)
        self.interrupted("n.bin", data)
        self.ok(self.open("n.bin").abort())
        self.assertEqual((self.usage.kept, self.usage.pending_files), (0, 0))
        self.interrupted("n.bin", data)
        resumed = self.open("n.bin", append=True)
        self.ok(resumed.abort())
        self.assertEqual((self.usage.kept, self.usage.reserved), (0, 0))
        self.assertNothingLeft()
        self.interrupted("n.bin", data)
        self.assertEqual(self.usage.kept, 2 * MiB)
        sweeper = UploadSweeper(
            {"s": self.store},
            3600,
            self.clock,
            active=self.registry,
            swept=self.registry.gone,
        )
        self.clock.advance(3601)
        self.assertEqual(self.ok(ensureDeferred(sweeper.sweep())), 1)
        self.assertEqual((self.usage.kept, self.usage.pending_files), (0, 0))
        self.assertEqual(self.usage.room, 3 * MiB)

    def test_kept_uploads_in_the_store_count_from_the_start(self) -> None:
        """
        Usage computed after a restart counts the kept uploads it finds, and
        a resume of one takes its claim over.
        """
        data = blob(2 * MiB + 10)
        self.interrupted("n.bin", data)
        usage = Usage(self.store, H, 4 * MiB, 3)
        fs = self.make_fs(usage=usage)
        self.assertEqual(self.ok(fs.restart_size(["n.bin"])), 2 * MiB)
        upload = self.open("n.bin", fs=fs, offset=2 * MiB)
        self.assertEqual((usage.bytes, usage.kept, usage.reserved), (MiB, 0, 2 * MiB))
        upload.write(data[2 * MiB :])
        self.ok(upload.commit())
        self.assertEqual((usage.bytes, usage.files), (3 * MiB + 10, 2))

    def test_concurrent_uploads_of_one_new_name(self) -> None:
        """
        With room for one more file, two sessions may upload the same new
        name at once; once both finish it is one file, and a third name is
        refused.
        """
        self.put("old2", b"y")
        usage = Usage(self.store, H, None, 3)
        first_fs, second_fs = self.make_fs(usage=usage), self.make_fs(usage=usage)
        first = self.open("same", fs=first_fs)
        second = self.open("same", fs=second_fs)
        first.write(b"first")
        second.write(b"second")
        self.ok(first.commit())
        self.ok(second.commit())
        self.assertEqual(self.stored("same"), b"second")
        self.assertEqual((usage.files, usage.bytes), (3, MiB + 1 + 6))
        self.fails(first_fs.open_upload(["third"]), vfs.QuotaExceeded)
        self.ok(first_fs.remove(["same"]))
        self.assertEqual(usage.files, 2)
        self.open("third", fs=first_fs).abort()
