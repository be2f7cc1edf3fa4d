"""
The L{IObjectStore} contract, run against every store cosgw has.

L{IObjectStoreContractMixin} holds what any store must do, in object-store
terms only (keys, pages, multipart uploads); each implementation gets a
subclass that says how to build it and how to look into it behind its back:

  - L{LocalStoreContractTests}: a L{LocalStore} over a temporary directory.
  - L{CosStoreContractTests}: a L{CosStore} speaking real HTTP through the
    real COS SDK to the COS-dialect test server (tests/cosserver.py), one
    fresh bucket per test, plus the faults only that server can inject.
  - L{MemoryStoreContractTests}: L{cosgw.testing.MemoryStore}, the double
    the other layers' unit tests use, plus what it offers them.

L{CosSemanticsContractMixin} adds what COS does and a local directory does
not (CRC-64s, small parts refused, ...); the COS and memory stores pass it.

Every test runs on the real reactor with a real thread pool, as the gateway
does: the stores' blocking work runs in the pool and their Deferreds fire on
the reactor thread.  Objects stay small (a few MiB per test).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from cosgw.interfaces import (
    MAX_KEY_BYTES,
    MAX_LIST_KEYS,
    MAX_PARTS,
    MIN_PART_SIZE,
    IByteSource,
    IntegrityError,
    IObjectStore,
    KeyRefused,
    ListPage,
    NoSuchKey,
    NoSuchUpload,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
    StoreUnavailable,
)
from cosgw.storage.checksum import crc64
from cosgw.storage.local import TMP_DIR, LocalStore
from cosgw.testing import MemoryStore
from tests.harness import LocalInspector

MiB = 1024 * 1024

#: Keys that break naive URL, XML or path handling.
ODD_KEYS = [
    "odd/名字 with space.txt",
    "odd/100% sure",
    "odd/literal %20 and %2F",
    "odd/#hash#",
    "odd/plus+and&amp=1",
    "odd/question?mark",
    "odd/ü/ß €.bin",
]


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@inlineCallbacks
def read_source(source: Any, size: int = 64 * 1024) -> Any:
    """
    Read a source to its end and close it.

    @return: Deferred firing with the list of chunks read (without the
        final C{b""}).
    """
    chunks = []
    try:
        while True:
            data = yield source.read(size)
            if not data:
                break
            chunks.append(data)
    finally:
        yield source.close()
    return chunks


@inlineCallbacks
def read_object(store: IObjectStore, key: str, offset: int = 0) -> Any:
    """@return: Deferred firing with the bytes of C{key} from C{offset}."""
    source = yield store.open(key, offset)
    chunks = yield read_source(source)
    return b"".join(chunks)


@inlineCallbacks
def list_all(
    store: IObjectStore, prefix: str, delimiter: str = "/", max_keys: int = 1000
) -> Any:
    """
    Follow C{next_marker} through every page.

    @return: Deferred firing with the list of L{ListPage}s.
    """
    pages = []
    marker = ""
    for _ in range(1000):
        page = yield store.list(prefix, delimiter, marker, max_keys)
        pages.append(page)
        if page.next_marker is None:
            break
        marker = page.next_marker
    else:
        raise AssertionError("listing did not end")
    return pages


def object_keys(page: ListPage) -> list[str]:
    return [o.key for o in page.objects]


class IObjectStoreContractMixin:
    """
    Tests any L{IObjectStore} must pass.

    A subclass (also a trial C{TestCase}) provides L{make_store}, and
    L{stored_keys_blocking} and L{stored_uploads_blocking}, which look at
    the store's content directly (not through the store under test); they
    block, so tests call them through L{stored_keys} and L{stored_uploads},
    in the test's thread pool.

    Directory markers are always put explicitly: a local directory exists
    (and is listed as its own marker) as soon as a key below it does, where
    a bucket has only the markers that were put.
    """

    store: IObjectStore
    pool: ThreadPool

    # -- to provide -------------------------------------------------------

    def make_store(self) -> IObjectStore:
        raise NotImplementedError

    def stored_keys_blocking(self, prefix: str = "") -> list[str]:
        """The keys of complete objects under C{prefix}, sorted."""
        raise NotImplementedError

    def stored_uploads_blocking(self) -> list[str]:
        """The upload ids of multipart uploads still in the store."""
        raise NotImplementedError

    # -- set-up -----------------------------------------------------------

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=8, name=type(self).__name__)
        self.pool.start()
        self.addCleanup(self.pool.stop)  # type: ignore[attr-defined]
        self.store = self.make_store()

    def in_pool(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def stored_keys(self, prefix: str = "") -> Deferred[list[str]]:
        return self.in_pool(self.stored_keys_blocking, prefix)

    def stored_uploads(self) -> Deferred[list[str]]:
        return self.in_pool(self.stored_uploads_blocking)

    @inlineCallbacks
    def put_all(self, keys: list[str]) -> Any:
        """Put each key: markers (ending in /) empty, others their own name."""
        for key in keys:
            data = b"" if key.endswith("/") else key.encode("utf-8")
            yield self.store.put(key, data)

    @inlineCallbacks
    def upload_parts(self, key: str, upload_id: str, parts: list[bytes]) -> Any:
        """
        Upload C{parts} (numbered from 1) last first, then the others.

        @return: Deferred firing with the L{PartInfo}s sorted by number.
        """
        order = [len(parts)] + list(range(1, len(parts)))
        infos = {}
        for number in order:
            info = yield self.store.upload_part(
                key, upload_id, number, parts[number - 1]
            )
            infos[number] = info
        return [infos[n] for n in sorted(infos)]

    # -- the interface ----------------------------------------------------

    @inlineCallbacks
    def test_provides_interfaces(self) -> Any:
        """The store and the sources it opens provide their interfaces."""
        self.assertTrue(verifyObject(IObjectStore, self.store))
        self.assertIsInstance(self.store.description, str)
        yield self.store.put("iface", b"x")
        source = yield self.store.open("iface")
        try:
            self.assertTrue(verifyObject(IByteSource, source))
        finally:
            yield source.close()

    # -- put, head, open --------------------------------------------------

    @inlineCallbacks
    def test_put_head_round_trip(self) -> Any:
        """
        put() fires with the new object's info (with an ETag); head() and
        open() then give the same size and bytes.
        """
        data = random_bytes(300_001)
        info = yield self.store.put("dir/file.bin", data)
        self.assertIsInstance(info, ObjectInfo)
        self.assertEqual(info.key, "dir/file.bin")
        self.assertEqual(info.size, len(data))
        self.assertTrue(info.etag)
        head = yield self.store.head("dir/file.bin")
        self.assertEqual((head.key, head.size), ("dir/file.bin", len(data)))
        self.assertGreater(head.mtime, 0)
        source = yield self.store.open("dir/file.bin")
        self.assertEqual((source.offset, source.length), (0, len(data)))
        self.assertEqual(source.info.size, len(data))
        chunks = yield read_source(source)
        self.assertEqual(b"".join(chunks), data)

    @inlineCallbacks
    def test_put_replaces(self) -> Any:
        """A put of an existing key replaces the object."""
        yield self.store.put("same", b"first version")
        yield self.store.put("same", b"second")
        head = yield self.store.head("same")
        self.assertEqual(head.size, 6)
        data = yield read_object(self.store, "same")
        self.assertEqual(data, b"second")

    @inlineCallbacks
    def test_put_keeps_mtime_metadata(self) -> Any:
        """
        An C{mtime} given as metadata comes back: as metadata (COS keeps
        it beside its own time) or as the object's own time (a directory has
        no metadata, so the local store sets the file's time).
        """
        yield self.store.put("stamped", b"data", {"mtime": "1000000000"})
        head = yield self.store.head("stamped")
        self.assertEqual(float(head.metadata.get("mtime", head.mtime)), 1000000000.0)

    def test_head_missing(self) -> Deferred[Any]:
        """head() of a missing key fails with NoSuchKey."""
        return self.assertFailure(self.store.head("no/such/key"), NoSuchKey)

    def test_head_missing_marker(self) -> Deferred[Any]:
        """head() of a missing directory marker fails with NoSuchKey."""
        return self.assertFailure(self.store.head("no-such-dir/"), NoSuchKey)

    def test_open_missing(self) -> Deferred[Any]:
        """open() of a missing key fails with NoSuchKey."""
        return self.assertFailure(self.store.open("no/such/key"), NoSuchKey)

    @inlineCallbacks
    def test_open_at_offset(self) -> Any:
        """open() at an offset delivers the bytes from there on."""
        data = random_bytes(100_000)
        yield self.store.put("ranged", data)
        for offset in (1, 4096, 99_999):
            source = yield self.store.open("ranged", offset)
            self.assertEqual(source.offset, offset)
            self.assertEqual(source.length, len(data) - offset)
            self.assertEqual(source.info.size, len(data))
            chunks = yield read_source(source)
            self.assertEqual(b"".join(chunks), data[offset:], offset)

    @inlineCallbacks
    def test_open_at_or_past_end(self) -> Any:
        """
        open() at the end or past it gives an empty source whose first read
        gives C{b""}.
        """
        data = random_bytes(1000)
        yield self.store.put("short", data)
        for offset in (1000, 1001, 5000):
            source = yield self.store.open("short", offset)
            self.assertEqual(source.length, 0, offset)
            self.assertEqual(source.info.size, 1000, offset)
            first = yield source.read(4096)
            self.assertEqual(first, b"", offset)
            yield source.close()

    @inlineCallbacks
    def test_open_bounded_range(self) -> Any:
        """
        open() with an end delivers bytes C{offset..end-1} and stops there
        (at the object's end if that comes first); a range from 0 that is
        not the whole object is not checked against the object's CRC-64.
        """
        data = random_bytes(100_000)
        yield self.store.put("bounded", data)
        for offset, end in ((0, 1), (0, 50_000), (4096, 8192), (99_000, 200_000)):
            source = yield self.store.open("bounded", offset, end)
            self.assertEqual(
                (source.offset, source.length, source.info.size),
                (offset, min(end, len(data)) - offset, len(data)),
            )
            chunks = yield read_source(source, 3000)
            self.assertEqual(b"".join(chunks), data[offset:end], (offset, end))
        yield self.assertFailure(self.store.open("bounded", 10, 10), StoreError)

    @inlineCallbacks
    def test_read_in_chunks(self) -> Any:
        """
        Reads give at most the size asked for, in order, then C{b""} at the
        end of the object.
        """
        data = random_bytes(50_000)
        yield self.store.put("chunked", data)
        source = yield self.store.open("chunked")
        chunks = yield read_source(source, 4096)
        self.assertTrue(all(0 < len(c) <= 4096 for c in chunks))
        self.assertEqual(b"".join(chunks), data)

    @inlineCallbacks
    def test_close_early_and_twice(self) -> Any:
        """A source may be closed before its end, and closed again."""
        yield self.store.put("half-read", random_bytes(200_000))
        source = yield self.store.open("half-read")
        data = yield source.read(1000)
        self.assertTrue(data)
        yield source.close()
        yield source.close()

    @inlineCallbacks
    def test_put_empty(self) -> Any:
        """An empty object can be stored, found and read."""
        info = yield self.store.put("empty", b"")
        self.assertEqual(info.size, 0)
        head = yield self.store.head("empty")
        self.assertEqual(head.size, 0)
        source = yield self.store.open("empty")
        self.assertEqual(source.length, 0)
        first = yield source.read(4096)
        self.assertEqual(first, b"")
        yield source.close()
        page = yield self.store.list("", "/")
        self.assertEqual(object_keys(page), ["empty"])

    @inlineCallbacks
    def test_directory_marker(self) -> Any:
        """
        A key ending in C{/} is stored empty, found by head(), rolled up as a
        common prefix above it and listed as itself under it.
        """
        info = yield self.store.put("d/", b"")
        self.assertEqual(info.size, 0)
        head = yield self.store.head("d/")
        self.assertEqual((head.key, head.size), ("d/", 0))
        page = yield self.store.list("", "/")
        self.assertEqual((object_keys(page), list(page.prefixes)), ([], ["d/"]))
        page = yield self.store.list("d/", "/")
        self.assertEqual((object_keys(page), list(page.prefixes)), (["d/"], []))
        self.assertIsNone(page.next_marker)
        keys = yield self.stored_keys()
        self.assertIn("d/", keys)

    # -- listing ----------------------------------------------------------

    @inlineCallbacks
    def test_list_delimited(self) -> Any:
        """
        A delimited listing gives the objects at one level and the common
        prefixes below it, each sorted, with their sizes.
        """
        yield self.put_all(
            [
                "ls/",
                "ls/b",
                "ls/a/",
                "ls/a/1",
                "ls/c/deep/2",
                "ls/d",
                "ls/aa",
                "lsx",
                "other/3",
            ]
        )
        page = yield self.store.list("ls/", "/")
        self.assertEqual(object_keys(page), ["ls/", "ls/aa", "ls/b", "ls/d"])
        self.assertEqual([o.size for o in page.objects], [0, 5, 4, 4])
        self.assertEqual(list(page.prefixes), ["ls/a/", "ls/c/"])
        self.assertIsNone(page.next_marker)
        page = yield self.store.list("", "/")
        self.assertEqual(object_keys(page), ["lsx"])
        self.assertEqual(list(page.prefixes), ["ls/", "other/"])
        # A prefix that is not a whole name.
        page = yield self.store.list("ls/a", "/")
        self.assertEqual(object_keys(page), ["ls/aa"])
        self.assertEqual(list(page.prefixes), ["ls/a/"])
        page = yield self.store.list("nothing/", "/")
        self.assertEqual((list(page.objects), list(page.prefixes)), ([], []))
        self.assertIsNone(page.next_marker)

    @inlineCallbacks
    def test_list_recursive(self) -> Any:
        """
        Without a delimiter the listing gives every key under the prefix,
        at any depth, and nothing else.
        """
        inside = [
            "r/",
            "r/a",
            "r/sub/",
            "r/sub/b",
            "r/sub/deeper/",
            "r/sub/deeper/c",
            "r/z",
        ]
        yield self.put_all(inside + ["r.txt", "rr/", "rr/y"])
        page = yield self.store.list("r/", "")
        self.assertEqual(object_keys(page), sorted(inside))
        self.assertEqual(list(page.prefixes), [])
        self.assertIsNone(page.next_marker)
        page = yield self.store.list("r/sub/", "")
        self.assertEqual(
            object_keys(page), ["r/sub/", "r/sub/b", "r/sub/deeper/", "r/sub/deeper/c"]
        )

    def paging_tree(self) -> tuple[list[str], list[str], list[str]]:
        """
        A level with 20 objects and 5 subdirectories, interleaved in order.

        @return: (keys to put, entries of the delimited listing, keys of the
            recursive listing)
        """
        files = [f"pg/k{i:02d}" for i in range(20)]
        dirs = [f"pg/k{i:02d}x/" for i in (0, 3, 4, 11, 19)]
        inner = [d + "f" for d in dirs]
        put = ["pg/"] + files + dirs + inner
        return put, sorted(["pg/"] + files + dirs), sorted(put)

    @inlineCallbacks
    def test_list_pages(self) -> Any:
        """
        Paging a delimited listing with C{next_marker} gives every object and
        prefix exactly once, pages of at most C{max_keys} entries, and no
        marker on the last page.
        """
        put, expected, _ = self.paging_tree()
        yield self.put_all(put)
        for max_keys in (1, 4, 7, len(expected)):
            pages = yield list_all(self.store, "pg/", "/", max_keys)
            seen = []
            for page in pages:
                entries = object_keys(page) + list(page.prefixes)
                self.assertLessEqual(len(entries), max_keys)
                self.assertEqual(object_keys(page), sorted(object_keys(page)))
                self.assertEqual(list(page.prefixes), sorted(page.prefixes))
                seen.extend(entries)
            self.assertEqual(sorted(seen), expected, max_keys)
            self.assertEqual(len(seen), len(set(seen)), max_keys)
            self.assertEqual(len(pages), -(-len(expected) // max_keys), max_keys)
            self.assertIsNone(pages[-1].next_marker)

    @inlineCallbacks
    def test_list_pages_recursive(self) -> Any:
        """Paging works the same without a delimiter."""
        put, _, expected = self.paging_tree()
        yield self.put_all(put)
        for max_keys in (3, 10):
            pages = yield list_all(self.store, "pg/", "", max_keys)
            seen = [key for page in pages for key in object_keys(page)]
            self.assertEqual(seen, expected, max_keys)
            self.assertTrue(all(not page.prefixes for page in pages))
            self.assertIsNone(pages[-1].next_marker)

    # -- names ------------------------------------------------------------

    @inlineCallbacks
    def test_odd_keys(self) -> Any:
        """
        Keys with UTF-8, spaces, C{%}, C{#}, C{+}, C{&}, C{?} are stored,
        read, listed, copied and deleted under their exact names.
        """
        markers = ["odd/", "odd/ü/"]
        yield self.put_all(markers)
        for n, key in enumerate(ODD_KEYS):
            data = key.encode("utf-8") * (n + 1)
            info = yield self.store.put(key, data)
            self.assertEqual((info.key, info.size), (key, len(data)))
            head = yield self.store.head(key)
            self.assertEqual((head.key, head.size), (key, len(data)))
            got = yield read_object(self.store, key)
            self.assertEqual(got, data, key)
        page = yield self.store.list("odd/", "")
        self.assertEqual(object_keys(page), sorted(ODD_KEYS + markers))
        page = yield self.store.list("odd/", "/")
        self.assertEqual(object_keys(page), sorted(["odd/"] + ODD_KEYS[:-1]))
        self.assertEqual(list(page.prefixes), ["odd/ü/"])
        page = yield self.store.list("odd/ü/", "/")
        self.assertEqual(object_keys(page), ["odd/ü/", "odd/ü/ß €.bin"])
        stored = yield self.stored_keys("odd/")
        self.assertTrue(set(ODD_KEYS) <= set(stored), stored)
        copied = yield self.store.copy(ODD_KEYS[0], ODD_KEYS[1] + " copy")
        self.assertEqual(copied.key, ODD_KEYS[1] + " copy")
        got = yield read_object(self.store, ODD_KEYS[1] + " copy")
        self.assertEqual(got, ODD_KEYS[0].encode("utf-8"))
        for key in ODD_KEYS:
            yield self.store.delete(key)
            yield self.assertFailure(self.store.head(key), NoSuchKey)

    # -- copy and delete --------------------------------------------------

    @inlineCallbacks
    def test_copy(self) -> Any:
        """copy() makes an equal object and leaves the source as it was."""
        data = random_bytes(200_000)
        yield self.store.put("src/a", data)
        info = yield self.store.copy("src/a", "dst/b")
        self.assertEqual((info.key, info.size), ("dst/b", len(data)))
        copied = yield read_object(self.store, "dst/b")
        self.assertEqual(copied, data)
        source = yield read_object(self.store, "src/a")
        self.assertEqual(source, data)
        keys = yield self.stored_keys("src/a")
        self.assertEqual(keys, ["src/a"])

    @inlineCallbacks
    def test_copy_replaces(self) -> Any:
        """copy() onto an existing key replaces it."""
        yield self.store.put("one", b"1111")
        yield self.store.put("two", b"22")
        yield self.store.copy("one", "two")
        data = yield read_object(self.store, "two")
        self.assertEqual(data, b"1111")

    @inlineCallbacks
    def test_copy_missing(self) -> Any:
        """copy() of a missing key fails with NoSuchKey and creates nothing."""
        yield self.assertFailure(self.store.copy("gone", "dst/c"), NoSuchKey)
        yield self.assertFailure(self.store.head("dst/c"), NoSuchKey)

    @inlineCallbacks
    def test_delete(self) -> Any:
        """delete() removes an object and leaves its neighbours."""
        yield self.put_all(["del/", "del/a", "del/b"])
        result = yield self.store.delete("del/a")
        self.assertIsNone(result)
        yield self.assertFailure(self.store.head("del/a"), NoSuchKey)
        yield self.assertFailure(self.store.open("del/a"), NoSuchKey)
        page = yield self.store.list("del/", "/")
        self.assertEqual(object_keys(page), ["del/", "del/b"])
        keys = yield self.stored_keys("del/")
        self.assertNotIn("del/a", keys)

    @inlineCallbacks
    def test_delete_missing(self) -> Any:
        """Deleting a missing key succeeds."""
        result = yield self.store.delete("never/was")
        self.assertIsNone(result)
        result = yield self.store.delete("never/was/")
        self.assertIsNone(result)

    @inlineCallbacks
    def test_delete_empty_marker(self) -> Any:
        """Deleting the marker of an empty directory removes it."""
        yield self.store.put("gone/", b"")
        yield self.store.delete("gone/")
        yield self.assertFailure(self.store.head("gone/"), NoSuchKey)
        page = yield self.store.list("", "/")
        self.assertEqual(list(page.prefixes), [])

    # -- multipart --------------------------------------------------------

    def three_parts(self) -> list[bytes]:
        return [
            random_bytes(MIN_PART_SIZE),
            random_bytes(MIN_PART_SIZE + 12_345),
            random_bytes(1000),
        ]

    @inlineCallbacks
    def test_multipart_complete(self) -> Any:
        """
        Parts uploaded out of order and completed make one object, their
        concatenation; the upload is then gone.
        """
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("mp/object")
        self.assertIsInstance(upload_id, str)
        infos = yield self.upload_parts("mp/object", upload_id, parts)
        for number, (info, data) in enumerate(zip(infos, parts), 1):
            self.assertIsInstance(info, PartInfo)
            self.assertEqual((info.number, info.size), (number, len(data)))
        pending = yield self.store.list_multipart("mp/")
        self.assertEqual([u.upload_id for u in pending], [upload_id])
        # Not visible before completion.
        yield self.assertFailure(self.store.head("mp/object"), NoSuchKey)
        info = yield self.store.complete_multipart("mp/object", upload_id, infos)
        self.assertIsInstance(info, ObjectInfo)
        self.assertEqual((info.key, info.size), ("mp/object", sum(map(len, parts))))
        data = yield read_object(self.store, "mp/object")
        self.assertEqual(data, b"".join(parts))
        head = yield self.store.head("mp/object")
        self.assertEqual(head.size, len(data))
        pending = yield self.store.list_multipart("")
        self.assertEqual(pending, [])
        stored = yield self.stored_uploads()
        self.assertEqual(stored, [])

    @inlineCallbacks
    def test_multipart_single_small_part(self) -> Any:
        """An upload of one part under the minimum size completes."""
        upload_id = yield self.store.create_multipart("mp/small")
        info = yield self.store.upload_part("mp/small", upload_id, 1, b"tiny")
        done = yield self.store.complete_multipart("mp/small", upload_id, [info])
        self.assertEqual(done.size, 4)
        data = yield read_object(self.store, "mp/small")
        self.assertEqual(data, b"tiny")

    @inlineCallbacks
    def test_multipart_part_retried(self) -> Any:
        """A part uploaded again replaces its earlier upload."""
        upload_id = yield self.store.create_multipart("mp/retried")
        yield self.store.upload_part("mp/retried", upload_id, 1, b"a" * 100)
        info = yield self.store.upload_part("mp/retried", upload_id, 1, b"b" * 50)
        yield self.store.complete_multipart("mp/retried", upload_id, [info])
        data = yield read_object(self.store, "mp/retried")
        self.assertEqual(data, b"b" * 50)

    @inlineCallbacks
    def test_multipart_keeps_mtime_metadata(self) -> Any:
        """An C{mtime} given to create_multipart comes back (see above)."""
        upload_id = yield self.store.create_multipart(
            "mp/stamped", {"mtime": "1200000000"}
        )
        info = yield self.store.upload_part("mp/stamped", upload_id, 1, b"x")
        yield self.store.complete_multipart("mp/stamped", upload_id, [info])
        head = yield self.store.head("mp/stamped")
        self.assertEqual(float(head.metadata.get("mtime", head.mtime)), 1200000000.0)

    @inlineCallbacks
    def test_multipart_abort(self) -> Any:
        """An aborted upload leaves no object and no upload."""
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("mp/aborted")
        yield self.upload_parts("mp/aborted", upload_id, parts[:2])
        result = yield self.store.abort_multipart("mp/aborted", upload_id)
        self.assertIsNone(result)
        yield self.assertFailure(self.store.head("mp/aborted"), NoSuchKey)
        pending = yield self.store.list_multipart("")
        self.assertEqual(pending, [])
        stored = yield self.stored_uploads()
        self.assertEqual(stored, [])
        keys = yield self.stored_keys("mp/")
        self.assertEqual(keys, [])

    @inlineCallbacks
    def test_multipart_after_abort(self) -> Any:
        """
        Parts and completion of an aborted upload fail with NoSuchUpload;
        aborting it again succeeds.
        """
        upload_id = yield self.store.create_multipart("mp/late")
        part = yield self.store.upload_part("mp/late", upload_id, 1, b"early")
        yield self.store.abort_multipart("mp/late", upload_id)
        yield self.assertFailure(
            self.store.upload_part("mp/late", upload_id, 2, b"late"), NoSuchUpload
        )
        yield self.assertFailure(
            self.store.complete_multipart("mp/late", upload_id, [part]),
            NoSuchUpload,
        )
        yield self.store.abort_multipart("mp/late", upload_id)
        yield self.assertFailure(self.store.head("mp/late"), NoSuchKey)

    @inlineCallbacks
    def test_list_multipart(self) -> Any:
        """
        list_multipart() shows unfinished uploads with their keys, filtered
        by prefix.
        """
        first = yield self.store.create_multipart("up/one")
        second = yield self.store.create_multipart("up/名 two")
        other = yield self.store.create_multipart("elsewhere")
        yield self.store.upload_part("up/one", first, 1, b"some bytes")
        pending = yield self.store.list_multipart("up/")
        self.assertTrue(all(isinstance(u, PendingUpload) for u in pending))
        self.assertEqual(
            sorted((u.key, u.upload_id) for u in pending),
            sorted([("up/one", first), ("up/名 two", second)]),
        )
        self.assertTrue(all(u.initiated > 0 for u in pending))
        everything = yield self.store.list_multipart()
        self.assertIn(("elsewhere", other), [(u.key, u.upload_id) for u in everything])
        for key, upload_id in (
            ("up/one", first),
            ("up/名 two", second),
            ("elsewhere", other),
        ):
            yield self.store.abort_multipart(key, upload_id)
        pending = yield self.store.list_multipart()
        self.assertEqual(pending, [])

    # -- part copy and resume ---------------------------------------------

    def assert_part(self, info: Any, number: int, data: bytes) -> None:
        """C{info} is the L{PartInfo} of part C{number} holding C{data}."""
        self.assertIsInstance(info, PartInfo)
        self.assertEqual((info.number, info.size), (number, len(data)))
        self.assertTrue(info.etag)
        self.assertFalse(info.etag.startswith('"'))
        if info.crc64 is not None:
            self.assertEqual(info.crc64, crc64(data), number)

    @inlineCallbacks
    def test_upload_part_copy(self) -> Any:
        """
        Parts copied from a whole object and from a range in its middle,
        completed with an ordinary part, make exactly those bytes; the
        source stays unchanged and readable while the upload is open, and
        after.
        """
        source = random_bytes(MIN_PART_SIZE + 5000)
        yield self.store.put("pc/source", source)
        first, last = 3000, 3000 + MIN_PART_SIZE + 99
        tail = random_bytes(777)
        upload_id = yield self.store.create_multipart("pc/target")
        # Out of order, as parts may come.
        part3 = yield self.store.upload_part("pc/target", upload_id, 3, tail)
        part2 = yield self.store.upload_part_copy(
            "pc/target", upload_id, 2, "pc/source", first, last
        )
        self.assert_part(part2, 2, source[first : last + 1])
        part1 = yield self.store.upload_part_copy(
            "pc/target", upload_id, 1, "pc/source", 0, len(source) - 1
        )
        self.assert_part(part1, 1, source)
        self.assertGreater(part1.mtime, 0)
        # The source is untouched, and the target not there yet.
        data = yield read_object(self.store, "pc/source")
        self.assertEqual(data, source)
        yield self.assertFailure(self.store.head("pc/target"), NoSuchKey)
        listed = yield self.store.list_parts("pc/target", upload_id)
        self.assertEqual(
            [(p.number, p.size, p.etag) for p in listed],
            [(p.number, p.size, p.etag) for p in (part1, part2, part3)],
        )
        info = yield self.store.complete_multipart(
            "pc/target", upload_id, [part1, part2, part3]
        )
        expected = source + source[first : last + 1] + tail
        self.assertEqual(info.size, len(expected))
        data = yield read_object(self.store, "pc/target")
        self.assertEqual(data, expected)
        data = yield read_object(self.store, "pc/source")
        self.assertEqual(data, source)
        keys = yield self.stored_keys("pc/")
        objects = [k for k in keys if not k.endswith("/")]
        self.assertEqual(objects, ["pc/source", "pc/target"])
        stored = yield self.stored_uploads()
        self.assertEqual(stored, [])

    @inlineCallbacks
    def test_upload_part_copy_onto_itself(self) -> Any:
        """
        APPE's shape: an upload of a key whose first part is a copy of the
        start of that key's object.  The old object is what readers see
        until completion; then it is the new one.
        """
        old = random_bytes(MIN_PART_SIZE + 10)
        yield self.store.put("pc/appended", old)
        kept = MIN_PART_SIZE + 4
        more = random_bytes(2000)
        upload_id = yield self.store.create_multipart("pc/appended")
        part1 = yield self.store.upload_part_copy(
            "pc/appended", upload_id, 1, "pc/appended", 0, kept - 1
        )
        self.assert_part(part1, 1, old[:kept])
        part2 = yield self.store.upload_part("pc/appended", upload_id, 2, more)
        data = yield read_object(self.store, "pc/appended")
        self.assertEqual(data, old)
        yield self.store.complete_multipart("pc/appended", upload_id, [part1, part2])
        data = yield read_object(self.store, "pc/appended")
        self.assertEqual(data, old[:kept] + more)

    @inlineCallbacks
    def test_upload_part_copy_missing_source(self) -> Any:
        """A part copy of a missing object fails with NoSuchKey."""
        upload_id = yield self.store.create_multipart("pc/nosource")
        yield self.assertFailure(
            self.store.upload_part_copy(
                "pc/nosource", upload_id, 1, "pc/no-such-object", 0, 9
            ),
            NoSuchKey,
        )
        listed = yield self.store.list_parts("pc/nosource", upload_id)
        self.assertEqual(listed, [])
        yield self.store.abort_multipart("pc/nosource", upload_id)

    @inlineCallbacks
    def test_upload_part_copy_missing_upload(self) -> Any:
        """
        A part copy into an aborted upload fails with NoSuchUpload, and
        leaves the source alone.
        """
        yield self.store.put("pc/kept", b"0123456789")
        upload_id = yield self.store.create_multipart("pc/dead")
        yield self.store.abort_multipart("pc/dead", upload_id)
        yield self.assertFailure(
            self.store.upload_part_copy("pc/dead", upload_id, 1, "pc/kept", 0, 9),
            NoSuchUpload,
        )
        data = yield read_object(self.store, "pc/kept")
        self.assertEqual(data, b"0123456789")
        yield self.assertFailure(self.store.head("pc/dead"), NoSuchKey)

    @inlineCallbacks
    def test_upload_part_copy_bad_range(self) -> Any:
        """
        A range that is empty, reversed or not inside the source fails with
        StoreError (neither NoSuchKey nor NoSuchUpload).
        """
        yield self.store.put("pc/ten", b"0123456789")
        upload_id = yield self.store.create_multipart("pc/ranged")
        for first, last in ((0, 10), (10, 10), (5, 4), (-1, 3), (9, 20)):
            error = yield self.assertFailure(
                self.store.upload_part_copy(
                    "pc/ranged", upload_id, 1, "pc/ten", first, last
                ),
                StoreError,
            )
            self.assertNotIsInstance(error, (NoSuchKey, NoSuchUpload))
        info = yield self.store.upload_part_copy(
            "pc/ranged", upload_id, 1, "pc/ten", 9, 9
        )
        self.assert_part(info, 1, b"9")
        yield self.store.complete_multipart("pc/ranged", upload_id, [info])
        data = yield read_object(self.store, "pc/ranged")
        self.assertEqual(data, b"9")

    @inlineCallbacks
    def test_list_parts(self) -> Any:
        """
        list_parts() gives the parts stored so far, sorted by number, with
        sizes, ETags and mtimes, whatever order they came in; they complete
        the upload as the parts' own infos do (how a dropped upload is
        resumed).
        """
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("lp/object")
        listed = yield self.store.list_parts("lp/object", upload_id)
        self.assertEqual(listed, [])
        infos = yield self.upload_parts("lp/object", upload_id, parts)
        listed = yield self.store.list_parts("lp/object", upload_id)
        self.assertTrue(all(isinstance(p, PartInfo) for p in listed))
        self.assertEqual([p.number for p in listed], [1, 2, 3])
        self.assertEqual([p.size for p in listed], [len(p) for p in parts])
        self.assertEqual([p.etag for p in listed], [i.etag for i in infos])
        self.assertTrue(all(p.mtime > 0 for p in listed), listed)
        for info, data in zip(listed, parts):
            if info.crc64 is not None:
                self.assertEqual(info.crc64, crc64(data))
        # A part retried replaces its earlier upload in the listing too.
        again = random_bytes(MIN_PART_SIZE + 1)
        yield self.store.upload_part("lp/object", upload_id, 2, again)
        listed = yield self.store.list_parts("lp/object", upload_id)
        self.assertEqual([p.size for p in listed], [len(parts[0]), len(again), 1000])
        info = yield self.store.complete_multipart("lp/object", upload_id, listed)
        self.assertEqual(info.size, len(parts[0]) + len(again) + 1000)
        data = yield read_object(self.store, "lp/object")
        self.assertEqual(data, parts[0] + again + parts[2])
        yield self.assertFailure(
            self.store.list_parts("lp/object", upload_id), NoSuchUpload
        )

    @inlineCallbacks
    def test_list_parts_missing_upload(self) -> Any:
        """
        list_parts() of an aborted upload, or of an upload under another
        key, fails with NoSuchUpload.
        """
        upload_id = yield self.store.create_multipart("lp/aborted")
        yield self.store.upload_part("lp/aborted", upload_id, 1, b"x" * 100)
        yield self.assertFailure(
            self.store.list_parts("lp/other-key", upload_id), NoSuchUpload
        )
        yield self.store.abort_multipart("lp/aborted", upload_id)
        yield self.assertFailure(
            self.store.list_parts("lp/aborted", upload_id), NoSuchUpload
        )


class LocalStoreContractTests(IObjectStoreContractMixin, unittest.TestCase):
    """The contract, on a local directory."""

    def make_store(self) -> IObjectStore:
        self.root = Path(tempfile.mkdtemp(prefix="cosgw-contract-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        store = LocalStore(self.root, self.reactor, self.pool)
        store.prepare()
        return store

    def stored_keys_blocking(self, prefix: str = "") -> list[str]:
        return LocalInspector(self.root).keys(prefix)

    def stored_uploads_blocking(self) -> list[str]:
        return sorted(
            name for name in os.listdir(self.root / TMP_DIR) if name.startswith("up-")
        )

    def test_name_too_long_is_refused(self) -> Deferred[Any]:
        """
        A name longer than the directory can hold is refused as such
        (KeyRefused, which the file system shows as an invalid name), not
        as an unexpected OSError; one that fits is stored.
        """

        @inlineCallbacks
        def check() -> Any:
            self.assertEqual(self.store.name_max, os.pathconf(self.root, "PC_NAME_MAX"))
            fits = "报" * (self.store.name_max // 3)
            long = fits + "告"
            yield self.assertFailure(self.store.put(f"d/{long}", b"x"), KeyRefused)
            yield self.assertFailure(self.store.head(long), KeyRefused)
            yield self.store.put(f"d/{fits}", b"x")
            self.assertEqual(
                [k for k in self.stored_keys_blocking() if not k.endswith("/")],
                [f"d/{fits}"],
            )

        return check()

    def test_temporary_area_hidden(self) -> Deferred[Any]:
        """The store's temporary directory is never listed."""

        @inlineCallbacks
        def check() -> Any:
            upload_id = yield self.store.create_multipart("hidden")
            yield self.store.upload_part("hidden", upload_id, 1, b"x")
            page = yield self.store.list("", "/")
            self.assertEqual((list(page.objects), list(page.prefixes)), ([], []))
            page = yield self.store.list("", "")
            self.assertEqual(list(page.objects), [])
            yield self.store.abort_multipart("hidden", upload_id)

        return check()


class CosSemanticsContractMixin:
    """
    What COS does that a local directory does not, for the stores that
    follow COS (COS itself, the memory store): a CRC-64 on every object and
    part, listings without metadata, a file and a directory marker of the
    same name side by side, and small parts refused at completion.

    Mixed into a subclass of L{IObjectStoreContractMixin}.
    """

    store: IObjectStore

    def part_copies(self) -> Deferred[int]:
        """How many part copies the store performed, counted by the store."""
        raise NotImplementedError

    @inlineCallbacks
    def test_crc64_reported(self) -> Any:
        """put() and head() carry COS's CRC-64 of the object."""
        data = random_bytes(10_000)
        info = yield self.store.put("crc", data)
        self.assertEqual(info.crc64, crc64(data))
        self.assertTrue(info.request_id)
        head = yield self.store.head("crc")
        self.assertEqual(head.crc64, crc64(data))

    @inlineCallbacks
    def test_multipart_crc64(self) -> Any:
        """Parts carry their CRC-64, and so does the completed object."""
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("mp/crc")
        infos = yield self.upload_parts("mp/crc", upload_id, parts)
        self.assertEqual([i.crc64 for i in infos], [crc64(p) for p in parts])
        info = yield self.store.complete_multipart("mp/crc", upload_id, infos)
        self.assertEqual(info.crc64, crc64(b"".join(parts)))

    @inlineCallbacks
    def test_upload_part_copy_crc64(self) -> Any:
        """
        A part copied from an object written through the store carries the
        CRC-64 of the copied bytes, so the completed object is checked
        against its parts as an uploaded one is.
        """
        source = random_bytes(MIN_PART_SIZE + 3000)
        yield self.store.put("pc/crc-source", source)
        upload_id = yield self.store.create_multipart("pc/crc")
        whole = yield self.store.upload_part_copy(
            "pc/crc", upload_id, 1, "pc/crc-source", 0, len(source) - 1
        )
        self.assertEqual(whole.crc64, crc64(source))
        middle = yield self.store.upload_part_copy(
            "pc/crc", upload_id, 2, "pc/crc-source", 100, 2099
        )
        self.assertEqual(middle.crc64, crc64(source[100:2100]))
        info = yield self.store.complete_multipart("pc/crc", upload_id, [whole, middle])
        self.assertEqual(info.crc64, crc64(source + source[100:2100]))
        copies = yield self.part_copies()
        self.assertGreaterEqual(copies, 2)

    @inlineCallbacks
    def test_listing_has_no_metadata(self) -> Any:
        """
        A listed object carries no user metadata and no CRC-64 (GET Bucket
        gives none): only head() has them.
        """
        yield self.store.put("meta/file", b"data", {"mtime": "1000000000"})
        page = yield self.store.list("meta/", "/")
        self.assertEqual(object_keys(page), ["meta/file"])
        self.assertEqual(dict(page.objects[0].metadata), {})
        self.assertIsNone(page.objects[0].crc64)
        self.assertEqual(page.objects[0].size, 4)
        head = yield self.store.head("meta/file")
        self.assertEqual(head.metadata.get("mtime"), "1000000000")

    @inlineCallbacks
    def test_copy_replaces_metadata(self) -> Any:
        """
        copy() keeps the source's metadata, or replaces it when given some,
        which is how an object's metadata changes (a copy onto itself).
        """
        yield self.store.put("cm/a", b"abc", {"mtime": "1"})
        yield self.store.copy("cm/a", "cm/b")
        head = yield self.store.head("cm/b")
        self.assertEqual(head.metadata.get("mtime"), "1")
        yield self.store.copy("cm/a", "cm/a", {"mtime": "2"})
        head = yield self.store.head("cm/a")
        self.assertEqual(head.metadata.get("mtime"), "2")
        data = yield read_object(self.store, "cm/a")
        self.assertEqual(data, b"abc")

    @inlineCallbacks
    def test_file_and_marker_of_same_name(self) -> Any:
        """
        A key and the directory marker of the same name are two objects,
        each listed and deleted on its own.
        """
        yield self.store.put("twin", b"file")
        yield self.store.put("twin/", b"")
        page = yield self.store.list("", "/")
        self.assertEqual(
            (object_keys(page), list(page.prefixes)), (["twin"], ["twin/"])
        )
        yield self.store.delete("twin")
        head = yield self.store.head("twin/")
        self.assertEqual(head.size, 0)

    @inlineCallbacks
    def test_small_part_refused(self) -> Any:
        """
        Completion refuses a part under 1 MiB unless it is the last one
        (COS's EntityTooSmall), and leaves the upload to be completed right
        or aborted.
        """
        upload_id = yield self.store.create_multipart("mp/too-small")
        first = yield self.store.upload_part("mp/too-small", upload_id, 1, b"a" * 1000)
        second = yield self.store.upload_part("mp/too-small", upload_id, 2, b"b" * 10)
        error = yield self.assertFailure(
            self.store.complete_multipart("mp/too-small", upload_id, [first, second]),
            StoreError,
        )
        self.assertNotIsInstance(error, (NoSuchKey, NoSuchUpload, StoreUnavailable))
        yield self.assertFailure(self.store.head("mp/too-small"), NoSuchKey)
        info = yield self.store.complete_multipart("mp/too-small", upload_id, [first])
        self.assertEqual(info.size, 1000)


def cos_settings(server: Any) -> dict[str, Any]:
    """CosConfig arguments for the test server, as service._make_store makes."""
    return {
        "SecretId": server.secret_id,
        "SecretKey": server.secret_key,
        "Region": server.region,
        "Scheme": "http",
        "IP": "127.0.0.1",
        "Port": server.port,
    }


class CosStoreContractTests(
    CosSemanticsContractMixin, IObjectStoreContractMixin, unittest.TestCase
):
    """
    The contract, on COS: the real SDK over HTTP to the test server, one
    fresh bucket per test; and what only COS can get wrong (faults).
    """

    def make_store(self) -> IObjectStore:
        from cosgw.storage.cos import CosStore
        from tests.cosserver import shared_server

        self.server = shared_server()
        self.bucket = self.server.create_bucket(f"contract-{uuid.uuid4().hex[:12]}")
        self.addCleanup(self.server.reset_faults)
        # Retries after 10 and 20 ms (1 and 2 s in service): the faults below
        # fail every attempt.
        return CosStore(
            self.bucket,
            cos_settings(self.server),
            self.reactor,
            self.pool,
            pool_size=8,
            retry_delays=(0.01, 0.02),
        )

    def stored_keys_blocking(self, prefix: str = "") -> list[str]:
        return self.server.keys(self.bucket, prefix)

    def stored_uploads_blocking(self) -> list[str]:
        return [
            upload_id for _key, upload_id in self.server.pending_uploads(self.bucket)
        ]

    def part_copies(self) -> Deferred[int]:
        return self.in_pool(lambda: self.server.stats().get("UploadPartCopy", 0))

    def inject(self, kind: str, **params: Any) -> Deferred[None]:
        return self.in_pool(
            lambda: self.server.inject(kind, bucket=self.bucket, **params)
        )

    @inlineCallbacks
    def test_list_parts_pages(self) -> Any:
        """
        list_parts() follows NextPartNumberMarker through every page (pages
        forced down to 2 parts here; COS's are 1000).
        """
        client = self.store._client  # type: ignore[attr-defined]
        real = client.list_parts
        calls = []

        def small_pages(**kwargs: Any) -> Any:
            calls.append(kwargs["PartNumberMarker"])
            return real(**{**kwargs, "MaxParts": 2})

        client.list_parts = small_pages
        upload_id = yield self.store.create_multipart("lp/paged")
        sizes = [10, 20, 30, 40, 50]
        for number in (5, 3, 1, 4, 2):
            yield self.store.upload_part(
                "lp/paged", upload_id, number, b"p" * sizes[number - 1]
            )
        listed = yield self.store.list_parts("lp/paged", upload_id)
        self.assertEqual([p.number for p in listed], [1, 2, 3, 4, 5])
        self.assertEqual([p.size for p in listed], sizes)
        self.assertEqual(calls, [0, 2, 4])
        yield self.store.abort_multipart("lp/paged", upload_id)

    @inlineCallbacks
    def test_upload_part_copy_fails(self) -> Any:
        """
        A part copy the store keeps refusing fails with StoreUnavailable,
        naming COS's request id; the upload stays usable.
        """
        yield self.store.put("pc/refused-source", b"abc")
        upload_id = yield self.store.create_multipart("pc/refused")
        yield self.inject("fail", op="UploadPartCopy", count=-1, status=503)
        error = yield self.assertFailure(
            self.store.upload_part_copy(
                "pc/refused", upload_id, 1, "pc/refused-source", 0, 2
            ),
            StoreUnavailable,
        )
        self.assertTrue(error.request_id)
        yield self.in_pool(self.server.reset_faults)
        listed = yield self.store.list_parts("pc/refused", upload_id)
        self.assertEqual(listed, [])
        yield self.store.abort_multipart("pc/refused", upload_id)

    @inlineCallbacks
    def test_corrupt_get(self) -> Any:
        """
        A body with a flipped byte (same length, same CRC header) fails the
        read with IntegrityError rather than passing for the object.
        """
        data = random_bytes(300_000)
        yield self.store.put("flip", data)
        yield self.inject("corrupt-get", key="flip")
        source = yield self.store.open("flip")
        got = []

        @inlineCallbacks
        def drain() -> Any:
            while True:
                chunk = yield source.read(64 * 1024)
                if not chunk:
                    return
                got.append(chunk)

        yield self.assertFailure(drain(), IntegrityError)
        yield source.close()
        self.assertNotEqual(b"".join(got), data)
        # The object itself is intact.
        again = yield read_object(self.store, "flip")
        self.assertEqual(again, data)

    @inlineCallbacks
    def test_truncated_get(self) -> Any:
        """A body cut short fails the read with IntegrityError."""
        data = random_bytes(300_000)
        yield self.store.put("cut", data)
        yield self.inject("truncate-get", key="cut", after=100_000)
        yield self.assertFailure(read_object(self.store, "cut"), IntegrityError)

    @inlineCallbacks
    def test_truncated_ranged_get(self) -> Any:
        """A ranged body cut short fails too (the length is checked)."""
        data = random_bytes(300_000)
        yield self.store.put("cut-range", data)
        yield self.inject("truncate-get", key="cut-range", after=1000, reset=True)
        yield self.assertFailure(
            read_object(self.store, "cut-range", 5000), IntegrityError
        )

    @inlineCallbacks
    def test_upload_part_fails(self) -> Any:
        """
        A part the store keeps refusing (past the SDK's retries) fails with
        StoreUnavailable naming COS's request id.
        """
        upload_id = yield self.store.create_multipart("mp/refused")
        yield self.inject("fail", op="UploadPart", count=-1, status=503)
        error = yield self.assertFailure(
            self.store.upload_part("mp/refused", upload_id, 1, b"x" * 1000),
            StoreUnavailable,
        )
        self.assertIsInstance(error, StoreError)
        self.assertTrue(error.request_id)
        self.assertNotEqual(error.request_id, "Unknown")
        yield self.store.abort_multipart("mp/refused", upload_id)

    @inlineCallbacks
    def test_put_reply_lost(self) -> Any:
        """
        A PUT the store performed but whose replies were all lost is found
        stored, and put() succeeds.
        """
        data = random_bytes(5000)
        yield self.inject("fail", op="PutObject", count=3, after=True)
        info = yield self.store.put("lost-reply", data)
        self.assertEqual(info.size, len(data))
        got = yield read_object(self.store, "lost-reply")
        self.assertEqual(got, data)

    @inlineCallbacks
    def test_complete_reply_lost(self) -> Any:
        """
        A CompleteMultipartUpload the store performed but whose replies were
        all lost is found complete, and complete_multipart() succeeds.
        """
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("mp/lost")
        infos = yield self.upload_parts("mp/lost", upload_id, parts)
        yield self.inject("fail", op="CompleteMultipartUpload", count=3, after=True)
        info = yield self.store.complete_multipart("mp/lost", upload_id, infos)
        self.assertEqual(info.size, sum(map(len, parts)))

    @inlineCallbacks
    def test_complete_reply_lost_once(self) -> Any:
        """
        One lost reply to CompleteMultipartUpload: the SDK retries on its
        own and the retry finds the upload gone (NoSuchUpload), because the
        first attempt completed it.  The object is there, so
        complete_multipart() must succeed rather than report a failure for
        an object that is stored (and that no abort will remove).
        """
        parts = self.three_parts()
        upload_id = yield self.store.create_multipart("mp/lost-once")
        infos = yield self.upload_parts("mp/lost-once", upload_id, parts)
        yield self.inject("fail", op="CompleteMultipartUpload", count=1, after=True)
        info = yield self.store.complete_multipart("mp/lost-once", upload_id, infos)
        self.assertEqual(info.size, sum(map(len, parts)))
        data = yield read_object(self.store, "mp/lost-once")
        self.assertEqual(data, b"".join(parts))


class MemoryStoreContractTests(
    CosSemanticsContractMixin, IObjectStoreContractMixin, unittest.TestCase
):
    """
    The contract, on L{MemoryStore}, the test double the other layers' unit
    tests run on; and what it offers those tests: Deferreds that have
    already fired, request counts, injected faults.
    """

    def make_store(self) -> IObjectStore:
        self.memory = MemoryStore()
        return self.memory

    def stored_keys_blocking(self, prefix: str = "") -> list[str]:
        return self.memory.stored_keys(prefix)

    def stored_uploads_blocking(self) -> list[str]:
        return self.memory.stored_uploads()

    def part_copies(self) -> Deferred[int]:
        return succeed(self.memory.requests["upload_part_copy"])

    def test_fires_synchronously(self) -> None:
        """
        Every answer is a Deferred that has already fired: no reactor turn,
        no thread.
        """
        store = self.memory
        info = self.successResultOf(store.put("sync/a", b"abc"))
        self.assertEqual(info.size, 3)
        self.assertEqual(self.successResultOf(store.head("sync/a")).size, 3)
        page = self.successResultOf(store.list("sync/"))
        self.assertEqual(object_keys(page), ["sync/a"])
        source = self.successResultOf(store.open("sync/a", 1))
        self.assertEqual(self.successResultOf(source.read(10)), b"bc")
        self.assertEqual(self.successResultOf(source.read(10)), b"")
        self.successResultOf(source.close())
        self.failureResultOf(store.head("sync/b"), NoSuchKey)

    def test_requests_counted(self) -> None:
        """
        Each call is counted under its method's name, failed ones too;
        reset_requests() gives the counts so far and starts afresh.
        """
        store = self.memory
        store.put("count/a", b"1")
        store.head("count/a")
        store.head("count/missing").addErrback(lambda f: f.trap(NoSuchKey))
        store.list("count/")
        store.copy("count/a", "count/b")
        self.assertEqual(
            store.reset_requests(),
            Counter({"put": 1, "head": 2, "list": 1, "copy": 1}),
        )
        self.assertEqual(store.requests, Counter())
        upload_id = self.successResultOf(store.create_multipart("count/c"))
        part = self.successResultOf(store.upload_part("count/c", upload_id, 1, b"x"))
        store.complete_multipart("count/c", upload_id, [part])
        self.assertEqual(
            store.requests,
            Counter({"create_multipart": 1, "upload_part": 1, "complete_multipart": 1}),
        )

    def test_fail_next(self) -> None:
        """
        fail_next() makes the next calls of a method fail with
        StoreUnavailable, naming a request id, and change nothing; later
        calls and other methods succeed.
        """
        store = self.memory
        store.put("fault/a", b"old")
        store.fail_next("put", 2)
        for _ in range(2):
            failure = self.failureResultOf(
                store.put("fault/a", b"new"), StoreUnavailable
            )
            self.assertTrue(failure.value.request_id)
        self.assertEqual(store.stored_bytes("fault/a"), b"old")
        self.assertEqual(store.requests["put"], 3)
        self.successResultOf(store.head("fault/a"))
        self.successResultOf(store.put("fault/a", b"new"))
        self.assertEqual(store.stored_bytes("fault/a"), b"new")
        self.assertRaises(ValueError, store.fail_next, "get")

    def test_store_errors_name_requests(self) -> None:
        """Each failure carries its own request id, as COS's do."""
        first = self.failureResultOf(self.memory.head("nothing"), NoSuchKey)
        second = self.failureResultOf(self.memory.head("nothing"), NoSuchKey)
        self.assertTrue(first.value.request_id)
        self.assertNotEqual(first.value.request_id, second.value.request_id)

    def test_list_capped_at_max_list_keys(self) -> None:
        """
        A page holds at most MAX_LIST_KEYS entries, whatever max_keys asks
        for; a max_keys under one is refused.
        """
        store = self.memory
        names = [f"big/{i:05d}" for i in range(MAX_LIST_KEYS * 2 + 500)]
        for name in names:
            store.put(name, b"")
        store.reset_requests()
        pages = self.successResultOf(list_all(store, "big/", "/", 5000))
        self.assertEqual([len(p.objects) for p in pages], [1000, 1000, 500])
        self.assertEqual(
            [p.next_marker for p in pages], ["big/00999", "big/01999", None]
        )
        self.assertEqual([k for p in pages for k in object_keys(p)], names)
        self.assertEqual(store.requests, Counter({"list": 3}))
        self.failureResultOf(store.list("big/", "/", "", 0), StoreError)

    def test_sources_are_snapshots(self) -> None:
        """
        A source reads the object as it was when opened; open_sources
        counts those not closed yet; a read after close fails.
        """
        store = self.memory
        store.put("snap", b"before")
        source = self.successResultOf(store.open("snap"))
        self.assertEqual(store.open_sources, 1)
        store.put("snap", b"after, longer")
        store.delete("snap")
        self.assertEqual(self.successResultOf(source.read(100)), b"before")
        self.successResultOf(source.close())
        self.assertEqual(store.open_sources, 0)
        self.failureResultOf(source.read(1), StoreError)

    def test_clock(self) -> None:
        """Objects, uploads and parts take their times from the given clock."""
        clock = Clock()
        clock.advance(1_700_000_000)
        store = MemoryStore(clock)
        self.assertEqual(self.successResultOf(store.put("t", b"1")).mtime, 1.7e9)
        clock.advance(5)
        upload_id = self.successResultOf(store.create_multipart("u"))
        clock.advance(5)
        part = self.successResultOf(store.upload_part("u", upload_id, 1, b"x"))
        self.assertEqual(part.mtime, 1.7e9 + 10)
        (pending,) = self.successResultOf(store.list_multipart())
        self.assertEqual(pending.initiated, 1.7e9 + 5)
        clock.advance(5)
        info = self.successResultOf(store.complete_multipart("u", upload_id, [part]))
        self.assertEqual(info.mtime, 1.7e9 + 15)
        self.assertEqual(self.successResultOf(store.head("t")).mtime, 1.7e9)

    def test_min_part_size(self) -> None:
        """A store made with a lower minimum completes small parts."""
        store = MemoryStore(min_part_size=1)
        upload_id = self.successResultOf(store.create_multipart("small"))
        parts = [
            self.successResultOf(store.upload_part("small", upload_id, n, data))
            for n, data in ((1, b"ab"), (2, b"cd"), (3, b"e"))
        ]
        info = self.successResultOf(store.complete_multipart("small", upload_id, parts))
        self.assertEqual(info.crc64, crc64(b"abcde"))
        self.assertTrue(info.etag and info.etag.endswith("-3"))
        self.assertEqual(store.stored_bytes("small"), b"abcde")

    def test_refusals(self) -> None:
        """
        Keys COS refuses (empty, over MAX_KEY_BYTES), part numbers outside
        1..MAX_PARTS, and a completion naming a part not stored (wrong ETag)
        or twice fail with StoreError.
        """
        store = self.memory
        for key in ("", "k" * (MAX_KEY_BYTES + 1), "é" * (MAX_KEY_BYTES // 2 + 1)):
            self.failureResultOf(store.put(key, b"x"), StoreError)
        self.successResultOf(store.put("k" * MAX_KEY_BYTES, b"x"))
        upload_id = self.successResultOf(store.create_multipart("r"))
        for number in (0, MAX_PARTS + 1):
            self.failureResultOf(
                store.upload_part("r", upload_id, number, b"x"), StoreError
            )
        part = self.successResultOf(store.upload_part("r", upload_id, 1, b"x"))
        forged = PartInfo(number=1, etag="0" * 32, size=1)
        for parts in ([], [forged], [part, part]):
            failure = self.failureResultOf(
                store.complete_multipart("r", upload_id, parts), StoreError
            )
            self.assertNotIsInstance(failure.value, NoSuchUpload)
        self.assertEqual(store.stored_uploads(), [upload_id])
        # Aborting under another key is COS's NoSuchUpload, which abort
        # swallows: the upload stays.
        self.successResultOf(store.abort_multipart("other", upload_id))
        self.assertEqual(store.stored_uploads(), [upload_id])
