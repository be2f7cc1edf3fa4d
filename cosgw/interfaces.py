"""
cosgw's layer boundaries: between the file-system layer and an object store
(L{IObjectStore}, L{IByteSource}), and between the protocol frontends and
the file system (L{IFileSystem} and the objects it hands out: L{IReader},
L{IUpload}, L{IRandomAccessFile}, L{IListing}).

Everything above the store boundary (vfs, transfer) talks to storage only
through L{IObjectStore}; everything below it (COS over the SDK, a local
directory) implements it.  That interface speaks in object-store terms on
purpose: keys, prefixes, pages, multipart uploads.  Directories,
permissions and paths are the business of L{cosgw.vfs}, and a frontend
reaches storage only through L{IFileSystem}, whose errors are
L{cosgw.vfs.FSError}s (store errors never pass it).

Every method that does I/O returns a L{Deferred}.  A store must never block
the reactor thread: blocking work (SDK calls, file I/O) runs in the store's
own thread pool.  Store failures are the exceptions defined here, so the
layers above can map them without knowing which backend raised them.
"""

from __future__ import annotations

# IObjectStore's method named `list` shadows the builtin inside the class body.
import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from cosgw.transfer.settings import RandomAccessSettings

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
    #: Attempts the store made beyond the first to get this answer (its
    #: own retries of a transient failure); for the transfer's audit record.
    retries: int = 0


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
    #: Attempts the store made beyond the first to store the part.
    retries: int = 0


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload found in the store."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class Entry:
    """A directory entry or the result of a stat, as a frontend sees it."""

    name: str
    is_dir: bool
    size: int
    mtime: float
    #: COS's CRC-64 of a file, when a stat (HEAD) gave one.
    crc64: Optional[int] = None


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


