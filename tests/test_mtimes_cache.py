"""
Unit tests of L{cosgw.vfs.timecache}: what the gateway knows of each
directory's markers of times, shared by the sessions of one store, over a
L{cosgw.testing.MemoryStore} on a L{MemoryReactorClock}: the window, the
changes of this process seen at once, an answer crossing a change not
kept, the subdirectories a parent's page shows without markers, a first
page cut short, the deletes that always ask, and the bounds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import MAX_LIST_KEYS, ObjectInfo
from cosgw.policy.accounts import Account, Accounts
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings
from cosgw.vfs import mtimes, timecache
from tests.test_vfs import START, FileSystemTestCase, H

ROOT = ".cosgw/mtimes/"
TTL = timecache.TIMES_TTL


class View:
    """
    Another gateway's door to the same objects: a store of its own (so a
    cache of its own), whose answers to the LISTs of one prefix may be held
    back (read at once, delivered on L{release}).
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.description = store.description
        self.hold: str | None = None
        self.held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def list(self, prefix: str, *args: Any) -> Deferred[Any]:
        answer = self.store.list(prefix, *args)
        if prefix != self.hold:
            return answer
        d: Deferred[Any] = Deferred()
        self.held.append((answer, d))
        return d

    def release(self) -> None:
        self.hold = None
        held, self.held = self.held, []
        for answer, d in held:
            answer.chainDeferred(d)


