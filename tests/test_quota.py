"""
Tests for L{cosgw.policy.quota}: usage computed over a real L{LocalStore} in a
temporary directory with a real thread pool, the reservation arithmetic
concurrent uploads rely on, and names counted once (uploads of one name,
parts kept for a resume) over a L{MemoryStore}.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import ListPage, StoreUnavailable
from cosgw.policy.quota import QuotaFull, Usage
from cosgw.storage.local import LocalStore
from cosgw.testing import MemoryStore
from cosgw.vfs import MTIME_INDEX

HOME = "users/alice/"


def K(name: str) -> str:
    """The key of C{name} in the home."""
    return HOME + name


def not_index(key: str) -> bool:
    """The vfs's ignore function: its hidden per-directory mtime index."""
    return key.rsplit("/", 1)[-1] == MTIME_INDEX


class CountingStore:
    """
    The real store, with its list() calls counted, and made to fail
    C{failures} times first.
    """

    def __init__(self, store: LocalStore, failures: int = 0) -> None:
        self._store = store
        self.failures = failures
        self.lists: list[tuple[str, str, str]] = []

    def list(
        self, prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ) -> Deferred[ListPage]:
        self.lists.append((prefix, delimiter, marker))
        if self.failures:
            self.failures -= 1
            d: Deferred[ListPage] = self._store.list(prefix, delimiter, marker)

            def fail(_: ListPage) -> ListPage:
                raise StoreUnavailable("the store is down", request_id="req-1")

            return d.addCallback(fail)
        return self._store.list(prefix, delimiter, marker, max_keys)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class StoreTestCase(unittest.TestCase):
    """A local store over a temporary directory, with a real pool."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.pool = ThreadPool(minthreads=0, maxthreads=4, name=type(self).__name__)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.root = Path(tempfile.mkdtemp(prefix="cosgw-quota-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        self.store = LocalStore(self.root, reactor, self.pool)
        self.store.prepare()

    def write(self, key: str, size: int) -> None:
        """Create an object directly on disk (fast, for test set-up)."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)

    def marker(self, key: str) -> None:
        (self.root / key).mkdir(parents=True, exist_ok=True)


