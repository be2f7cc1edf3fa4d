"""
Test doubles shipped with cosgw, as C{twisted.internet.testing} ships
StringTransport and MemoryReactorClock: unit tests of any layer (vfs,
transfer, the frontends) run over a real L{IObjectStore} without a reactor,
a thread pool, a directory or a COS server.

L{MemoryStore} keeps objects in a dict and answers every call with a
Deferred that has already fired, so a test drives it with trial's
C{successResultOf} and C{failureResultOf}.  It is not a mock: it passes the
same contract tests as the local store and COS (tests/test_store_contract.py)
and follows COS where the two differ, because COS is what production runs
on:

  - Listings are sorted by code point, cut at L{MAX_LIST_KEYS} entries
    (objects plus common prefixes), and resumed after C{next_marker}, the
    last key or common prefix of the page, present only when more follows.
    Listed objects carry no metadata and no CRC, as COS's GET Bucket gives
    none: code that needs them must HEAD, and the request counts show it.
  - A directory marker is an ordinary key; a file and a "directory" of the
    same name coexist (no L{KeyConflict}, unlike the local store).
  - Every object, part and copy carries COS's CRC-64/ECMA.
  - Part numbers are 1 to L{MAX_PARTS}, parts at most L{MAX_PART_SIZE}, and
    completion refuses a part under C{min_part_size} (COS's 1 MiB) unless it
    is the last, or a part whose ETag is not the stored one.
  - Errors are the store errors of L{cosgw.interfaces}, each with a request
    id, as COS's carry x-cos-request-id.

House rule 10 is to count store requests per operation in tests: every call
of an L{IObjectStore} method is counted in L{MemoryStore.requests}, by method
name, whether it succeeds or fails.  (A call is one request here; the COS
backend sends more HTTP requests for some, e.g. copy() is HEAD, PUT-copy,
HEAD, and list_parts() pages.)
"""

from __future__ import annotations

# The store's method named `list` shadows the builtin inside the class body.
import builtins
import hashlib
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cosgw.interfaces import (
    MAX_KEY_BYTES,
    MAX_LIST_KEYS,
    MAX_PART_SIZE,
    MAX_PARTS,
    MAX_PUT_SIZE,
    MIN_PART_SIZE,
    IByteSource,
    IObjectStore,
    ListPage,
    NoSuchKey,
    NoSuchUpload,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
    StoreUnavailable,
)
from cosgw.storage._runner import check_copy_range, check_read_range
from cosgw.storage.checksum import crc64

__all__ = ["STORE_METHODS", "MemorySource", "MemoryStore"]

T = TypeVar("T")

#: The L{IObjectStore} methods, as named in L{MemoryStore.requests}.
STORE_METHODS = (
    "head",
    "list",
    "open",
    "put",
    "delete",
    "copy",
    "create_multipart",
    "upload_part",
    "upload_part_copy",
    "list_parts",
    "complete_multipart",
    "abort_multipart",
    "list_multipart",
)


@dataclass
class _Object:
    """A stored object: its bytes and what head() says of it."""

    data: bytes
    info: ObjectInfo


@dataclass
class _Upload:
    """An unfinished multipart upload and the parts stored so far."""

    key: str
    initiated: float
    metadata: dict[str, str]
    parts: dict[int, tuple[PartInfo, bytes]] = field(default_factory=dict)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _metadata(metadata: Optional[Mapping[str, str]]) -> dict[str, str]:
    """User metadata as COS gives it back: names lowercased, values str."""
    return {str(k).lower(): str(v) for k, v in (metadata or {}).items()}


@implementer(IByteSource)
class MemorySource:
    """
    One GET of an object: a snapshot of its bytes when it was opened, so a
    replacement or deletion meanwhile does not change what is read (as with
    an HTTP response already under way).
    """

    def __init__(
        self,
        store: MemoryStore,
        info: ObjectInfo,
        data: bytes,
        offset: int,
        end: Optional[int] = None,
    ) -> None:
        self._store = store
        self._data = data
        self.info = info
        self.offset = offset
        stop = info.size if end is None else min(end, info.size)
        self.length = max(0, stop - offset)
        self._position = min(offset, info.size)
        self._stop = max(stop, self._position)
        self.closed = False

    def read(self, size: int) -> Deferred[bytes]:
        """
        @return: A Deferred that has fired with up to C{size} bytes, C{b""}
            at the end; or failed with L{StoreError} after L{close}.
        """
        if self.closed:
            return fail(StoreError(f"{self.info.key}: read after close"))
        if size < 1:
            return fail(StoreError(f"{self.info.key}: read of {size} bytes"))
        chunk = self._data[self._position : min(self._position + size, self._stop)]
        self._position += len(chunk)
        return succeed(chunk)

    def close(self) -> Deferred[None]:
        if not self.closed:
            self.closed = True
            self._store._sources.discard(self)
        return succeed(None)


