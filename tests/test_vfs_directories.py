"""
Unit tests of L{cosgw.vfs.directories}: the one-LIST probe of a name, the
directories a session knows, and what they save the file system's writes,
counted over a L{MemoryStore} (house rule 10).  The same counts end to end,
through real clients and the COS test server: tests/test_store_requests.py.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import Entry
from cosgw.testing import MemoryStore
from cosgw.vfs.directories import (
    DIRECTORY_TTL,
    PROBE_KEYS,
    KnownDirectories,
    probe,
)
from cosgw.vfs.knowledge import NAME_TTL
from tests.doortesting import DoorTestCase, H


class ProbeTests(SynchronousTestCase):
    """What is at a name, in one LIST."""

    def setUp(self) -> None:
        self.store = MemoryStore(Clock())

    def put(self, key: str, data: bytes = b"") -> None:
        self.successResultOf(self.store.put(key, data))

    def probe(self, key: str) -> Entry | None:
        self.store.reset_requests()
        return self.successResultOf(probe(self.store, key, key.rsplit("/", 1)[-1]))

    def assertRequests(self, **expected: int) -> None:
        self.assertEqual(dict(self.store.reset_requests()), expected)

    def test_file(self) -> None:
        """A file: its size and the store's time; siblings do not matter."""
        self.put("d/name", b"12345")
        self.put("d/name.txt", b"x")
        self.put("d/names", b"x")
        entry = self.probe("d/name")
        self.assertEqual(entry, Entry("name", False, 5, 0.0))
        self.assertRequests(list=1)

    def test_directory(self) -> None:
        """A directory by its marker or by its contents alone."""
        self.put("d/name.txt", b"x")
        self.put("d/name/")
        self.put("d/other/deep/f", b"x")
        self.assertEqual(self.probe("d/name"), Entry("name", True, 0, 0.0))
        self.assertRequests(list=1)
        self.assertEqual(self.probe("d/other"), Entry("other", True, 0, 0.0))
        self.assertRequests(list=1)

    def test_nothing(self) -> None:
        """Names that only start with the name are not it."""
        self.put("d/name.txt", b"x")
        self.put("d/name-dir/f", b"x")
        self.put("d/names/f", b"x")
        self.assertIsNone(self.probe("d/name"))
        self.assertRequests(list=1)

    def test_file_and_directory(self) -> None:
        """A key that is an object and a prefix is a file, as stat says."""
        self.put("d/name", b"abc")
        self.put("d/name/inside", b"x")
        self.assertEqual(self.probe("d/name"), Entry("name", False, 3, 0.0))
        self.assertRequests(list=1)

    def test_many_siblings_before_the_directory(self) -> None:
        """
        More siblings than a page holds sort between the name and its
        directory (C{name.N} < C{name/}): a second LIST asks for the
        directory itself, and only then.
        """
        for i in range(PROBE_KEYS + 5):
            self.put(f"d/name.{i:04d}", b"x")
        self.assertIsNone(self.probe("d/name"))
        self.assertRequests(list=2)
        self.put("d/name/f", b"x")
        self.assertEqual(self.probe("d/name"), Entry("name", True, 0, 0.0))
        self.assertRequests(list=2)
        self.put("d/name", b"abc")
        self.assertEqual(self.probe("d/name"), Entry("name", False, 3, 0.0))
        self.assertRequests(list=1)


class KnownDirectoriesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.known = KnownDirectories(self.clock, ttl=10.0, limit=3)

    def test_home_is_always_known(self) -> None:
        self.assertIn([], self.known)
        self.assertIn([], KnownDirectories(None))

    def test_seen_for_the_ttl(self) -> None:
        """Known for the TTL after it was last seen; seeing it again renews."""
        self.known.saw(["a"])
        self.clock.advance(10.0)
        self.assertIn(["a"], self.known)
        self.known.saw(["a"])
        self.clock.advance(9.0)
        self.assertIn(["a"], self.known)
        self.clock.advance(1.5)
        self.assertNotIn(["a"], self.known)
        self.assertEqual(len(self.known), 0)

    def test_bounded(self) -> None:
        """Past the limit, the directory seen longest ago goes first."""
        for name in ("a", "b", "c"):
            self.known.saw([name])
            self.clock.advance(1)
        self.known.saw(["a"])
        self.known.saw(["d"])
        self.assertEqual(len(self.known), 3)
        self.assertNotIn(["b"], self.known)
        for name in ("a", "c", "d"):
            self.assertIn([name], self.known)

    def test_forget_a_tree(self) -> None:
        """Forgetting a directory forgets what is below it, nothing else."""
        known = KnownDirectories(self.clock)
        for segments in (["a"], ["a", "b"], ["a", "b", "c"], ["ab"], ["x", "a"]):
            known.saw(segments)
        known.forget(["a"])
        self.assertEqual(
            [
                s
                for s in (["a"], ["a", "b"], ["a", "b", "c"], ["ab"], ["x", "a"])
                if s in known
            ],
            [["ab"], ["x", "a"]],
        )

    def test_without_a_clock(self) -> None:
        """Nothing is remembered without a clock to age it."""
        known = KnownDirectories(None)
        known.saw(["a"])
        self.assertNotIn(["a"], known)


