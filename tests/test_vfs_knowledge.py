"""
Unit tests of L{cosgw.vfs.knowledge}: what a session learns from its own
requests and changes, for how long, what another session's change voids,
and what the stats and checks of the file system then ask the store,
counted over a L{MemoryStore} on a L{Clock} (house rule 10).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw import vfs
from cosgw.interfaces import Entry, ListPage, ObjectInfo
from cosgw.testing import MemoryStore
from cosgw.transfer import UploadRegistry
from cosgw.vfs import knowledge
from cosgw.vfs.directories import PROBE_KEYS, probe
from cosgw.vfs.knowing import KnowingStore
from cosgw.vfs.knowledge import (
    MAX_NAMES,
    MAX_SPAN_ENTRIES,
    NAME_TTL,
    SessionKnowledge,
    Sighting,
)
from tests.doortesting import DoorTestCase

START = 1_700_000_000.0


class HeldStore(MemoryStore):
    """A memory store whose HEADs and LISTs answer only when released."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.held: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def _hold(self, answer: Deferred[Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((answer, d))
        return d

    def head(self, key: str) -> Deferred[ObjectInfo]:
        return self._hold(super().head(key))

    def list(self, *args: Any, **kwargs: Any) -> Deferred[ListPage]:
        return self._hold(super().list(*args, **kwargs))

    def release(self) -> None:
        held, self.held = self.held, []
        for answer, d in held:
            answer.chainDeferred(d)