class EnsureTests(StoreTestCase):
    """Computing usage by listing the home."""

    def setUp(self) -> None:
        super().setUp()
        self.expected_bytes = 0
        self.expected_files = 0
        # 1,250 files in 5 subdirectories and the home itself: two pages.
        for i in range(1250):
            sub = f"d{i % 6}/" if i % 6 else ""
            size = i % 7
            self.write(f"{HOME}{sub}f{i:04}", size)
            self.expected_bytes += size
            self.expected_files += 1
        # Nested files count too.
        self.write(f"{HOME}d1/deep/er/file", 1000)
        self.expected_bytes += 1000
        self.expected_files += 1
        # Not counted: markers (empty directories), the mtime indexes,
        # other users' files (one whose prefix starts like the home's).
        self.marker(f"{HOME}empty/")
        self.marker(f"{HOME}d1/deep/empty/")
        self.write(f"{HOME}{MTIME_INDEX}", 500)
        self.write(f"{HOME}d2/{MTIME_INDEX}", 500)
        self.write("users/alicex/other", 10_000)
        self.write("users/bob/other", 10_000)

    async def test_counts_exactly(self) -> None:
        """
        Files in subdirectories count; markers, ignored keys and keys
        outside the prefix do not.  The listing is followed page by page
        and logged.
        """
        store = CountingStore(self.store)
        usage = Usage(store, HOME, max_bytes=None, max_files=None, ignore=not_index)
        self.assertFalse(usage.ready)
        with capturedLogs() as events:
            await usage.ensure()
        self.assertTrue(usage.ready)
        self.assertEqual(
            (usage.bytes, usage.files), (self.expected_bytes, self.expected_files)
        )
        self.assertEqual(len(store.lists), 2)
        self.assertEqual(store.lists[0], (HOME, "", ""))
        self.assertEqual(store.lists[1][:2], (HOME, ""))
        self.assertNotEqual(store.lists[1][2], "")
        [event] = [e for e in events if "pages" in e]
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(
            (event["prefix"], event["bytes"], event["files"], event["pages"]),
            (HOME, self.expected_bytes, self.expected_files, 2),
        )

    async def test_ignore_default(self) -> None:
        """Without an ignore function every non-marker object counts."""
        usage = Usage(self.store, HOME, None, None)
        await usage.ensure()
        self.assertEqual(usage.files, self.expected_files + 2)
        self.assertEqual(usage.bytes, self.expected_bytes + 1000)

    async def test_root_prefix(self) -> None:
        """An empty prefix (the home is the bucket) counts everything."""
        usage = Usage(self.store, "", None, None, ignore=not_index)
        await usage.ensure()
        self.assertEqual(usage.files, self.expected_files + 2)
        self.assertEqual(usage.bytes, self.expected_bytes + 20_000)

    async def test_concurrent_list_once(self) -> None:
        """
        Concurrent callers wait for one computation; later calls return at
        once without listing.
        """
        store = CountingStore(self.store)
        usage = Usage(store, HOME, None, None, ignore=not_index)
        first = ensureDeferred(usage.ensure())
        second = ensureDeferred(usage.ensure())
        self.assertNoResult(first)
        await first
        await second
        self.assertEqual(len(store.lists), 2)
        later = ensureDeferred(usage.ensure())
        self.assertIsNone(self.successResultOf(later))
        self.assertEqual(len(store.lists), 2)
        self.assertEqual(usage.files, self.expected_files)

    async def test_failure_then_retry(self) -> None:
        """
        A failed computation fails every waiting caller and is retried by
        the next call.
        """
        store = CountingStore(self.store, failures=1)
        usage = Usage(store, HOME, None, None, ignore=not_index)
        first = ensureDeferred(usage.ensure())
        second = ensureDeferred(usage.ensure())
        for d in (first, second):
            with self.assertRaises(StoreUnavailable):
                await d
        self.assertFalse(usage.ready)
        self.assertRaises(RuntimeError, usage.reserve, K("new"))
        await usage.ensure()
        self.assertEqual(len(store.lists), 3)
        self.assertEqual(
            (usage.bytes, usage.files), (self.expected_bytes, self.expected_files)
        )

    async def test_cancelled_waiter(self) -> None:
        """A caller that gives up does not disturb the others."""
        usage = Usage(self.store, HOME, None, None, ignore=not_index)
        first = ensureDeferred(usage.ensure())
        second = ensureDeferred(usage.ensure())
        first.cancel()
        self.failureResultOf(first, CancelledError)
        await second
        self.assertEqual(usage.files, self.expected_files)


