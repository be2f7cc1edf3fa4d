"""
Unit tests of L{cosgw.vfs.mtimes}: the markers of the times clients set,
their keys, and what keeps them right (deletes, renames, listings page by
page, the migration of earlier versions' indexes, the reserved prefix), over
a L{cosgw.testing.MemoryStore}.  End to end with real clients:
tests/test_mtimes_clients.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import MAX_KEY_BYTES, MAX_LIST_KEYS, ObjectInfo
from cosgw.policy.accounts import Account, Accounts
from cosgw.transfer import TransferSettings
from cosgw.vfs import mtimes, timecache
from tests.test_vfs import START, FileSystemTestCase, H

ROOT = ".cosgw/mtimes/"


class NamingTests(FileSystemTestCase):
    """Marker keys: parsed back whatever the name, and sorted as the files."""

    def times(self) -> mtimes.Times:
        return mtimes.Times(self.store, ".cosgw/")

    def test_round_trip(self) -> None:
        times = self.times()
        info = ObjectInfo("x", 5, START + 0.7, "0123abcd")
        for key in [
            "f",
            "a b/c d.txt",
            "a  b",
            " lead and trail ",
            "x !y",
            "中文目录/报告 2.txt",
            "deep/" * 20 + "f",
            "~a~1~2",
        ]:
            marker = times.marker_key(key, 1234.5, info)
            folder, name = mtimes.split_key(key)
            self.assertTrue(marker.startswith(ROOT + folder), key)
            parsed = mtimes.parse(ROOT + folder, ObjectInfo(marker, 0, START))
            assert parsed is not None, key
            self.assertEqual(parsed.name, name, key)
            self.assertEqual(parsed.when, 1234.5, key)
            self.assertTrue(parsed.applies(info), key)
            self.assertEqual(marker.count("/"), key.count("/") + 2, key)

    def test_order_is_the_files_order(self) -> None:
        """Markers sort as their files, so a listing reads both side by side."""
        names = ["a", "a b", "a!", "a.txt", "a~", "ab", "b", "é", " x", "a  b"]
        info = ObjectInfo("x", 1, START)
        by_marker = sorted(names, key=lambda n: self.times().marker_key(n, 1, info))
        self.assertEqual(by_marker, sorted(names))

    def test_identity(self) -> None:
        """Size, store second and ETag; an ETag the key cannot hold is left out."""
        self.assertEqual(
            mtimes.identity(ObjectInfo("k", 3, 1000.9, "ABC-2")), "3.1000.abc-2"
        )
        self.assertEqual(mtimes.identity(ObjectInfo("k", 3, 1000.0, "a/b")), "3.1000.x")
        self.assertEqual(mtimes.identity(ObjectInfo("k", 3, 1000.0)), "3.1000.x")

    def test_not_markers(self) -> None:
        for rest in ["f", "f  ", "  1.x", "f  abc.x", "f  1", "d/f  1.x"]:
            info = ObjectInfo(ROOT + rest, 0, START)
            self.assertIsNone(mtimes.parse(ROOT, info), rest)

    def test_too_long(self) -> None:
        """
        A file whose marker would pass COS's 850 bytes keeps the store's
        time: MFMT is refused before any request, with a clear reason.
        """
        name = "n" * (MAX_KEY_BYTES - len(H) - 60)
        self.put(name, b"x")
        error = self.fails(self.fs.set_mtime([name], 1000.0), vfs.NotSupported)
        self.assertIn("850 bytes", error.message)
        self.assertRequests()
        self.assertEqual(self.store.stored_keys(ROOT), [])
        fits = "m" * (MAX_KEY_BYTES - len(ROOT + H + mtimes.SEP) - mtimes.MAX_STAMP)
        self.put(fits, b"y")
        self.ok(self.fs.set_mtime([fits], 1000.0))
        [marker] = self.store.stored_keys(ROOT)
        self.assertLessEqual(len(marker.encode()), MAX_KEY_BYTES)


class MarkerLifeTests(FileSystemTestCase):
    """Markers follow their files, and go with them."""

    def markers(self) -> list[str]:
        return self.store.stored_keys(ROOT)

    def test_delete_removes_markers(self) -> None:
        self.put("d/f", b"x")
        self.put("d/g", b"y")
        self.ok(self.fs.set_mtime(["d", "f"], 1000.0))
        self.ok(self.fs.set_mtime(["d", "g"], 2000.0))
        self.store.reset_requests()
        self.ok(self.fs.remove(["d", "f"]))
        self.assertEqual([m.split("  ")[0] for m in self.markers()], [ROOT + H + "d/g"])

    def test_file_rename_moves_the_time(self) -> None:
        self.put("a b", b"x")
        self.put("c", b"old")
        self.ok(self.fs.set_mtime(["a b"], 1000.0))
        self.ok(self.fs.set_mtime(["c"], 3000.0))
        self.ok(self.fs.rename(["a b"], ["c"]))  # onto a file with its own time
        [marker] = self.markers()
        self.assertTrue(marker.startswith(ROOT + H + "c  1000000000000."))
        fresh = self.make_fs()
        self.assertEqual(self.ok(fresh.stat(["c"])).mtime, 1000.0)
        self.assertEqual([e.mtime for e in self.ok(fresh.list_all([]))], [1000.0])

    def test_directory_rename_moves_times(self) -> None:
        self.put("d/a", b"1")
        self.put("d/s/b", b"2")
        self.put("d/gone", b"3")
        self.ok(self.fs.set_mtime(["d", "a"], 1000.0))
        self.ok(self.fs.set_mtime(["d", "s", "b"], 2000.0))
        self.ok(self.fs.set_mtime(["d", "gone"], 3000.0))
        self.store.delete(H + "d/gone")  # removed behind the gateway's back
        self.ok(self.fs.rename(["d"], ["e"]))
        self.assertEqual(
            [m.split("  ")[0] for m in self.markers()],
            [ROOT + H + "e/a", ROOT + H + "e/s/b"],
        )
        fresh = self.make_fs()
        self.assertEqual(self.ok(fresh.stat(["e", "s", "b"])).mtime, 2000.0)
        self.assertEqual(
            [(e.name, e.mtime) for e in self.ok(fresh.list_all(["e"]))],
            [("a", 1000.0), ("s", 0.0)],
        )

    def test_a_read_shows_the_time_a_client_set(self) -> None:
        """
        A file read (GET) before its directory's markers are known does not
        teach the session the store's time as the file's: the stat after
        it asks for the markers alone (no second HEAD) and shows the time a
        client set.  Once they are known, a read shows that time itself.
        """
        self.put("f", b"data")
        self.ok(self.fs.set_mtime(["f"], 1000.0))
        self.clock.advance(timecache.TIMES_TTL + 1)  # nothing known any more
        fresh = self.make_fs()
        self.store.reset_requests()
        reader = self.ok(fresh.open_reader(["f"]))
        reader.close()
        self.assertRequests(open=1)
        self.assertEqual(self.ok(fresh.stat(["f"])).mtime, 1000.0)
        self.assertRequests(list=1)
        self.assertEqual(self.ok(fresh.stat(["f"])).mtime, 1000.0)
        self.assertRequests()
        reader = self.ok(fresh.open_reader(["f"]))
        reader.close()
        self.assertEqual(reader.entry.mtime, 1000.0)

    def test_upload_makes_a_marker_stale(self) -> None:
        self.put("f", b"1")
        self.ok(self.fs.set_mtime(["f"], 1000.0))
        self.clock.advance(5)
        self.put("f", b"1")  # the same bytes, uploaded again
        fresh = self.make_fs()
        self.assertEqual(self.ok(fresh.stat(["f"])).mtime, START + 5)

    def test_listing_pages_with_names_that_share_prefixes(self) -> None:
        """
        Over several pages, each file gets its own time, whatever names
        sort between a name and its markers'.
        """
        names = [f"f{i:04d}" for i in range(MAX_LIST_KEYS + 200)]
        names += ["f0999 copy", "f0999.bak", "f1000 ", "g"]
        for name in names:
            self.put(name, b"x")
        for i, name in enumerate(sorted(names)):
            if i % 3 == 0:
                self.ok(self.fs.set_mtime([name], 1000.0 + i))
        expected = {
            name: 1000.0 + i if i % 3 == 0 else START
            for i, name in enumerate(sorted(names))
        }
        # What the sets taught the gateway ages; then it is asked again.
        for age, requests in ((timecache.TIMES_TTL + 0.1, 3), (0.5, 2)):
            self.clock.advance(age)
            self.store.reset_requests()
            listing = self.make_fs().listing([])
            seen = {}
            while (page := self.ok(listing.next_page())) is not None:
                seen.update((e.name, e.mtime) for e in page)
            self.assertEqual(seen, expected)
            # Two pages of files, one page of markers (under a thousand),
            # which the next listing within the second knows.
            self.assertEqual(dict(self.store.reset_requests()), {"list": requests})

    def test_two_gateways_lose_no_time(self) -> None:
        """
        Two file systems (two gateways) set times in one directory, every
        request held and answered out of order, so that the sets interleave:
        every time is kept, each file with one marker.
        """
        held = HeldStore(self.store)
        gateways = [
            Accounts(
                {"alice": Account("alice", held, H[:-1], ALL_PERMISSIONS)},
                TransferSettings(),
                clock=self.clock,
            ).filesystem("alice")
            for _ in range(2)
        ]
        for i in range(40):
            self.put(f"d/f{i}", b"x")
        pending = [
            gateways[i % 2].set_mtime(["d", f"f{i}"], 5000.0 + i) for i in range(40)
        ]
        held.release_all()
        self.ok(gatherResults(pending))
        entries = self.ok(self.make_fs().list_all(["d"]))
        self.assertEqual(
            {e.name: e.mtime for e in entries},
            {f"f{i}": 5000.0 + i for i in range(40)},
        )
        self.assertEqual(len(self.store.stored_keys(ROOT)), 40)


class HeldStore:
    """A store whose requests wait until released, then are answered out of order."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.description = store.description
        self.held: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def held(*args: Any, **kwargs: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.held.append((lambda: method(*args, **kwargs), (), d))
            return d

        return held

    def release_all(self, limit: int = 10_000) -> None:
        """Answer the held requests, alternately the oldest and the newest."""
        for n in range(limit):
            if not self.held:
                return
            call, _, d = self.held.pop(-1 if n % 2 else 0)
            call().chainDeferred(d)
        raise AssertionError("requests kept coming")


class MigrationTests(FileSystemTestCase):
    def test_index_becomes_markers(self) -> None:
        """
        An earlier version's index: its entries that still apply become
        markers, a file with a newer marker keeps it, the index goes; the
        next listing reads no index.
        """
        self.put("d/")
        self.put("d/kept", b"abc")
        self.put("d/stale", b"abc")
        self.put("d/newer", b"abc")
        index = {
            "kept": [1000.0, 3, START],
            "stale": [2000.0, 99, START],  # another size: rewritten since
            "newer": [3000.0, 3, START],
            "gone": [4000.0, 1, START],
        }
        self.ok(self.fs.set_mtime(["d", "newer"], 5000.0))
        self.put("d/" + vfs.MTIME_INDEX, json.dumps(index).encode())
        self.clock.advance(timecache.TIMES_TTL + 0.1)  # the set's markers aged
        fs = self.make_fs()
        entries = self.ok(fs.list_all(["d"]))
        self.assertEqual(
            [(e.name, e.mtime) for e in entries],
            [("kept", 1000.0), ("newer", 5000.0), ("stale", START)],
        )
        self.assertNotIn(H + "d/" + vfs.MTIME_INDEX, self.store.stored_keys())
        self.assertEqual(len(self.store.stored_keys(ROOT)), 2)
        # The index's GET and DELETE, its directory's and markers' LISTs,
        # the one marker's PUT, and the markers' LIST again.
        self.assertEqual(
            dict(self.store.reset_requests()),
            {"list": 5, "open": 1, "delete": 1, "put": 1},
        )
        # The next listing: its directory's LIST, and the markers it read
        # again after the migration are known for a second.
        self.ok(fs.list_all(["d"]))
        self.assertEqual(dict(self.store.reset_requests()), {"list": 1})
        self.clock.advance(timecache.TIMES_TTL + 0.1)
        self.ok(fs.list_all(["d"]))
        self.assertEqual(dict(self.store.reset_requests()), {"list": 2})


class ReservedTests(FileSystemTestCase):
    """A user whose home is the whole bucket never sees the reserved prefix."""

    def setUp(self) -> None:
        super().setUp()
        self.fs = Accounts(
            {"root": Account("root", self.store, "", ALL_PERMISSIONS)},
            TransferSettings(),
            clock=self.clock,
        ).filesystem("root")

    def test_hidden_and_refused(self) -> None:
        self.successResultOf(self.store.put("f", b"x"))
        self.ok(self.fs.set_mtime(["f"], 1000.0))
        self.assertEqual(len(self.store.stored_keys(ROOT)), 1)
        self.assertEqual(self.names(self.ok(self.fs.list_all([]))), ["f"])
        for attempt in [
            lambda: self.fs.stat([".cosgw"]),
            lambda: self.fs.require_directory([".cosgw", "mtimes"]),
            lambda: self.fs.list_all([".cosgw"]),
            lambda: self.fs.remove([".cosgw", "mtimes", "x"]),
            lambda: self.fs.mkdir([".cosgw"]),
            lambda: self.fs.rename(["f"], [".cosgw", "f"]),
            lambda: self.fs.open_upload([".cosgw", "f"]),
        ]:
            self.fails(attempt(), vfs.PermissionDenied)
        self.assertEqual(len(self.store.stored_keys(ROOT)), 1)

    def test_quota_ignores_markers(self) -> None:
        hidden = vfs.is_hidden_key
        self.assertTrue(hidden(ROOT + "f  1.1.1.x"))
        self.assertTrue(hidden("gw/meta/x", "gw/meta/"))
        self.assertFalse(hidden(".cosgwx/f"))
        self.assertTrue(hidden("a/" + vfs.MTIME_INDEX))