class SessionKnowledgeTests(SynchronousTestCase):
    """What a session learns through its L{KnowingStore}, and for how long."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryStore(self.clock)
        self.session = self.knowing()

    def knowing(self) -> KnowingStore:
        return KnowingStore(self.store, SessionKnowledge(self.clock))

    def ok(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def lookup(self, key: str, session: KnowingStore | None = None) -> Any:
        return (session or self.session).known.lookup(key)

    def test_own_writes_are_known_exactly(self) -> None:
        """A PUT's file, with the store's time; a marker's directory; a delete."""
        self.ok(self.session.put("d/f", b"12345"))
        self.ok(self.session.put("d/sub/", b""))
        self.assertEqual(
            self.lookup("d/f"),
            Sighting(
                Entry("f", False, 5, START, self.ok(self.store.head("d/f")).crc64), True
            ),
        )
        self.assertEqual(
            self.lookup("d/sub"), Sighting(Entry("sub", True, 0, 0.0), True)
        )
        self.assertEqual(self.lookup("d"), Sighting(Entry("d", True, 0, 0.0), True))
        self.ok(self.session.delete("d/f"))
        self.assertEqual(self.lookup("d/f"), Sighting(None, True))
        self.ok(self.session.delete("d/sub/"))
        self.assertIsNone(self.lookup("d/sub"))  # its contents may keep it

    def test_a_time_in_metadata(self) -> None:
        """A copy with new metadata (a client's time) is known with that time."""
        self.ok(self.store.put("f", b"x"))
        self.ok(self.session.copy("f", "f", {"mtime": "1234"}))
        self.assertEqual(self.lookup("f").entry.mtime, 1234.0)
        self.assertTrue(self.lookup("f").exact)
        self.ok(self.session.copy("f", "g"))  # the source's metadata, unseen
        self.assertFalse(self.lookup("g").exact)

    def test_a_listed_span(self) -> None:
        """
        A LIST from a marker: the names it shows, and those it does not
        within its span (for the checks; a stat asks), not those beyond.
        """
        for key in ("d/a", "d/b", "d/c/x", "d/e", "d/g"):
            self.ok(self.store.put(key, b"x"))
        self.ok(self.session.list("d/", marker="d/a", max_keys=3))
        self.assertIsNone(self.lookup("d/a"))  # before the span
        self.assertEqual(
            self.lookup("d/b"), Sighting(Entry("b", False, 1, START), False)
        )
        self.assertEqual(self.lookup("d/c"), Sighting(Entry("c", True, 0, 0.0), True))
        self.assertEqual(self.lookup("d/bb"), Sighting(None, False))
        self.assertEqual(self.lookup("d/d"), Sighting(None, False))
        self.assertIsNone(self.lookup("d/f"))  # beyond the page's last key
        self.assertEqual(self.lookup("d"), Sighting(Entry("d", True, 0, 0.0), True))
        self.ok(self.session.list("d/", marker="d/e"))  # the next page
        self.assertEqual(self.lookup("d/f"), Sighting(None, False))
        self.assertEqual(self.lookup("d/zzz"), Sighting(None, False))

    def test_for_a_second(self) -> None:
        self.ok(self.session.put("f", b"x"))
        self.clock.advance(NAME_TTL)
        self.assertIsNotNone(self.lookup("f"))
        self.clock.advance(0.01)
        self.assertIsNone(self.lookup("f"))

    def test_another_sessions_change_voids_it(self) -> None:
        """Another session of the store changed the name: nothing is known of it."""
        other = self.knowing()
        self.ok(self.session.list("d/"))
        self.assertEqual(self.lookup("d/x"), Sighting(None, False))
        self.ok(other.put("d/x", b"new"))
        self.assertIsNone(self.lookup("d/x"))
        self.assertEqual(self.lookup("d/y"), Sighting(None, False))
        self.assertEqual(self.lookup("d/x", other).entry.size, 3)
        self.ok(other.delete("d/x"))
        self.assertIsNone(self.lookup("d/x"))

    def test_an_answer_older_than_a_change(self) -> None:
        """
        A LIST sent before the session's own PUT, answered after it, does not
        hide the PUT.
        """
        held = HeldStore(self.clock)
        session = KnowingStore(held, SessionKnowledge(self.clock))
        listed = session.list("d/")
        self.ok(session.put("d/x", b"new"))
        held.release()
        self.ok(listed)
        self.assertEqual(session.known.lookup("d/x").entry.size, 3)
        self.assertEqual(session.known.lookup("d/y"), Sighting(None, False))

    def test_the_same_question_once(self) -> None:
        """Two HEADs of a key at once are one request."""
        held = HeldStore(self.clock)
        self.ok(held.put("f", b"x"))
        held.reset_requests()
        session = KnowingStore(held, SessionKnowledge(self.clock))
        first, second = session.head("f"), session.head("f")
        held.release()
        self.assertEqual(self.ok(first), self.ok(second))
        self.assertEqual(dict(held.reset_requests()), {"head": 1})
        third = session.head("f")  # a new question once answered
        held.release()
        self.ok(third)
        self.assertEqual(dict(held.reset_requests()), {"head": 1})

    def test_a_failed_change_is_unknown(self) -> None:
        self.ok(self.session.put("f", b"x"))
        self.store.fail_next("put")
        self.failureResultOf(self.session.put("f", b"yy"))
        self.assertIsNone(self.lookup("f"))

    def test_bounded(self) -> None:
        """At most L{MAX_NAMES} names and L{MAX_SPAN_ENTRIES} listed entries."""
        for i in range(MAX_NAMES + 10):
            self.ok(self.session.put(f"n{i:04d}", b""))
        self.assertIsNone(self.lookup("n0000"))
        self.assertIsNotNone(self.lookup(f"n{MAX_NAMES + 9:04d}"))
        for i in range(MAX_SPAN_ENTRIES + 10):
            self.ok(self.store.put(f"big/{i:05d}", b""))
        for marker in ("", f"big/{999:05d}"):
            self.ok(self.session.list("big/", marker=marker))
        known = self.session.known
        self.assertEqual(sum(len(s.entries) for s in known._spans.values()), 1000)
        self.assertIsNotNone(self.lookup("big/00000"))
        self.assertIsNone(self.lookup(f"big/{MAX_SPAN_ENTRIES + 5:05d}"))

    def test_without_a_clock(self) -> None:
        session = KnowingStore(self.store, SessionKnowledge(None))
        self.ok(session.put("f", b"x"))
        self.ok(session.list(""))
        self.assertIsNone(session.known.lookup("f"))

    def test_stands_for_its_store(self) -> None:
        """
        Equal to the store it wraps and hashed as it: the registry of kept
        uploads, indexed by store, sees one store whichever session asks.
        """
        other = self.knowing()
        self.assertEqual(self.session, other)
        self.assertEqual(self.session, self.store)
        self.assertEqual(hash(self.session), hash(self.store))
        registry = UploadRegistry()
        registry.keep(self.session, "k", "upload-1")
        self.assertEqual(registry.kept(other, "k"), ["upload-1"])
        self.assertNotEqual(self.session, MemoryStore(self.clock))