class CacheTestCase(FileSystemTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(START)
        self.store = MemoryStore(self.clock)
        self.fs = self.make_fs()

    def gateway(self, store: Any) -> Any:
        """A session of alice over C{store} (another gateway's, a View)."""
        return Accounts(
            {"alice": Account("alice", store, H[:-1], ALL_PERMISSIONS)},
            TransferSettings(),
            clock=self.clock,
        ).filesystem("alice")

    def markers(self) -> list[str]:
        return self.store.stored_keys(ROOT)


class WindowTests(CacheTestCase):
    def test_second_stat_in_the_window(self) -> None:
        """
        A stat of a file: its HEAD and the LIST of its directory's markers;
        a stat of another file there, by another session, within the
        window: the HEAD alone; after it, the LIST again.
        """
        for name in ("a", "b", "c"):
            self.put(f"d/{name}", b"x")
        self.assertEqual(self.ok(self.fs.stat(["d", "a"])).mtime, START)
        self.assertRequests(head=1, list=1)
        self.clock.advance(TTL)
        self.assertEqual(self.ok(self.make_fs().stat(["d", "b"])).mtime, START)
        self.assertRequests(head=1)
        self.clock.advance(0.01)
        self.ok(self.make_fs().stat(["d", "c"]))
        self.assertRequests(head=1, list=1)

    def test_without_a_clock_nothing_is_kept(self) -> None:
        store = MemoryStore()
        store.put(H + "d/a", b"x")
        store.put(H + "d/b", b"x")
        fs = Accounts(
            {"alice": Account("alice", store, H[:-1], ALL_PERMISSIONS)},
            TransferSettings(),
        ).filesystem("alice")
        store.reset_requests()
        for name in ("a", "b"):
            self.ok(fs.stat(["d", name]))
        self.assertEqual(dict(store.reset_requests()), {"head": 2, "list": 2})

    def test_a_listing_teaches_the_stats(self) -> None:
        """A listing's LIST of markers answers the stats of its files."""
        self.put("d/a", b"x")
        self.put("d/b", b"y")
        self.ok(self.fs.set_mtime(["d", "b"], 1000.0))
        self.clock.advance(TTL + 1)
        self.store.reset_requests()
        self.ok(self.make_fs().list_all(["d"]))
        self.assertRequests(list=2)
        fresh = self.make_fs()
        self.assertEqual(
            [self.ok(fresh.stat(["d", n])).mtime for n in "ab"], [START, 1000.0]
        )
        self.assertRequests(head=2)

    def test_a_run_of_times_set_in_one_directory(self) -> None:
        """lftp mirror -R: each file's time; one LIST of markers for them all."""
        for i in range(5):
            self.put(f"d/f{i}", b"x")
        for i in range(5):
            self.ok(self.fs.set_mtime(["d", f"f{i}"], 1000.0 + i))
        self.assertRequests(head=5, list=1, put=5)
        self.clock.advance(TTL + 1)
        entries = self.ok(self.make_fs().list_all(["d"]))
        self.assertEqual([e.mtime for e in entries], [1000.0 + i for i in range(5)])


class ChangesTests(CacheTestCase):
    """What this process changes is known at once, by every session."""

    def test_a_time_set_by_another_session(self) -> None:
        self.put("d/a", b"x")
        self.put("d/b", b"x")
        self.ok(self.fs.stat(["d", "a"]))  # d's markers: none
        other = self.make_fs()
        self.ok(other.set_mtime(["d", "b"], 1000.0))
        self.ok(other.set_mtime(["d", "b"], 2000.0))
        self.store.reset_requests()
        self.assertEqual(self.ok(self.make_fs().stat(["d", "b"])).mtime, 2000.0)
        self.assertRequests(head=1)
        entries = self.ok(self.make_fs().list_all(["d"]))
        self.assertEqual(
            [(e.name, e.mtime) for e in entries], [("a", START), ("b", 2000.0)]
        )
        self.assertRequests(list=1)
        self.assertEqual(len(self.markers()), 1)

    def test_deleted_and_renamed(self) -> None:
        """A delete forgets the file's markers; a rename moves them, known."""
        self.put("e/")
        for name in ("a", "b", "c"):
            self.put(f"d/{name}", b"x")
            self.ok(self.fs.set_mtime(["d", name], 1000.0))
        self.ok(self.make_fs().remove(["d", "a"]))
        self.ok(self.make_fs().rename(["d", "b"], ["d", "c"]))
        known = {n: self.fs.times.known(H + f"d/{n}") or [] for n in "abc"}
        self.assertEqual(
            {n: [m.when for m in ms] for n, ms in known.items()},
            {"a": [], "b": [], "c": [1000.0]},
        )
        # c's marker is the one moved there (b's), of the object c is now.
        [marker] = self.markers()
        self.assertEqual(known["c"][0].key, marker)
        self.ok(self.make_fs().rename(["d", "c"], ["e", "c"]))
        self.assertEqual(
            [self.fs.times.known(H + f"d/{n}") for n in "abc"], [[], [], []]
        )
        self.assertEqual(self.ok(self.make_fs().stat(["e", "c"])).mtime, 1000.0)
        self.assertEqual(len(self.markers()), 1)

    def test_an_answer_crossing_a_change_is_not_kept(self) -> None:
        """
        A listing of the home asks for its markers (held: nothing is below
        p/ yet); a rename moves a time into p/s/ meanwhile; the answer comes
        back: the listing uses it, nobody keeps it, so p/s/f's stat asks
        and shows the time (kept, it would say nothing is below p/).
        """
        view = View(self.store)
        self.put("top", b"x")
        self.put("d/f", b"x")
        self.put("p/s/g", b"x")
        self.ok(self.gateway(view).set_mtime(["d", "f"], 1000.0))
        view.hold = ROOT + H
        listing = self.gateway(view).listing([]).next_page()
        self.assertNoResult(listing)
        self.ok(self.gateway(view).rename(["d", "f"], ["p", "s", "f"]))
        view.release()
        self.assertEqual(self.names(self.ok(listing)), ["d", "p", "top"])
        self.store.reset_requests()
        self.assertEqual(
            self.ok(self.gateway(view).stat(["p", "s", "f"])).mtime, 1000.0
        )
        self.assertRequests(head=1, list=1)

    def test_a_delete_crossing_the_answer(self) -> None:
        """The same with a delete: the answer that still showed its marker goes."""
        view = View(self.store)
        self.put("d/a", b"x")
        self.put("d/b", b"x")
        self.ok(self.gateway(view).set_mtime(["d", "b"], 1000.0))
        self.clock.advance(TTL + 1)
        view.hold = ROOT + H + "d/"
        stat = self.gateway(view).stat(["d", "a"])
        self.assertNoResult(stat)
        self.ok(self.gateway(view).remove(["d", "b"]))  # its markers LISTed by name
        view.release()
        self.assertEqual(self.ok(stat).mtime, START)
        self.store.reset_requests()
        self.ok(self.gateway(view).stat(["d", "a"]))
        self.assertRequests(head=1, list=1)


class ElsewhereTests(CacheTestCase):
    """Another gateway (a store of its own) on the same objects."""

    def test_seen_after_the_window(self) -> None:
        self.put("d/a", b"x")
        self.put("d/b", b"x")
        here, there = self.gateway(View(self.store)), self.gateway(View(self.store))
        self.ok(here.stat(["d", "a"]))
        self.ok(there.set_mtime(["d", "b"], 1000.0))
        self.assertEqual(
            self.ok(self.gateway(here.times.store).stat(["d", "b"])).mtime, START
        )
        self.clock.advance(TTL + 0.01)
        self.assertEqual(
            self.ok(self.gateway(here.times.store).stat(["d", "b"])).mtime, 1000.0
        )

    def test_a_delete_asks(self) -> None:
        """
        The directory's markers are known (none) here; another gateway sets
        the file's time; a delete here still removes its marker.
        """
        self.put("d/a", b"x")
        self.put("d/b", b"x")
        view = View(self.store)
        here = self.gateway(view)
        self.ok(here.stat(["d", "a"]))
        self.ok(self.gateway(View(self.store)).set_mtime(["d", "b"], 1000.0))
        self.assertEqual(len(self.markers()), 1)
        self.store.reset_requests()
        self.ok(self.gateway(view).remove(["d", "b"]))
        self.assertEqual(self.markers(), [])
        # Its HEAD, its markers' LIST, the DELETEs, the LIST that keeps d.
        self.assertRequests(head=1, list=2, delete=2)

    def test_a_rename_asks(self) -> None:
        """Likewise a rename carries the time set elsewhere within the window."""
        self.put("d/a", b"x")
        self.put("d/b", b"x")
        view = View(self.store)
        self.ok(self.gateway(view).stat(["d", "a"]))
        self.ok(self.gateway(View(self.store)).set_mtime(["d", "b"], 1000.0))
        self.ok(self.gateway(view).rename(["d", "b"], ["d", "c"]))
        [marker] = self.markers()
        self.assertTrue(marker.startswith(ROOT + H + "d/c  1000000000000."))
        self.assertEqual(self.ok(self.gateway(view).stat(["d", "c"])).mtime, 1000.0)


class SubdirectoryTests(CacheTestCase):
    def test_parent_page_shows_none_below(self) -> None:
        """
        The home's page of markers shows which subdirectories hold any:
        a listing of one that holds none is its own LIST alone, a stat of
        its files the HEAD alone; one that holds some is asked.
        """
        self.put("plain/sub/f", b"x")
        self.put("timed/f", b"x")
        self.ok(self.fs.set_mtime(["timed", "f"], 1000.0))
        self.clock.advance(TTL + 1)
        fs = self.make_fs()
        self.store.reset_requests()
        self.ok(fs.list_all([]))
        self.assertRequests(list=2)
        self.assertEqual(self.names(self.ok(fs.list_all(["plain"]))), ["sub"])
        self.assertRequests(list=1)
        self.ok(fs.list_all(["plain", "sub"]))
        self.assertRequests(list=1)
        self.assertEqual(
            self.ok(self.make_fs().stat(["plain", "sub", "f"])).mtime, START
        )
        self.assertRequests(head=1)
        self.assertEqual(self.ok(self.make_fs().stat(["timed", "f"])).mtime, 1000.0)
        self.assertRequests(head=1, list=1)

    def test_a_time_set_below_is_known_above(self) -> None:
        """
        The home's page said nothing is below p/: a time set in p/s/ needs
        no LIST (there is no old marker to remove), and the home's answer
        then sends p/ and below to the store again; q/ still holds none.
        """
        self.put("p/s/f", b"x")
        self.ok(self.fs.list_all([]))  # the home's markers: none below
        self.store.reset_requests()
        self.ok(self.make_fs().set_mtime(["p", "s", "f"], 1000.0))
        self.assertRequests(head=1, put=1)
        self.assertEqual(self.ok(self.make_fs().stat(["p", "s", "f"])).mtime, 1000.0)
        self.assertRequests(head=1, list=1)
        cache = self.fs.times.cache
        home = cache.answer(ROOT + H, ROOT)
        assert home is not None
        self.assertEqual(home.below, {"p/"})
        self.assertIsNone(cache.answer(ROOT + H + "p/", ROOT))
        empty = cache.answer(ROOT + H + "q/r/", ROOT)
        assert empty is not None
        self.assertEqual((empty.markers, empty.until), ({}, None))


class FirstPageTests(CacheTestCase):
    def test_a_page_cut_short(self) -> None:
        """
        More markers than a page: the names the first page reaches are
        answered from it, the others by a LIST of their own.
        """
        times = mtimes.Times(self.store, ".cosgw/", self.clock)
        info = ObjectInfo("x", 1, START)
        names = [f"f{i:04d}" for i in range(MAX_LIST_KEYS + 5)]
        for name in names:
            self.store.put(times.marker_key(H + "d/" + name, 1000.0, info), b"")
        self.store.reset_requests()
        first = self.ok(Deferred.fromCoroutine(times.markers(H + "d/f0000")))
        self.assertEqual(len(first), 1)
        self.assertRequests(list=1)
        self.ok(Deferred.fromCoroutine(times.markers(H + "d/f0998")))
        self.assertRequests()
        # f0999's marker ends the page: its LIST may hold more of it.
        late = [
            self.ok(Deferred.fromCoroutine(times.markers(H + f"d/{n}")))
            for n in ("f0999", "f1003")
        ]
        self.assertEqual([len(m) for m in late], [1, 1])
        self.assertRequests(list=2)

    def test_bounds(self) -> None:
        """The oldest answers go past L{timecache.MAX_FOLDERS} directories."""
        self.patch(timecache, "MAX_FOLDERS", 3)
        for i in range(5):
            self.put(f"d{i}/f", b"x")
            self.ok(self.fs.stat([f"d{i}", "f"]))
        cache = self.fs.times.cache
        known = [cache.answer(ROOT + H + f"d{i}/", ROOT) is not None for i in range(5)]
        self.assertEqual(known, [False, False, True, True, True])