class WritesTests(DoorTestCase):
    """What the session's knowledge saves uploads and MKD, and what it never skips."""

    def setUp(self) -> None:
        super().setUp()
        self.put("dir/")

    def upload(
        self, path: str, data: bytes = b"data", fs: vfs.ObjectFileSystem | None = None
    ) -> None:
        upload = self.ok((fs or self.fs).open_upload(vfs.resolve([], path)))
        upload.write(data)
        self.ok(upload.commit())

    def test_second_upload_in_a_directory(self) -> None:
        """
        The first upload into a directory checks it and the name at once;
        the name's LIST shows the names after it too, so the next uploads
        within a second need no check: the PUT alone, an overwrite of the
        session's own file as well.  Past the second, one LIST again.
        """
        self.upload("dir/a")
        self.assertRequests(list=2, put=1)
        self.upload("dir/b")
        self.assertRequests(put=1)
        self.upload("dir/b", b"again")
        self.assertRequests(put=1)
        self.assertEqual(self.stored("dir/b"), b"again")
        self.clock.advance(NAME_TTL + 0.1)
        self.upload("dir/c")
        self.assertRequests(list=1, put=1)

    def test_at_home(self) -> None:
        """The home always exists: one LIST and the PUT, from the first."""
        self.upload("new")
        self.assertRequests(list=1, put=1)

    def test_known_by_cwd_and_listing(self) -> None:
        """CWD and a listing of a directory make it known to the session."""
        self.put("other/f", b"x")
        self.ok(self.fs.require_directory(["dir"]))
        self.ok(self.fs.list_all(["other"]))
        self.store.reset_requests()
        self.upload("dir/a")
        self.upload("other/a")  # the listing showed no "a" in other/
        self.assertRequests(list=1, put=2)

    def test_known_for_a_while(self) -> None:
        """
        Known for L{DIRECTORY_TTL} after the session last saw it (each
        upload into it sees it again), then asked again.
        """
        self.upload("dir/a")
        self.clock.advance(DIRECTORY_TTL)
        self.store.reset_requests()
        self.upload("dir/b")
        self.assertRequests(list=1, put=1)
        self.clock.advance(DIRECTORY_TTL + 1)
        self.upload("dir/c")
        self.assertRequests(list=2, put=1)

    def test_per_session(self) -> None:
        """Another session of the same user knows nothing of this one's."""
        self.upload("dir/a")
        other = self.make_fs()
        self.store.reset_requests()
        self.upload("dir/b", fs=other)
        self.assertRequests(list=2, put=1)

    def test_own_rmdir_forgets(self) -> None:
        """
        After the session removed a directory, an upload into it fails as
        on a disk, rather than bringing the directory back.
        """
        self.ok(self.fs.mkdir(["dir", "sub"]))
        self.upload("dir/sub/a")
        self.ok(self.fs.remove(["dir", "sub", "a"]))
        self.ok(self.fs.rmdir(["dir", "sub"]))
        self.store.reset_requests()
        # RMD's last LIST showed dir/ empty: no request at all.
        self.fails(self.fs.open_upload(["dir", "sub", "b"]), vfs.NotFound)
        self.assertRequests()
        self.assertEqual(self.store.stored_keys(), [H + "dir/"])

    def test_own_rename_forgets(self) -> None:
        """A directory the session renamed is gone under its old name."""
        self.upload("dir/a")
        self.ok(self.fs.rename(["dir"], ["moved"]))
        self.fails(self.fs.open_upload(["dir", "b"]), vfs.NotFound)
        self.store.reset_requests()
        self.upload("moved/b")
        self.assertRequests(list=1, put=1)
        self.assertEqual(
            self.store.stored_keys(), [H + "moved/", H + "moved/a", H + "moved/b"]
        )

    def test_the_name_is_checked(self) -> None:
        """
        What another session of this gateway put under the name is seen at
        once, however recently this session saw the name free: no upload
        over a directory, no replacement without the overwrite permission.
        """
        no_overwrite = self.make_fs(ALL_PERMISSIONS - {"overwrite"})
        self.upload("dir/a", fs=no_overwrite)
        other = self.make_fs()
        self.upload("dir/b", b"someone else's", fs=other)
        self.ok(other.mkdir(["dir", "c"]))
        self.store.reset_requests()
        self.fails(no_overwrite.open_upload(["dir", "b"]), vfs.PermissionDenied)
        self.fails(no_overwrite.open_upload(["dir", "c"]), vfs.IsADirectory)
        self.assertRequests(list=2)
        self.assertEqual(self.stored("dir/b"), b"someone else's")

    def test_another_writer_after_the_window(self) -> None:
        """
        What a writer outside the gateway (another replica, the COS
        console) put under the name is seen once the session's knowledge
        is L{NAME_TTL} old: within it, the check is what the session saw
        (the documented window, as a check before a long transfer).
        """
        no_overwrite = self.make_fs(ALL_PERMISSIONS - {"overwrite"})
        self.upload("dir/a", fs=no_overwrite)
        self.put("dir/b", b"someone else's")
        self.clock.advance(NAME_TTL + 0.1)
        self.fails(no_overwrite.open_upload(["dir", "b"]), vfs.PermissionDenied)
        self.assertRequests(list=1)
        self.assertEqual(self.stored("dir/b"), b"someone else's")

    def test_removed_elsewhere_within_the_ttl(self) -> None:
        """
        The race the TTL allows, as documented: a directory another session
        removed after this one saw it comes back with this session's upload
        (the key implies it), as it would have with the check made just
        before a long transfer.
        """
        self.upload("dir/a")
        other = self.make_fs()
        self.ok(other.remove(["dir", "a"]))
        self.ok(other.rmdir(["dir"]))
        self.upload("dir/b")
        self.assertEqual(self.store.stored_keys(), [H + "dir/b"])

    def test_mkdir_makes_it_known(self) -> None:
        """MKD checks the parent and the name at once; then the new one is known."""
        self.ok(self.fs.mkdir(["dir", "sub"]))
        self.assertRequests(list=2, put=1)
        self.upload("dir/sub/a")
        self.assertRequests(list=1, put=1)

    def test_sftp_open_for_a_new_file(self) -> None:
        """
        SFTP's put (OPEN with CREAT|TRUNC, WRITEs, CLOSE) goes through the
        same checks: one LIST and the PUT in a known directory.
        """
        self.upload("dir/a")
        self.clock.advance(NAME_TTL + 0.1)
        self.store.reset_requests()
        file = self.ok(
            self.fs.open_file(["dir", "b"], write=True, create=True, truncate=True)
        )
        self.assertIsNone(file.write(0, b"hello"))
        self.ok(file.close())
        self.assertRequests(list=1, put=1)
        self.assertEqual(self.stored("dir/b"), b"hello")

    def test_resume_looked_up_only_when_asked(self) -> None:
        """
        An interrupted upload of the name that this gateway does not know
        (another gateway's) is looked up only by REST and APPE, not by an
        upload from byte 0.
        """
        stale = self.ok(self.store.create_multipart(H + "dir/n"))
        self.ok(self.store.upload_part(H + "dir/n", stale, 1, b"p" * 100))
        self.upload("dir/a")
        self.clock.advance(NAME_TTL + 0.1)
        self.store.reset_requests()
        self.upload("dir/n", b"fresh")
        self.assertRequests(list=1, put=1)
        upload = self.ok(self.fs.open_upload(["dir", "m"], append=True))
        self.assertRequests(list=1, list_multipart=1)
        upload.abort()
