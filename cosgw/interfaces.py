"""
The boundary between cosgw's file-system layer and an object store.

Everything above this module (vfs, transfer, the protocol frontends) talks to
storage only through L{IObjectStore}; everything below it (COS over the SDK, a
local directory) implements it.  The interface speaks in object-store terms on
purpose: keys, prefixes, pages, multipart uploads.  Directories, permissions
and paths are the business of L{cosgw.vfs}, not of a store.

Every method returns a L{Deferred}.  A store must never block the reactor
thread: blocking work (SDK calls, file I/O) runs in the store's own thread
pool.  Failures are the exceptions defined here, so the layers above can map
them without knowing which backend raised them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from zope.interface import Attribute, Interface

# COS limits that shape the transfer code (see ARCHITECTURE.md).
MIN_PART_SIZE = 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
MAX_PUT_SIZE = 5 * 1024**3
MAX_LIST_KEYS = 1000
MAX_KEY_BYTES = 850


@dataclass(frozen=True)
class ObjectInfo:
    """
    What a store knows about one object.

    C{mtime} is seconds since the epoch (UTC).  C{crc64} is COS's
    CRC-64/ECMA of the whole object when the store has one, else None.
    """

    key: str
    size: int
    mtime: float
    etag: Optional[str] = None
    crc64: Optional[int] = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_id: Optional[str] = None


@dataclass(frozen=True)
class ListPage:
    """
    One page of a delimited listing.

    C{objects} and C{prefixes} are each sorted by key; C{next_marker} is the
    marker for the next page, or None when this is the last page.
    """

    objects: Sequence[ObjectInfo]
    prefixes: Sequence[str]
    next_marker: Optional[str]


@dataclass(frozen=True)
class PartInfo:
    """
    A part stored in a multipart upload, as CompleteMultipartUpload needs it.

    C{crc64} is the CRC-64/ECMA of the part's bytes when the store gave or
    computed one, else None.  C{mtime} is when the store stored the part, in
    seconds since the epoch (UTC); 0.0 when unknown.
    """

    number: int
    etag: str
    size: int
    crc64: Optional[int] = None
    mtime: float = 0.0


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload found in the store."""

    key: str
    upload_id: str
    initiated: float


class StoreError(Exception):
    """
    A store operation failed.  C{request_id} is the store's id for the failed
    request (COS's x-cos-request-id) so the log can name it.
    """

    def __init__(self, message: str = "", request_id: Optional[str] = None):
        super().__init__(message)
        self.request_id = request_id


class NoSuchKey(StoreError):
    """The object does not exist."""


class NoSuchUpload(StoreError):
    """The multipart upload does not exist (completed, aborted or expired)."""


class KeyConflict(StoreError):
    """
    The key cannot be written because of what is already there; only a
    store with file-system limits (a file and a directory of the same name)
    raises it.
    """


class StoreUnavailable(StoreError):
    """The store could not be reached or refused to serve (5xx, network)."""


class IntegrityError(StoreError):
    """
    Bytes read or written do not match what the store says it holds:
    a short read, a length mismatch or a CRC-64 mismatch.
    """


class IByteSource(Interface):
    """
    A stream of an object's bytes from some offset, opened by
    L{IObjectStore.open}.  A consumer reads it chunk by chunk; the source
    checks the byte count (and the CRC-64 when it covers the whole object)
    and fails the last read with L{IntegrityError} when they do not match.
    """

    info = Attribute("L{ObjectInfo} of the whole object.")
    offset = Attribute("The offset of the first byte this source delivers.")
    length = Attribute("How many bytes this source will deliver.")

    def read(size: int):  # type: ignore[no-untyped-def]
        """
        Read up to C{size} bytes.

        @return: A Deferred firing with bytes, C{b""} at the end; failing
            with L{IntegrityError} if the stream ended short or corrupt, or
            L{StoreError}.  At most one read may be outstanding.
        """

    def close():  # type: ignore[no-untyped-def]
        """
        Release the stream (the HTTP response, the file).  Safe to call at
        any time, more than once.

        @return: A Deferred firing with None.
        """