class ReservationTests(StoreTestCase):
    """The arithmetic of uploads in progress, over a small real home."""

    async def usage(
        self, max_bytes: int | None = 1000, max_files: int | None = None
    ) -> Usage:
        """A home of two files, 300 bytes in all."""
        self.write(f"{HOME}a", 100)
        self.write(f"{HOME}sub/b", 200)
        usage = Usage(self.store, HOME, max_bytes, max_files, ignore=not_index)
        await usage.ensure()
        self.assertEqual((usage.bytes, usage.files), (300, 2))
        return usage

    async def test_limited(self) -> None:
        self.assertFalse((await self.usage(None, None)).limited)
        self.assertTrue(Usage(self.store, HOME, 1, None).limited)
        self.assertTrue(Usage(self.store, HOME, None, 1).limited)

    async def test_unlimited(self) -> None:
        """Without limits every upload fits."""
        usage = await self.usage(None, None)
        reservation = usage.reserve(K("c"))
        self.assertTrue(reservation.grow(10**15))
        reservation.commit(10**15)
        self.assertEqual((usage.bytes, usage.files), (10**15 + 300, 3))
        self.assertIsNone(usage.room)

    async def test_grow_and_commit(self) -> None:
        """An upload claims as it grows and is counted when committed."""
        usage = await self.usage()
        reservation = usage.reserve(K("c"))
        self.assertTrue(reservation.grow(400))
        self.assertEqual((usage.reserved, usage.room), (400, 300))
        self.assertTrue(reservation.grow(700))
        self.assertFalse(reservation.grow(701))
        self.assertEqual((usage.reserved, usage.room), (700, 0))
        reservation.commit(700)
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (1000, 3, 0))
        self.assertRaises(QuotaFull, usage.reserve, K("full"))

    async def test_release(self) -> None:
        """
        A failed upload changes nothing; release is idempotent; commit after
        it is an error.
        """
        usage = await self.usage()
        reservation = usage.reserve(K("c"))
        reservation.grow(500)
        reservation.release()
        reservation.release()
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (300, 2, 0))
        self.assertRaises(RuntimeError, reservation.commit, 500)
        self.assertRaises(RuntimeError, reservation.grow, 1)

    async def test_commit_once(self) -> None:
        """A second commit is an error; release after commit does nothing."""
        usage = await self.usage()
        reservation = usage.reserve(K("c"))
        reservation.grow(10)
        reservation.commit(10)
        reservation.release()
        self.assertRaises(RuntimeError, reservation.commit, 10)
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (310, 3, 0))

    async def test_replacing(self) -> None:
        """
        Overwriting needs room only for the difference, and counts only the
        difference.
        """
        usage = await self.usage(max_bytes=400)
        # Overwrite the 200-byte file: 100 bytes of room + 200 replaced.
        reservation = usage.reserve(K("sub/b"), replacing=200, new_file=False)
        self.assertTrue(reservation.grow(150))
        self.assertEqual(usage.reserved, 0)
        self.assertTrue(reservation.grow(300))
        self.assertEqual(usage.reserved, 100)
        self.assertFalse(reservation.grow(301))
        reservation.commit(300)
        self.assertEqual((usage.bytes, usage.files), (400, 2))

    async def test_replacing_when_full(self) -> None:
        """
        A full home may still overwrite a file with one no larger, and the
        smaller replacement frees room once committed.
        """
        usage = await self.usage(max_bytes=300)
        self.assertRaises(QuotaFull, usage.reserve, K("full"))
        self.assertRaises(QuotaFull, usage.reserve, K("a"), replacing=0, new_file=False)
        reservation = usage.reserve(K("sub/b"), replacing=200, new_file=False)
        self.assertTrue(reservation.grow(200))
        self.assertFalse(reservation.grow(201))
        reservation.commit(50)
        self.assertEqual((usage.bytes, usage.files, usage.room), (150, 2, 150))

    async def test_shrinking_frees_nothing_before_commit(self) -> None:
        """
        A replacement smaller than the original lends no room to other
        uploads while it runs: the original is still stored.
        """
        usage = await self.usage(max_bytes=400)
        replacement = usage.reserve(K("sub/b"), replacing=200, new_file=False)
        replacement.grow(10)
        other = usage.reserve(K("c"))
        self.assertTrue(other.grow(100))
        self.assertFalse(other.grow(101))

    async def test_concurrent_share_room(self) -> None:
        """Two uploads of one user share the room left."""
        usage = await self.usage()
        first, second = usage.reserve(K("c")), usage.reserve(K("d"))
        self.assertTrue(first.grow(400))
        self.assertTrue(second.grow(300))
        self.assertFalse(first.grow(401))
        self.assertFalse(second.grow(301))
        self.assertEqual(usage.room, 0)
        self.assertRaises(QuotaFull, usage.reserve, K("full"))
        first.release()
        self.assertTrue(second.grow(700))
        second.commit(700)
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (1000, 3, 0))

    async def test_max_files(self) -> None:
        """
        No new file past the limit, counting new files being uploaded;
        overwriting is still allowed.
        """
        usage = await self.usage(max_bytes=None, max_files=4)
        third = usage.reserve(K("c"))
        fourth = usage.reserve(K("d"))
        with self.assertRaises(QuotaFull) as caught:
            usage.reserve(K("e"))
        self.assertIn("4 files", caught.exception.reason)
        overwrite = usage.reserve(K("a"), replacing=100, new_file=False)
        overwrite.commit(50)
        fourth.release()
        third.commit(1)
        fifth = usage.reserve(K("f"))
        fifth.commit(1)
        self.assertEqual((usage.bytes, usage.files), (252, 4))
        self.assertRaises(QuotaFull, usage.reserve, K("full"))
        usage.removed(1)
        usage.reserve(K("g")).release()

    async def test_added_and_removed(self) -> None:
        """Changes outside uploads; neither count goes below zero."""
        usage = await self.usage()
        usage.added(50)
        usage.added(25, new_file=False)
        self.assertEqual((usage.bytes, usage.files), (375, 3))
        usage.removed(375)
        usage.removed(1000)
        usage.removed(0)
        usage.removed(0)
        self.assertEqual((usage.bytes, usage.files), (0, 0))

    async def test_changes_before_ensure(self) -> None:
        """Before the computation there is nothing to adjust."""
        usage = Usage(self.store, HOME, 1000, None)
        usage.added(10)
        usage.removed(10)
        self.assertRaises(RuntimeError, usage.reserve, K("new"))
        self.write(f"{HOME}a", 100)
        await usage.ensure()
        self.assertEqual((usage.bytes, usage.files), (100, 1))

    def test_quota_full_reason(self) -> None:
        error = QuotaFull("disk quota reached (10 bytes)")
        self.assertEqual(error.reason, "disk quota reached (10 bytes)")
        self.assertEqual(str(error), error.reason)