class KeyRefused(StoreError):
    """
    The store cannot hold a key of this form whatever is there: only a
    store with file-system limits raises it (a local directory's longest
    name, 255 bytes on most file systems).
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

    def read(size: int) -> Deferred[bytes]:
        """
        Read up to C{size} bytes.

        @return: A Deferred firing with bytes, C{b""} at the end; failing
            with L{IntegrityError} if the stream ended short or corrupt, or
            L{StoreError}.  At most one read may be outstanding.
        """

    def close() -> Deferred[None]:
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

    def head(key: str) -> Deferred[ObjectInfo]:
        """
        @return: Deferred firing with L{ObjectInfo}; fails with L{NoSuchKey}.
        """

    def list(
        prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ) -> Deferred[ListPage]:
        """
        List keys starting with C{prefix} and greater than C{marker}, rolled
        up at C{delimiter} into common prefixes (no rolling up when the
        delimiter is empty).

        @return: Deferred firing with a L{ListPage} of at most C{max_keys}
            entries (objects plus prefixes).
        """

    def open(
        key: str, offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IByteSource]:
        """
        Start reading C{key} at C{offset}, up to C{end} (exclusive; above
        C{offset}) when given: a bounded range, so the store sends, and
        bills, no more than the reader will take.  None reads to the end of
        the object, and from offset 0 asks for no range at all.

        @return: Deferred firing with an L{IByteSource}; fails with
            L{NoSuchKey}.  An offset at or past the end gives an empty
            source; an C{end} past it stops at the object's end.
        """

    def put(
        key: str, data: bytes | memoryview, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[ObjectInfo]:
        """
        Store C{data} as one object, replacing any object of that key.
        C{data} may be a view (of an upload's part block): the store reads
        it until the Deferred fires and keeps no reference to it.

        @return: Deferred firing with the new L{ObjectInfo} once the store
            has confirmed it.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Delete an object.  Deleting a missing key succeeds (as in COS).

        @return: Deferred firing with None.
        """

    def copy(
        source: str, destination: str, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[ObjectInfo]:
        """
        Server-side copy of any size.  C{metadata} replaces the source's
        user metadata when given.

        @return: Deferred firing with the L{ObjectInfo} of the copy; fails
            with L{NoSuchKey} if the source is missing.
        """

    def create_multipart(
        key: str, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[str]:
        """
        @return: Deferred firing with the upload id (str).
        """

    def upload_part(
        key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> Deferred[PartInfo]:
        """
        Store part C{number} (1-based) of an upload.  Parts may arrive in
        any order and be retried.  C{data} may be a view, as for L{put}.

        @return: Deferred firing with L{PartInfo}; fails with
            L{IntegrityError} if the store's checksum of the part disagrees.
        """

    def upload_part_copy(
        key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> Deferred[PartInfo]:
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

    def list_parts(key: str, upload_id: str) -> Deferred[builtins.list[PartInfo]]:
        """
        The parts an unfinished upload holds so far, whoever uploaded them:
        what lets a dropped upload be resumed, even after a restart.

        @return: Deferred firing with a list of L{PartInfo} sorted by number
            (each with its size, ETag and mtime; C{crc64} only when the store
            lists it), empty when no part is stored yet; failing with
            L{NoSuchUpload} if the upload does not exist (never begun,
            completed or aborted).
        """

    def complete_multipart(
        key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> Deferred[ObjectInfo]:
        """
        Make the object visible from C{parts} (sorted by number).

        @return: Deferred firing with the new L{ObjectInfo}.
        """

    def abort_multipart(key: str, upload_id: str) -> Deferred[None]:
        """
        Discard an upload and its parts.  Aborting a missing upload succeeds.

        @return: Deferred firing with None.
        """

    def list_multipart(prefix: str = "") -> Deferred[builtins.list[PendingUpload]]:
        """
        @return: Deferred firing with a list of L{PendingUpload} under
            C{prefix}: uploads begun and neither completed nor aborted.
        """


# -- the file system, as the frontends see it ---------------------------------


class IListing(Interface):
    """A directory listing that arrives one store page at a time."""

    def next_page() -> Deferred[Optional[builtins.list[Entry]]]:
        """
        @return: Deferred firing with the next entries, or None at the end;
            the first call fails with C{NotFound} if there is nothing at
            the path.  A file's listing is the file itself.
        """

    def close(error: Optional[BaseException] = None) -> None:
        """
        The frontend stops reading the listing before its end (the client
        went away, an ABOR: C{error} says why); after the end, or more than
        once, it does nothing.  The listing's audit event then says it was
        cut short.
        """


class IReader(Interface):
    """
    A file opened for reading (L{IFileSystem.open_reader}), with the user's
    download rate and error translation inside.  It is read either as a
    stream (L{send}) or at offsets (L{read}), not both.
    """

    entry = Attribute("The file's L{Entry}.")
    offset = Attribute("The offset the file was opened at.")
    length = Attribute("The bytes from C{offset} to the end.")
    sent = Attribute("Bytes L{send} has written so far.")

    def send(consumer: IConsumer) -> Deferred[int]:
        """
        Stream the file from C{offset} to its end into C{consumer}, with
        backpressure, at the user's download rate.

        @return: Deferred firing with the byte count once every byte is
            handed on; failing with C{IntegrityFailure} or C{StoreFailure}
            (the consumer then stays registered: drop the connection, so a
            broken stream never looks whole), or C{TransferStopped} when
            the consumer went.
        """

    def read(offset: int, length: int) -> Deferred[bytes]:
        """
        Up to C{length} bytes at C{offset}, when the download rate lets them
        go; C{b""} at or past the end.  Nearby reads share one stream.

        @return: Deferred failing with C{IntegrityFailure} (the file changed
            while being read), C{StoreFailure}, or C{TransferStopped} once
            closed.
        """

    def close(error: Optional[BaseException] = None) -> None:
        """
        Release the stream (any time, more than once).  C{error}: why the
        frontend ends the download although the file system saw nothing
        wrong (its data connection failed after every byte was handed on,
        the client went away); the download is then recorded as
        interrupted, not complete.
        """


class IUpload(IConsumer):
    """
    An upload of one file (L{IFileSystem.open_upload}), with the user's
    quota, size limit, upload rate and error translation inside.  Nothing is
    visible until L{commit} succeeds.

    As an L{IConsumer} it takes a stream: the client's connection registers
    as its (push) producer and is paused while the store's parts in flight
    are full or the user is over their rate, and stopped (C{stopProducing})
    when the upload fails on the store's side, so the client stops sending.
    """

    received = Attribute("Bytes received from the client so far.")
    base = Attribute("The offset the client's bytes start at (resume, append).")
    failed = Attribute("Whether the upload failed on the store's side.")

    def write_at(offset: int, data: bytes) -> Optional[Deferred[None]]:
        """
        Take C{data} at C{offset} (an upload opened for writes at offsets).

        @return: None when the write may be acknowledged at once, else a
            Deferred firing when it may.
        @raise FSError: the write cannot be honoured (C{WriteRefused}) or
            the upload already failed.
        """

    def commit(size: Optional[int] = None) -> Deferred[ObjectInfo]:
        """
        Store the file: the client's bytes are all in.

        @param size: the final size a client set, when it set one.
        @return: Deferred firing with the stored object's L{ObjectInfo} once
            the store confirmed it; failing with the C{FSError} that failed
            the upload (nothing is then left in the store).
        """

    def interrupt(reason: str = "the client went away") -> Deferred[int]:
        """
        The client went away mid-upload (or the gateway stops: C{reason}
        says which, for the audit event): keep what is stored for a resume
        (when the settings allow and no file is visible under the name),
        else discard it.

        @return: Deferred firing with the bytes kept.
        """

    def abort(reason: Optional[str] = None) -> Deferred[None]:
        """
        Discard the upload; nothing is kept.  C{reason}, when given, is
        logged.

        @return: Deferred firing once the store is settled.
        """


class IRandomAccessFile(Interface):
    """
    A file opened with POSIX open's flags (L{IFileSystem.open_file}) and
    then read and written at offsets, with the user's permissions, quota,
    rates and error translation inside.
    """

    entry = Attribute("An L{Entry} with the size as written so far.")
    writable = Attribute("Whether the file was opened for writing.")

    def read(offset: int, length: int) -> Deferred[bytes]:
        """
        Up to C{length} bytes at C{offset}; C{b""} at the end.

        @raise FSError: C{NotSupported} while the file streams to the store.
        """

    def write(offset: int, data: bytes) -> Optional[Deferred[None]]:
        """
        Write C{data} at C{offset}.

        @return: None when the write may be acknowledged at once, else a
            Deferred firing when it may; failing (or raising) with the
            C{FSError} that failed the file.
        """

    def set_attributes(
        size: Optional[int] = None, mtime: Optional[float] = None
    ) -> Deferred[None]:
        """Set the file's final size or its time (stored with the file)."""

    def close() -> Deferred[Optional[ObjectInfo]]:
        """
        Store what was written.

        @return: Deferred firing with the stored object's L{ObjectInfo},
            None when nothing was written; failing with what failed it.
        """

    def abort(reason: str) -> None:
        """The client went away: nothing of the file may remain."""


class IFileSystem(Interface):
    """
    The file system of one logged-in user: paths as lists of segments below
    their home, their permissions and limits.  Every Deferred fails with a
    C{cosgw.vfs.FSError}; nothing below it reaches a frontend.
    """

    user = Attribute("The user's name, for log lines.")
    permissions = Attribute("The permissions the user holds (frozenset of str).")
    usage = Attribute("The user's quota usage, or None.")

    def key(segments: Sequence[str]) -> str:
        """The object key of C{segments} (MLST's unique fact)."""

    def dir_prefix(segments: Sequence[str]) -> str:
        """The key prefix of the directory at C{segments}."""

    def require(permission: str, segments: Sequence[str]) -> None:
        """@raise PermissionDenied: the user lacks C{permission}."""

    def stat(segments: Sequence[str]) -> Deferred[Entry]:
        """@return: Deferred firing with an L{Entry}."""

    def require_directory(segments: Sequence[str]) -> Deferred[None]:
        """Fails with C{NotFound} or C{NotADirectory}."""

    def listing(segments: Sequence[str]) -> IListing:
        """A paged listing of a directory (or the single file)."""

    def list_all(segments: Sequence[str]) -> Deferred[builtins.list[Entry]]:
        """Every entry at once; for small directories."""

    def restart_size(segments: Sequence[str]) -> Deferred[int]:
        """
        The size an upload of the file can resume after (FTP's SIZE): the
        file's size when one is visible, else what an interrupted upload of
        the name kept.
        """

    def open_reader(
        segments: Sequence[str], offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IReader]:
        """Open a file for reading from C{offset} (to C{end}, exclusive)."""

    def open_upload(
        segments: Sequence[str],
        offset: int = 0,
        append: bool = False,
        size_hint: Optional[int] = None,
    ) -> Deferred[IUpload]:
        """
        Start an upload replacing the file; C{offset} keeps that many bytes
        of the stored file or of an interrupted upload (REST + STOR);
        C{append} starts after them (APPE).
        """

    def open_file(
        segments: Sequence[str],
        read: bool = False,
        write: bool = False,
        append: bool = False,
        create: bool = False,
        truncate: bool = False,
        exclusive: bool = False,
        settings: Optional[RandomAccessSettings] = None,
        producer: Optional[IPushProducer] = None,
    ) -> Deferred[IRandomAccessFile]:
        """
        Open a file with POSIX open's flags, for reads and writes at
        offsets; C{producer} (the client's input) is paused while writes
        wait.
        """

    def set_attributes(
        segments: Sequence[str],
        size: Optional[int] = None,
        mtime: Optional[float] = None,
    ) -> Deferred[None]:
        """Change a file's size (to 0 only) or its time."""

    def set_mtime(segments: Sequence[str], when: float) -> Deferred[None]:
        """Set a file's modification time (MFMT)."""

    def digest(
        segments: Sequence[str],
        algorithm: str,
        start: int = 0,
        end: Optional[int] = None,
    ) -> Deferred[tuple[str, int, int]]:
        """(hex digest, first byte, last byte) of a range of a file."""

    def mkdir(segments: Sequence[str]) -> Deferred[None]:
        """Make a directory."""

    def rmdir(segments: Sequence[str]) -> Deferred[None]:
        """Remove an empty directory."""

    def remove(segments: Sequence[str]) -> Deferred[None]:
        """Remove a file."""

    def rename(
        source: Sequence[str], target: Sequence[str], replace: bool = True
    ) -> Deferred[None]:
        """
        Rename a file or a directory tree; with C{replace} False, fails
        with C{AlreadyExists} when the target exists (SFTP's RENAME).
        """

    def copy(
        source: Sequence[str], target: Sequence[str], replace: bool = True
    ) -> Deferred[None]:
        """
        Copy a file server-side; with C{replace} False, fails with
        C{AlreadyExists} when the target exists.
        """