@implementer(IObjectStore)
class MemoryStore:
    """
    An object store in memory with COS semantics, for tests.

    @ivar requests: How many times each L{IObjectStore} method was called
        (see L{STORE_METHODS}), failed calls included.
    @ivar opened: The C{(key, offset, end)} of every L{open} call, in
        order: the ranges readers ask the store for.
    """

    def __init__(
        self,
        clock: Optional[IReactorTime] = None,
        min_part_size: int = MIN_PART_SIZE,
        description: str = "memory store",
    ) -> None:
        """
        @param clock: Gives object and upload times (a C{task.Clock} makes
            them predictable); the wall clock when None.
        @param min_part_size: The smallest part, other than the last, that
            completion accepts; lower it for tests of multipart logic with
            small parts.
        """
        self.description = description
        self.requests: Counter[str] = Counter()
        self.opened: builtins.list[tuple[str, int, Optional[int]]] = []
        self._clock = clock
        self._min_part_size = min_part_size
        self._objects: dict[str, _Object] = {}
        #: The keys of C{_objects}, sorted: listings are bisections.
        self._keys: builtins.list[str] = []
        self._uploads: dict[str, _Upload] = {}
        self._faults: Counter[str] = Counter()
        self._serial = 0
        self._request_id = ""
        self._sources: set[MemorySource] = set()

    # -- for tests ------------------------------------------------------------

    def reset_requests(self) -> Counter[str]:
        """
        Start counting afresh, typically after a test's set-up, so what is
        counted next is the operation under test.

        @return: What had been counted.
        """
        counted, self.requests = self.requests, Counter()
        self.opened = []
        return counted

    def fail_next(self, method: str, count: int = 1) -> None:
        """
        Make the next C{count} calls of C{method} fail with
        L{StoreUnavailable} (a 503 from COS) and change nothing: how tests
        reach the error paths of the layers above.
        """
        if method not in STORE_METHODS:
            raise ValueError(f"{method!r} is not an IObjectStore method")
        self._faults[method] += count

    def stored_keys(self, prefix: str = "") -> builtins.list[str]:
        """The keys of complete objects under C{prefix}, sorted; not counted."""
        start = bisect_left(self._keys, prefix)
        end = self._past(prefix, start)
        return self._keys[start:end]

    def stored_bytes(self, key: str) -> bytes:
        """
        The bytes of C{key}, looked at directly; not counted.

        @raise KeyError: no such object.
        """
        return self._objects[key].data

    def stored_uploads(self) -> builtins.list[str]:
        """The ids of unfinished multipart uploads, sorted; not counted."""
        return sorted(self._uploads)

    @property
    def open_sources(self) -> int:
        """Sources opened and not closed yet: a leak check for readers."""
        return len(self._sources)

    # -- the machinery --------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.time()

    def _request(self, method: str, body: Callable[..., T], *args: Any) -> Deferred[T]:
        """
        Count a call of C{method}, then answer it with C{body(*args)} in a
        Deferred that has already fired.  Store errors get the request's id.
        """
        self.requests[method] += 1
        self._serial += 1
        self._request_id = f"memory-{self._serial:06d}"
        if self._faults[method] > 0:
            self._faults[method] -= 1
            return fail(StoreUnavailable(f"{method}: injected fault", self._request_id))
        try:
            result = body(*args)
        except StoreError as e:
            if e.request_id is None:
                e.request_id = self._request_id
            return fail(e)
        except Exception:
            return fail()
        return succeed(result)

    def _check_key(self, key: str) -> None:
        """@raise StoreError: COS would refuse C{key} (400)."""
        if not key:
            raise StoreError("empty key")
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            raise StoreError(f"{key!r} is not valid UTF-8") from None
        if len(encoded) > MAX_KEY_BYTES:
            raise StoreError(f"key of {len(encoded)} bytes: over {MAX_KEY_BYTES}")

    def _get(self, key: str) -> _Object:
        self._check_key(key)
        stored = self._objects.get(key)
        if stored is None:
            raise NoSuchKey(key)
        return stored

    def _past(self, rolled: str, i: int) -> int:
        """The index of the first key from C{i} on not under C{rolled}."""
        keys = self._keys
        i = bisect_left(keys, rolled + "\U0010ffff", i)
        while i < len(keys) and keys[i].startswith(rolled):
            i += 1
        return i

    def _store(
        self, key: str, data: bytes, metadata: Mapping[str, str], etag: str
    ) -> ObjectInfo:
        """Make C{data} the object C{key}; returns its info."""
        info = ObjectInfo(
            key=key,
            size=len(data),
            mtime=self._now(),
            etag=etag,
            crc64=crc64(data),
            metadata=dict(metadata),
        )
        if key not in self._objects:
            insort(self._keys, key)
        self._objects[key] = _Object(data, info)
        return replace(info, request_id=self._request_id)

    def _upload_of(self, key: str, upload_id: str) -> _Upload:
        """@raise NoSuchUpload: no such upload of C{key} (as COS answers)."""
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise NoSuchUpload(f"{upload_id} is not an upload of {key!r}")
        return upload

    def _add_part(self, upload: _Upload, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= MAX_PARTS:
            raise StoreError(f"part number {number}: not in 1..{MAX_PARTS}")
        if len(data) > MAX_PART_SIZE:
            raise StoreError(f"part {number}: {len(data)} bytes is over a part")
        part = PartInfo(
            number=number,
            etag=_md5(data),
            size=len(data),
            crc64=crc64(data),
            mtime=self._now(),
        )
        upload.parts[number] = (part, data)
        return part

    # -- IObjectStore ---------------------------------------------------------

    def head(self, key: str) -> Deferred[ObjectInfo]:
        return self._request("head", self._head, key)

    def _head(self, key: str) -> ObjectInfo:
        return replace(self._get(key).info, request_id=self._request_id)

    def list(
        self,
        prefix: str,
        delimiter: str = "/",
        marker: str = "",
        max_keys: int = MAX_LIST_KEYS,
    ) -> Deferred[ListPage]:
        return self._request("list", self._list, prefix, delimiter, marker, max_keys)

    def _list(
        self, prefix: str, delimiter: str, marker: str, max_keys: int
    ) -> ListPage:
        if max_keys < 1:
            raise StoreError(f"max_keys {max_keys}: a page holds at least one key")
        max_keys = min(max_keys, MAX_LIST_KEYS)
        keys = self._keys
        i = bisect_left(keys, prefix)
        if marker:
            i = max(i, bisect_right(keys, marker))
            cut = marker.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0 and marker.startswith(prefix):
                # The marker is in a common prefix already listed: go past it.
                i = self._past(marker[: cut + len(delimiter)], i)
        objects: builtins.list[ObjectInfo] = []
        prefixes: builtins.list[str] = []
        last: Optional[str] = None
        truncated = False
        while i < len(keys) and keys[i].startswith(prefix):
            if len(objects) + len(prefixes) == max_keys:
                truncated = True
                break
            key = keys[i]
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                last = key[: cut + len(delimiter)]
                prefixes.append(last)
                i = self._past(last, i)
                continue
            info = self._objects[key].info
            # What GET Bucket says of an object: no metadata, no CRC.
            objects.append(ObjectInfo(key, info.size, info.mtime, info.etag))
            last = key
            i += 1
        return ListPage(objects, prefixes, last if truncated else None)

    def open(
        self, key: str, offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IByteSource]:
        self.opened.append((key, offset, end))
        return self._request("open", self._open, key, offset, end)

    def _open(self, key: str, offset: int, end: Optional[int]) -> IByteSource:
        check_read_range(key, offset, end)
        stored = self._get(key)
        info = replace(stored.info, request_id=self._request_id)
        source = MemorySource(self, info, stored.data, offset, end)
        self._sources.add(source)
        return source

    def put(
        self,
        key: str,
        data: bytes | memoryview,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        return self._request("put", self._put, key, data, metadata)

    def _put(
        self, key: str, data: bytes | memoryview, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        self._check_key(key)
        if len(data) > MAX_PUT_SIZE:
            raise StoreError(f"PUT {key}: {len(data)} bytes is over COS's PUT limit")
        data = bytes(data)
        return self._store(key, data, _metadata(metadata), _md5(data))

    def delete(self, key: str) -> Deferred[None]:
        return self._request("delete", self._delete, key)

    def _delete(self, key: str) -> None:
        self._check_key(key)
        if self._objects.pop(key, None) is not None:
            del self._keys[bisect_left(self._keys, key)]

    def copy(
        self,
        source: str,
        destination: str,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        return self._request("copy", self._copy, source, destination, metadata)

    def _copy(
        self, source: str, destination: str, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        stored = self._get(source)
        self._check_key(destination)
        # COS copies the source's metadata unless told to replace it.
        kept = stored.info.metadata if metadata is None else _metadata(metadata)
        return self._store(destination, stored.data, kept, stored.info.etag or "")

    def create_multipart(
        self, key: str, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[str]:
        return self._request("create_multipart", self._create_multipart, key, metadata)

    def _create_multipart(self, key: str, metadata: Optional[Mapping[str, str]]) -> str:
        self._check_key(key)
        upload_id = uuid.uuid4().hex
        self._uploads[upload_id] = _Upload(key, self._now(), _metadata(metadata))
        return upload_id

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> Deferred[PartInfo]:
        return self._request(
            "upload_part", self._upload_part, key, upload_id, number, data
        )

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> PartInfo:
        return self._add_part(self._upload_of(key, upload_id), number, bytes(data))

    def upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> Deferred[PartInfo]:
        return self._request(
            "upload_part_copy",
            self._upload_part_copy,
            key,
            upload_id,
            number,
            source,
            first,
            last,
        )

    def _upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> PartInfo:
        stored = self._get(source)
        check_copy_range(source, first, last, stored.info.size)
        upload = self._upload_of(key, upload_id)
        return self._add_part(upload, number, stored.data[first : last + 1])

    def list_parts(self, key: str, upload_id: str) -> Deferred[builtins.list[PartInfo]]:
        return self._request("list_parts", self._list_parts, key, upload_id)

    def _list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        parts = self._upload_of(key, upload_id).parts
        return [parts[n][0] for n in sorted(parts)]

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> Deferred[ObjectInfo]:
        return self._request(
            "complete_multipart", self._complete, key, upload_id, builtins.list(parts)
        )

    def _complete(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> ObjectInfo:
        upload = self._upload_of(key, upload_id)
        ordered = sorted(parts, key=lambda p: p.number)
        if not ordered:
            raise StoreError(f"COMPLETE {key}: no parts")
        chunks = []
        for n, part in enumerate(ordered):
            stored = upload.parts.get(part.number)
            if stored is None or stored[0].etag != part.etag:
                raise StoreError(f"COMPLETE {key}: part {part.number} is not stored")
            if n and ordered[n - 1].number == part.number:
                raise StoreError(f"COMPLETE {key}: part {part.number} given twice")
            size = stored[0].size
            if n < len(ordered) - 1 and size < self._min_part_size:
                raise StoreError(
                    f"COMPLETE {key}: part {part.number} of {size} bytes is too small"
                )
            chunks.append(stored[1])
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in ordered))
        etag = f"{digest.hexdigest()}-{len(ordered)}"
        del self._uploads[upload_id]
        return self._store(key, b"".join(chunks), upload.metadata, etag)

    def abort_multipart(self, key: str, upload_id: str) -> Deferred[None]:
        return self._request("abort_multipart", self._abort, key, upload_id)

    def _abort(self, key: str, upload_id: str) -> None:
        upload = self._uploads.get(upload_id)
        if upload is not None and upload.key == key:
            del self._uploads[upload_id]

    def list_multipart(
        self, prefix: str = ""
    ) -> Deferred[builtins.list[PendingUpload]]:
        return self._request("list_multipart", self._list_multipart, prefix)

    def _list_multipart(self, prefix: str) -> builtins.list[PendingUpload]:
        found = [
            PendingUpload(upload.key, upload_id, upload.initiated)
            for upload_id, upload in self._uploads.items()
            if upload.key.startswith(prefix)
        ]
        return sorted(found, key=lambda u: (u.key, u.initiated, u.upload_id))