class ProbeTests(SynchronousTestCase):
    """The LIST from just before a name, and the odd names around it."""

    def setUp(self) -> None:
        self.store = MemoryStore(Clock())

    def put(self, *keys: str) -> None:
        for key in keys:
            self.successResultOf(self.store.put(key, b"x"))
        self.store.reset_requests()

    def probe(self, key: str) -> Entry | None:
        name = key.rsplit("/", 1)[-1]
        return self.successResultOf(probe(self.store, key, name))

    def test_starts_at_the_name(self) -> None:
        """Siblings sorting before the name are not on the page."""
        self.put(*(f"d/a{i:03d}" for i in range(PROBE_KEYS + 5)), "d/b")
        self.assertEqual(self.probe("d/b"), Entry("b", False, 1, 0.0))
        self.assertEqual(dict(self.store.reset_requests()), {"list": 1})
        self.assertIsNone(self.probe("d/a"))  # ends with the lowest letter
        self.assertEqual(dict(self.store.reset_requests()), {"list": 1})

    def test_names_that_end_in_a_space(self) -> None:
        self.put("d/b ", "d/b  x")
        self.assertEqual(self.probe("d/b ").name, "b ")
        self.assertIsNone(self.probe("d/ "))

    def test_odd_names_before_the_name(self) -> None:
        """
        Names that extend the one just below with a character past U+FFFF
        fill the page: the name is asked for alone.
        """
        self.put(*(f"d/a\U0001f600{i:03d}" for i in range(PROBE_KEYS + 1)), "d/b")
        self.assertEqual(self.probe("d/b"), Entry("b", False, 1, 0.0))
        self.assertEqual(dict(self.store.reset_requests()), {"list": 2})


class StatTests(DoorTestCase):
    """What a stat asks, given what the session knows."""

    def test_a_listing_does_not_answer_a_stat_of_a_missing_name(self) -> None:
        """
        A name a listing showed free is asked for (HEAD) all the same:
        another connection of the client may have just written it; the
        listing answers whether it is a directory.
        """
        self.put("d/")
        self.ok(self.fs.list_all(["d"]))
        self.assertRequests(list=2)  # the directory's, and its markers'
        self.fails(self.fs.stat(["d", "new"]), vfs.NotFound)
        self.assertRequests(head=1)
        self.fails(self.fs.stat(["d", "new"]), vfs.NotFound)  # now known
        self.assertRequests()

    def test_the_sessions_own_changes(self) -> None:
        upload = self.ok(self.fs.open_upload(["f"]))
        upload.write(b"abc")
        self.ok(upload.commit())
        self.store.reset_requests()
        self.assertEqual(self.ok(self.fs.stat(["f"])).size, 3)
        self.ok(self.fs.set_mtime(["f"], 1234.0))
        self.store.reset_requests()
        self.assertEqual(self.ok(self.fs.stat(["f"])).mtime, 1234.0)
        self.ok(self.fs.remove(["f"]))
        self.store.reset_requests()
        self.fails(self.fs.stat(["f"]), vfs.NotFound)
        self.assertRequests()

    def test_another_writer_after_the_window(self) -> None:
        """
        A writer outside the gateway is seen once the session's knowledge
        is L{NAME_TTL} old; another session of the gateway at once.
        """
        upload = self.ok(self.fs.open_upload(["f"]))
        upload.write(b"abc")
        self.ok(upload.commit())
        self.put("f", b"replaced elsewhere")
        self.assertEqual(self.ok(self.fs.stat(["f"])).size, 3)  # the window
        self.clock.advance(NAME_TTL + 0.01)
        self.assertEqual(self.ok(self.fs.stat(["f"])).size, 18)
        other = self.make_fs()
        self.ok(other.remove(["f"]))
        self.fails(self.fs.stat(["f"]), vfs.NotFound)

    def test_the_window_is_configurable_for_tests(self) -> None:
        """Sessions started after a change of L{NAME_TTL} use it."""
        self.patch(knowledge, "NAME_TTL", 60.0)
        fs = self.make_fs()
        self.assertEqual(fs.known.ttl, 60.0)
        self.assertEqual(self.fs.known.ttl, NAME_TTL)