class NameTests(SynchronousTestCase):
    """
    Names, not uploads, are files: concurrent uploads of one name, kept
    uploads, and what they replace when they finish (over a memory store,
    so the requests of the computation are counted).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore(self.clock)
        self.successResultOf(self.store.put(K("a"), b"x" * 100))
        self.successResultOf(self.store.put(K("sub/b"), b"x" * 200))

    def kept(self, key: str, *sizes: int) -> str:
        """An unfinished upload of C{key} with parts of C{sizes}."""
        upload_id = self.successResultOf(self.store.create_multipart(key))
        for number, size in enumerate(sizes, 1):
            self.successResultOf(
                self.store.upload_part(key, upload_id, number, b"p" * size)
            )
        return upload_id

    def usage(
        self, max_bytes: int | None = 1000, max_files: int | None = None
    ) -> Usage:
        usage = Usage(self.store, HOME, max_bytes, max_files, ignore=not_index)
        self.store.reset_requests()
        self.successResultOf(Deferred.fromCoroutine(usage.ensure()))
        return usage

    def test_concurrent_uploads_of_one_new_name_are_one_file(self) -> None:
        """
        The second upload of a name being uploaded needs no new file; the
        first to finish adds the file, the second replaces it.
        """
        usage = self.usage(max_files=3)
        first = usage.reserve(K("c"))
        second = usage.reserve(K("c"))
        self.assertEqual(usage.pending_files, 1)
        self.assertRaises(QuotaFull, usage.reserve, K("d"))
        self.assertTrue(first.grow(100))
        self.assertTrue(second.grow(150))
        self.assertEqual(usage.reserved, 250)
        first.commit(100)
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (400, 3, 50))
        second.commit(150)
        self.assertEqual((usage.bytes, usage.files, usage.reserved), (450, 3, 0))
        self.assertEqual(usage.pending_files, 0)
        self.assertRaises(QuotaFull, usage.reserve, K("d"))

    def test_concurrent_overwrites_replace_each_other(self) -> None:
        """Two replacements of one file: the second replaces the first's."""
        usage = self.usage(max_bytes=500)
        first = usage.reserve(K("a"), replacing=100, new_file=False)
        second = usage.reserve(K("a"), replacing=100, new_file=False)
        self.assertTrue(first.grow(300))
        first.commit(300)
        self.assertEqual((usage.bytes, usage.files), (500, 2))
        self.assertTrue(second.grow(300))
        self.assertFalse(second.grow(301))
        second.commit(50)
        self.assertEqual((usage.bytes, usage.files, usage.room), (250, 2, 250))

    def test_removed_and_moved_names(self) -> None:
        """
        An upload whose file is deleted (or renamed away) adds a file; one
        whose name a rename fills replaces what was moved there.
        """
        usage = self.usage()
        overwrite = usage.reserve(K("a"), replacing=100, new_file=False)
        usage.removed(100, K("a"))
        self.assertEqual(usage.pending_files, 1)
        overwrite.grow(10)
        overwrite.commit(10)
        self.assertEqual((usage.bytes, usage.files), (210, 2))
        fresh = usage.reserve(K("c"))
        usage.moved(K("sub/b"), K("c"), 200)
        fresh.grow(250)
        self.assertEqual(usage.reserved, 50)
        fresh.commit(250)
        self.assertEqual((usage.bytes, usage.files), (260, 2))

    def test_kept_parts_count(self) -> None:
        """
        Kept parts are stored bytes and their name a file until the kept
        upload ends.
        """
        usage = self.usage(max_bytes=1000, max_files=3)
        upload = usage.reserve(K("c"))
        self.assertTrue(upload.grow(650))
        upload.keep("upload-1", 600)
        self.assertEqual((usage.kept, usage.reserved, usage.room), (600, 0, 100))
        self.assertEqual(usage.pending_files, 1)
        self.assertEqual(usage.kept_uploads(K("c")), ["upload-1"])
        self.assertRaises(QuotaFull, usage.reserve, K("d"))  # 2 files + c
        other = usage.reserve(K("c"))  # the same name: no new file
        self.assertFalse(other.grow(101))
        other.release()
        self.assertRaises(RuntimeError, upload.grow, 1)
        usage.forget("upload-1")
        usage.forget("unknown")
        self.assertEqual((usage.kept, usage.room, usage.pending_files), (0, 700, 0))

    def test_resume_takes_the_claim_over(self) -> None:
        """
        Resuming moves the kept parts' claim into the upload, which already
        holds them; the name is still one file.
        """
        usage = self.usage(max_bytes=1000, max_files=3)
        first = usage.reserve(K("c"))
        first.grow(600)
        first.keep("upload-1", 600)
        resumed = usage.reserve(K("c"), resuming="upload-1")
        self.assertEqual((usage.kept, usage.reserved, usage.room), (0, 600, 100))
        self.assertTrue(resumed.grow(600))
        self.assertTrue(resumed.grow(700))
        self.assertFalse(resumed.grow(701))
        resumed.commit(700)
        self.assertEqual((usage.bytes, usage.files, usage.room), (1000, 3, 0))
        self.assertEqual(usage.kept_uploads(K("c")), [])

    def test_commit_of_a_name_ends_its_file_claim(self) -> None:
        """
        A kept upload of a name that becomes visible no longer counts as a
        file (its bytes do until it is discarded).
        """
        usage = self.usage(max_files=4)
        usage.reserve(K("c")).keep("old", 10)
        fresh = usage.reserve(K("c"))
        fresh.grow(5)
        fresh.commit(5)
        self.assertEqual((usage.files, usage.pending_files, usage.kept), (3, 0, 10))
        usage.reserve(K("d")).release()  # the fourth file may come

    def test_computation_counts_kept_uploads(self) -> None:
        """
        One listing of the home's unfinished uploads and one of each one's
        parts: every upload's bytes count; a name without a file counts once
        as a file; other homes and directory markers do not count.
        """
        new = self.kept(K("new"), 300, 200)
        again = self.kept(K("new"), 50)
        stale = self.kept(K("a"), 70)
        self.kept("users/bob/x", 999)
        self.kept(K("dir/"), 0)
        usage = self.usage(max_files=4)
        self.assertEqual(
            dict(self.store.reset_requests()),
            {"list": 1, "list_multipart": 1, "list_parts": 3},
        )
        self.assertEqual((usage.bytes, usage.files), (300, 2))
        self.assertEqual((usage.kept, usage.pending_files), (620, 1))
        self.assertEqual(usage.kept_uploads(K("new")), sorted([new, again]))
        self.assertEqual(usage.kept_uploads(K("a")), [stale])
        self.assertEqual(usage.room, 1000 - 300 - 620)
        usage.reserve(K("d")).release()
        usage.reserve(K("new")).release()
        usage.forget(new)
        self.assertEqual(usage.kept, 120)

    def test_forgotten_during_the_computation(self) -> None:
        """An upload swept while usage is computed is not counted."""
        upload_id = self.kept(K("new"), 300)
        usage = Usage(self.store, HOME, 1000, None)
        usage.forget(upload_id)
        self.successResultOf(Deferred.fromCoroutine(usage.ensure()))
        self.assertEqual(usage.kept, 0)