class IObjectStore(Interface):
    """
    A flat namespace of keys holding immutable objects, with COS semantics.

    Keys are str (Unicode); a key ending in C{/} is a directory marker.
    """

    description = Attribute("Where the store is, for log lines (no secrets).")

    def head(key: str):  # type: ignore[no-untyped-def]
        """
        @return: Deferred firing with L{ObjectInfo}; fails with L{NoSuchKey}.
        """

    def list(  # type: ignore[no-untyped-def]
        prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ):
        """
        List keys starting with C{prefix} and greater than C{marker}, rolled
        up at C{delimiter} into common prefixes (no rolling up when the
        delimiter is empty).

        @return: Deferred firing with a L{ListPage} of at most C{max_keys}
            entries (objects plus prefixes).
        """

    def open(key: str, offset: int = 0):  # type: ignore[no-untyped-def]
        """
        Start reading C{key} at C{offset}.

        @return: Deferred firing with an L{IByteSource}; fails with
            L{NoSuchKey}.  An offset at or past the end gives an empty source.
        """

    def put(  # type: ignore[no-untyped-def]
        key: str, data: bytes, metadata: Optional[Mapping[str, str]] = None
    ):
        """
        Store C{data} as one object, replacing any object of that key.

        @return: Deferred firing with the new L{ObjectInfo} once the store
            has confirmed it.
        """

    def delete(key: str):  # type: ignore[no-untyped-def]
        """
        Delete an object.  Deleting a missing key succeeds (as in COS).

        @return: Deferred firing with None.
        """

    def copy(  # type: ignore[no-untyped-def]
        source: str, destination: str, metadata: Optional[Mapping[str, str]] = None
    ):
        """
        Server-side copy of any size.  C{metadata} replaces the source's
        user metadata when given.

        @return: Deferred firing with the L{ObjectInfo} of the copy; fails
            with L{NoSuchKey} if the source is missing.
        """

    def create_multipart(  # type: ignore[no-untyped-def]
        key: str, metadata: Optional[Mapping[str, str]] = None
    ):
        """
        @return: Deferred firing with the upload id (str).
        """

    def upload_part(  # type: ignore[no-untyped-def]
        key: str, upload_id: str, number: int, data: bytes
    ):
        """
        Store part C{number} (1-based) of an upload.  Parts may arrive in
        any order and be retried.

        @return: Deferred firing with L{PartInfo}; fails with
            L{IntegrityError} if the store's checksum of the part disagrees.
        """

    def upload_part_copy(  # type: ignore[no-untyped-def]
        key: str, upload_id: str, number: int, source: str, first: int, last: int
    ):
        """
        Make part C{number} of an upload the bytes C{first} to C{last}
        (inclusive, 0-based) of the existing object C{source}, copied inside
        the store: no byte passes through the caller.  The source is left
        as it is and stays readable.  Like any part, a copied part other
        than the last must be at least L{MIN_PART_SIZE} bytes, and no part
        may exceed L{MAX_PART_SIZE}.

        @return: Deferred firing with the L{PartInfo} of the part (its
            C{size} is C{last - first + 1}; C{crc64} when the store knows
            it); failing with L{NoSuchKey} if the source is missing (checked
            first), L{NoSuchUpload} if the upload is, and L{StoreError} if
            the range is empty, too large or not inside the source.
        """

    def list_parts(key: str, upload_id: str):  # type: ignore[no-untyped-def]
        """
        The parts an unfinished upload holds so far, whoever uploaded them:
        what lets a dropped upload be resumed, even after a restart.

        @return: Deferred firing with a list of L{PartInfo} sorted by number
            (each with its size, ETag and mtime; C{crc64} only when the store
            lists it), empty when no part is stored yet; failing with
            L{NoSuchUpload} if the upload does not exist (never begun,
            completed or aborted).
        """

    def complete_multipart(  # type: ignore[no-untyped-def]
        key: str, upload_id: str, parts: Sequence[PartInfo]
    ):
        """
        Make the object visible from C{parts} (sorted by number).

        @return: Deferred firing with the new L{ObjectInfo}.
        """

    def abort_multipart(key: str, upload_id: str):  # type: ignore[no-untyped-def]
        """
        Discard an upload and its parts.  Aborting a missing upload succeeds.

        @return: Deferred firing with None.
        """

    def list_multipart(prefix: str = ""):  # type: ignore[no-untyped-def]
        """
        @return: Deferred firing with a list of L{PendingUpload} under
            C{prefix}: uploads begun and neither completed nor aborted.
        """
