"""
A file system over an object store, one per logged-in user.

Both frontends (FTP, SFTP) see the same thing through this module, so every
rule about names, homes, directories and permissions lives here once:

  - Paths are lists of segments below the user's home; L{resolve} turns a
    client's path (absolute or relative, with C{.} and C{..}) into segments
    and clamps C{..} at the home, like a chroot.  A segment may not be empty,
    C{.}, C{..}, contain C{/}, NUL or another control character, and the key
    it makes must fit COS's 850 bytes.  Nothing a client sends (percent
    escapes included: they are literal characters here) can name a key
    outside C{home/}.
  - A directory is a common prefix; an empty one is a zero-byte marker
    object C{dir/}.  Removing the last entry of a directory writes its marker,
    so a directory does not vanish under a client that is in it.
  - Errors are the L{FSError} subclasses below; store errors are translated
    here (L{translate}) and each frontend maps these to its replies in one
    place.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.config import ALL_PERMISSIONS  # noqa: F401 (re-exported)
from cosgw.interfaces import (
    MAX_KEY_BYTES,
    MIN_PART_SIZE,
    IByteSource,
    IntegrityError,
    IObjectStore,
    KeyConflict,
    NoSuchKey,
    NoSuchUpload,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
    StoreUnavailable,
)
from cosgw.policy.quota import QuotaFull, Usage
from cosgw.transfer import (
    Download,
    QuotaReached,
    TransferSettings,
    UploadRegistry,
    UploadTooLarge,
    UploadWriter,
    contiguous_parts,
)

log = Logger()

T = TypeVar("T")


# -- errors -----------------------------------------------------------------


class FSError(Exception):
    """
    A file-system operation was refused or failed.  C{path} is the path as
    the user sees it ("/a/b"); C{request_id} the store's, when it has one.
    """

    def __init__(
        self, path: str, message: str = "", request_id: Optional[str] = None
    ) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message or self.default_message
        self.request_id = request_id

    default_message = "failed"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class NotFound(FSError):
    default_message = "no such file or directory"


class AlreadyExists(FSError):
    default_message = "already exists"


class PermissionDenied(FSError):
    default_message = "permission denied"


class NotADirectory(FSError):
    default_message = "not a directory"


class IsADirectory(FSError):
    default_message = "is a directory"


class NotEmpty(FSError):
    default_message = "directory not empty"


class QuotaExceeded(FSError):
    default_message = "quota exceeded"


class FileTooLarge(FSError):
    default_message = "file too large"


class InvalidName(FSError):
    default_message = "invalid file name"


class InvalidOffset(FSError):
    """A restart offset (REST) beyond what the file holds."""

    default_message = "restart offset beyond the end of the file"


class StoreFailure(FSError):
    """The store failed or could not be reached; the operation may be retried."""

    default_message = "storage error"


class IntegrityFailure(StoreFailure):
    default_message = "data integrity check failed"


def translate(failure: Failure, path: str) -> Failure:
    """Store errors become file-system errors; FSErrors pass through."""
    e = failure.value
    if isinstance(e, FSError):
        return failure
    request_id = getattr(e, "request_id", None)
    if isinstance(e, NoSuchKey):
        return Failure(NotFound(path, request_id=request_id))
    if isinstance(e, KeyConflict):
        return Failure(AlreadyExists(path, str(e), request_id))
    if isinstance(e, UploadTooLarge):
        return Failure(FileTooLarge(path, request_id=request_id))
    if isinstance(e, QuotaReached):
        return Failure(QuotaExceeded(path, "quota exceeded", request_id))
    if isinstance(e, QuotaFull):
        return Failure(QuotaExceeded(path, e.reason, request_id))
    if isinstance(e, IntegrityError):
        log.error(
            "integrity check failed for {path}: {error} (request {request_id})",
            path=path,
            error=str(e),
            request_id=request_id,
        )
        return Failure(IntegrityFailure(path, request_id=request_id))
    if isinstance(e, (StoreUnavailable, StoreError)):
        log.failure(
            "store error on {path} (request {request_id})",
            failure,
            path=path,
            request_id=request_id,
        )
        return Failure(StoreFailure(path, request_id=request_id))
    return failure


# -- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A directory entry or the result of a stat."""

    name: str
    is_dir: bool
    size: int
    mtime: float
    #: COS's CRC-64 of a file, when a stat (HEAD) gave one.
    crc64: Optional[int] = None


#: Per directory, the modification times clients set (MFMT, setstat), so
#: listings can show them: COS's listings carry no user metadata.  An entry
#: applies only while the object still has the size and store time it had
#: right after the time was set, so a later upload makes it stale by itself.
MTIME_INDEX = ".cosgw-mtimes.json"
_MTIME_INDEX_LIMIT = 10_000


def client_mtime(info: ObjectInfo) -> float:
    """The time a client set (object metadata) if any, else the store's."""
    value = info.metadata.get("mtime")
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    return info.mtime


class _Crc32:
    """zlib's CRC-32 with hashlib's update/hexdigest shape."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


#: Digest algorithms by their draft-bryan-ftpext-hash names.
DIGESTS: dict[str, Callable[[], Any]] = {
    "SHA-256": hashlib.sha256,
    "SHA-512": hashlib.sha512,
    "SHA-1": hashlib.sha1,
    "MD5": hashlib.md5,
    "CRC32": _Crc32,
}


@dataclass(frozen=True)
class Resumable:
    """An interrupted upload with whole parts 1..k stored."""

    upload: PendingUpload
    parts: list[PartInfo]
    size: int


def home_prefix(home: str) -> str:
    """The key prefix of a home ("a/b" -> "a/b/"; the bucket root -> "")."""
    home = home.strip("/")
    return home + "/" if home else ""


def is_hidden_key(key: str) -> bool:
    """Keys the gateway keeps for itself: never listed, never counted."""
    return key.rsplit("/", 1)[-1] == MTIME_INDEX


def check_name(name: str, path: str) -> None:
    """@raise InvalidName: C{name} cannot be a path segment."""
    if name in ("", ".", "..", MTIME_INDEX) or "/" in name:
        raise InvalidName(path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidName(path, "control characters are not allowed in names")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(path, "names must be valid UTF-8") from None


def resolve(cwd: Sequence[str], path: str) -> list[str]:
    """
    The segments of C{path} seen from C{cwd}.  C{..} at the top stays at the
    top, as in a chroot.

    @raise InvalidName: a segment is not a valid name.
    """
    segments = [] if path.startswith("/") else list(cwd)
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if segments:
                segments.pop()
            continue
        check_name(part, path)
        segments.append(part)
    return segments


def display(segments: Sequence[str]) -> str:
    """The path a user sees for C{segments}."""
    return "/" + "/".join(segments)


# -- the file system --------------------------------------------------------


class ObjectFileSystem:
    """
    One user's view of a store: a home prefix, permissions and transfer
    settings.  All methods return Deferreds failing with L{FSError}s.
    """

    def __init__(
        self,
        store: IObjectStore,
        home: str,
        permissions: frozenset[str],
        settings: TransferSettings,
        user: str = "",
        registry: Optional[UploadRegistry] = None,
        runner: Optional[Any] = None,
        usage: Optional[Usage] = None,
        upload_limit: Optional[Any] = None,
        download_limit: Optional[Any] = None,
    ) -> None:
        """
        @param usage: the user's quota usage, shared by all their sessions
            (None: no quota).
        @param upload_limit: the user's L{cosgw.policy.throttle.RateLimit} for
            bytes they send, shared by all their sessions; the frontends
            apply it.  C{download_limit} likewise for bytes they receive.
        """
        self.store = store
        self.prefix = home_prefix(home)
        self.permissions = frozenset(permissions)
        self.settings = settings
        self.user = user
        self.registry = registry if registry is not None else UploadRegistry()
        #: Runs CPU-bound work (hashing) in the gateway's pool; without one
        #: (unit tests) it runs inline.
        self.runner = runner
        self.usage = usage
        self.upload_limit = upload_limit
        self.download_limit = download_limit

    # -- names ------------------------------------------------------------

    def key(self, segments: Sequence[str]) -> str:
        """
        The object key of a file at C{segments}.

        @raise InvalidName: a segment is invalid or the key is too long.
        """
        path = display(segments)
        for s in segments:
            check_name(s, path)
        key = self.prefix + "/".join(segments)
        if len((key + "/").encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidName(path, "path too long")
        return key

    def dir_prefix(self, segments: Sequence[str]) -> str:
        """The key prefix of the directory at C{segments}."""
        return self.key(segments) + "/" if segments else self.prefix

    def require(self, permission: str, segments: Sequence[str]) -> None:
        """@raise PermissionDenied: the user lacks C{permission}."""
        if permission not in self.permissions:
            log.info(
                "{user}: {permission} refused on {path}",
                user=self.user,
                permission=permission,
                path=display(segments),
            )
            raise PermissionDenied(display(segments), f"{permission} not permitted")

    def _run(
        self, segments: Sequence[str], f: Callable[[], Awaitable[T]]
    ) -> Deferred[T]:
        path = display(segments)
        d = ensureDeferred(f())
        d.addErrback(translate, path)
        return d

    # -- queries ----------------------------------------------------------

    async def _stat(self, segments: Sequence[str]) -> Entry:
        if not segments:
            return Entry("/", True, 0, 0.0)
        key = self.key(segments)
        try:
            info = await self.store.head(key)
        except NoSuchKey:
            pass
        else:
            return Entry(segments[-1], False, info.size, client_mtime(info), info.crc64)
        page = await self.store.list(key + "/", delimiter="/", max_keys=1)
        if page.objects or page.prefixes:
            mtime = page.objects[0].mtime if page.objects else 0.0
            if page.objects and page.objects[0].key != key + "/":
                mtime = 0.0
            return Entry(segments[-1], True, 0, mtime)
        raise NotFound(display(segments))

    def stat(self, segments: Sequence[str]) -> Deferred[Entry]:
        """@return: Deferred firing with an L{Entry}; fails with L{NotFound}."""
        return self._run(segments, lambda: self._stat(segments))

    async def _require_dir(self, segments: Sequence[str]) -> None:
        entry = await self._stat(segments)
        if not entry.is_dir:
            raise NotADirectory(display(segments))

    def require_directory(self, segments: Sequence[str]) -> Deferred[None]:
        """For CWD: fails with L{NotFound} or L{NotADirectory}."""
        return self._run(segments, lambda: self._require_dir(segments))

    def listing(self, segments: Sequence[str]) -> Listing:
        """
        A paged listing of the directory (or the single file) at C{segments};
        see L{Listing}.  Needs the C{list} permission.
        """
        self.require("list", segments)
        return Listing(self, list(segments))

    async def _list_all(self, segments: Sequence[str]) -> list[Entry]:
        listing = Listing(self, list(segments))
        entries: list[Entry] = []
        while True:
            page = await listing.next_page()
            if page is None:
                return entries
            entries.extend(page)

    def list_all(self, segments: Sequence[str]) -> Deferred[list[Entry]]:
        """Every entry at once; for small directories and tests only."""
        self.require("list", segments)
        return self._run(segments, lambda: self._list_all(segments))

    # -- reading and writing ----------------------------------------------

    async def _open_read(self, segments: Sequence[str], offset: int) -> IByteSource:
        if not segments:
            raise IsADirectory("/")
        key = self.key(segments)
        try:
            source = await self.store.open(key, offset)
        except NoSuchKey:
            entry = await self._stat(segments)  # NotFound propagates
            if entry.is_dir:
                raise IsADirectory(display(segments)) from None
            raise
        if offset > source.info.size:
            source.close()
            raise InvalidOffset(
                display(segments),
                f"restart offset {offset} is beyond the file's {source.info.size} bytes",
            )
        return source

    def open_read(
        self, segments: Sequence[str], offset: int = 0
    ) -> Deferred[IByteSource]:
        """
        @return: Deferred firing with an L{IByteSource} from C{offset}; fails
            with L{NotFound}, L{IsADirectory}, L{PermissionDenied}.
        """
        self.require("download", segments)
        return self._run(segments, lambda: self._open_read(segments, offset))

    async def _open_write(
        self,
        segments: Sequence[str],
        offset: int,
        append: bool,
        size_hint: Optional[int],
        on_stop: Optional[Callable[[], None]],
    ) -> UploadWriter:
        if not segments:
            raise IsADirectory("/")
        key = self.key(segments)
        parent = segments[:-1]
        if parent:
            await self._require_dir(parent)
        try:
            existing: Optional[Entry] = await self._stat(segments)
        except NotFound:
            existing = None
        if existing is not None:
            if existing.is_dir:
                raise IsADirectory(display(segments))
            self.require("overwrite", segments)
        resumable = await self._resumable(key, existing)
        if append:
            # APPE: after the interrupted upload a client was told of
            # (SIZE), else after the whole file.
            if resumable is not None:
                offset = resumable.size
            elif existing is not None:
                offset = existing.size
        writer_args: dict[str, Any] = {
            "size_hint": size_hint,
            "on_stop": on_stop,
            "registry": self.registry,
        }
        if offset and resumable is not None and resumable.size == offset:
            log.info(
                "{user}: resuming the upload of {path} after {size} stored bytes",
                user=self.user,
                path=display(segments),
                size=offset,
            )
            writer_args["resume"] = (resumable.upload.upload_id, resumable.parts)
        elif offset and existing is not None and existing.size >= offset:
            # The first `offset` bytes of the existing object stay: copied
            # server-side when COS allows a part that small, else read.
            if offset >= MIN_PART_SIZE:
                writer_args["copy_prefix"] = (key, offset)
            else:
                writer_args["initial"] = await self._read_prefix(key, offset)
        elif offset:
            have = (
                resumable.size
                if resumable is not None
                else (existing.size if existing is not None else 0)
            )
            raise InvalidOffset(
                display(segments),
                f"cannot restart at {offset}: {have} bytes are stored",
            )
        if self.usage is not None:
            await self.usage.ensure()
            writer_args["budget"] = self.usage.reserve(
                replacing=existing.size if existing is not None else 0,
                new_file=existing is None,
            )
        return UploadWriter(self.store, key, self.settings, **writer_args)

    async def _read_prefix(self, key: str, length: int) -> bytes:
        source = await self.store.open(key, 0)
        chunks: list[bytes] = []
        got = 0
        try:
            while got < length:
                chunk = await source.read(min(length - got, MIN_PART_SIZE))
                if not chunk:
                    raise IntegrityError(f"{key}: ended before {length} bytes")
                chunks.append(chunk)
                got += len(chunk)
        finally:
            source.close()
        return b"".join(chunks)[:length]

    async def _resumable(
        self, key: str, existing: Optional[Entry]
    ) -> Optional[Resumable]:
        """
        The newest interrupted upload of C{key} that can be resumed: not
        being written by this gateway, begun after the object (if any) was
        last written, with whole parts 1..k stored.
        """
        if not self.settings.resume_uploads:
            return None
        uploads = [
            u
            for u in await self.store.list_multipart(key)
            if u.key == key and u.upload_id not in self.registry
        ]
        if existing is not None:
            uploads = [u for u in uploads if u.initiated >= existing.mtime - 1]
        for upload in sorted(uploads, key=lambda u: u.initiated, reverse=True):
            try:
                parts = contiguous_parts(
                    await self.store.list_parts(key, upload.upload_id)
                )
            except NoSuchUpload:
                continue
            if parts:
                return Resumable(upload, parts, sum(p.size for p in parts))
        return None

    async def _restart_size(self, segments: Sequence[str]) -> int:
        key = self.key(segments)
        try:
            existing: Optional[Entry] = await self._stat(segments)
        except NotFound:
            existing = None
        if existing is not None and existing.is_dir:
            raise IsADirectory(display(segments))
        resumable = await self._resumable(key, existing)
        if resumable is not None:
            return resumable.size
        if existing is None:
            raise NotFound(display(segments))
        return existing.size

    def restart_size(self, segments: Sequence[str]) -> Deferred[int]:
        """
        The size a client should resume an upload after, which is what FTP's
        SIZE answers: the bytes an interrupted upload of the file has stored
        (whole parts) when one can be resumed, else the file's size.  As on a
        disk where an interrupted STOR leaves a short file, except that here
        the old file stays whole and readable meanwhile.

        @return: Deferred firing with the size; fails with L{NotFound} or
            L{IsADirectory}.
        """
        return self._run(segments, lambda: self._restart_size(segments))

    def open_write(
        self,
        segments: Sequence[str],
        offset: int = 0,
        append: bool = False,
        size_hint: Optional[int] = None,
        on_stop: Optional[Callable[[], None]] = None,
    ) -> Deferred[UploadWriter]:
        """
        Start an upload that replaces (or creates) the file at C{segments}.
        Nothing is visible until the writer's C{finish} succeeds; the old
        object stays whole and readable until then.

        @param offset: A restart offset (REST n + STOR): the new object
            keeps the first C{offset} bytes, either of an interrupted upload
            that stored exactly that many (which is then continued), or of
            the existing file (copied server-side, never downloaded).
        @param append: APPE: like an offset at the end of the interrupted
            upload if there is one, else of the file, else a new file.
        @param on_stop: called if the upload fails on the store's side, so
            the protocol can stop the client sending.
        @return: Deferred firing with an L{UploadWriter}; fails with
            L{NotFound} (no parent directory), L{IsADirectory},
            L{PermissionDenied}, L{InvalidName}, L{InvalidOffset}.
        """
        self.require("upload", segments)
        return self._run(
            segments,
            lambda: self._open_write(segments, offset, append, size_hint, on_stop),
        )

    def interrupt(self, writer: UploadWriter, segments: Sequence[str]) -> Deferred[int]:
        """
        The client went away in the middle of an upload: keep what is stored
        for a resume (when the settings allow), else discard it.  Nothing
        appears under the file's name either way.

        @return: Deferred firing with the bytes kept for a resume.
        """
        if not self.settings.resume_uploads:
            return writer.abort().addCallback(lambda _: 0)

        def report(kept: int) -> int:
            log.info(
                "{user}: upload of {path} interrupted after {received} bytes; "
                "{kept} bytes kept for a resume",
                user=self.user,
                path=display(segments),
                received=writer.received,
                kept=kept,
            )
            return kept

        return writer.suspend().addCallback(report)

    def download(
        self, segments: Sequence[str], source: IByteSource, consumer: IConsumer
    ) -> tuple[Download, Deferred[int]]:
        """
        Stream C{source} (from L{open_read}) into C{consumer}.

        @return: The L{Download} (its C{sent} counts the bytes written) and a
            Deferred firing with the byte count once the consumer has all of
            them; failing with L{IntegrityFailure} or L{StoreFailure} when the
            stream broke, or with L{TransferStopped} when the consumer went.
        """
        download = Download(
            source, consumer, self.settings.read_chunk, self.settings.read_ahead
        )
        d = download.start()
        d.addErrback(translate, display(segments))
        return download, d

    async def _set_mtime(self, segments: Sequence[str], when: float) -> None:
        entry = await self._stat(segments)
        if entry.is_dir:
            raise IsADirectory(display(segments))
        key = self.key(segments)
        # An object's metadata can only change by copying it onto itself.
        info = await self.store.copy(key, key, {"mtime": f"{when:.0f}"})
        prefix = self.dir_prefix(segments[:-1])
        index = await self._read_mtime_index(prefix)
        index[segments[-1]] = [when, info.size, info.mtime]
        if len(index) > _MTIME_INDEX_LIMIT:
            for name in sorted(index, key=lambda n: index[n][2])[: len(index) // 10]:
                del index[name]
        data = json.dumps(index, ensure_ascii=False, sort_keys=True).encode("utf-8")
        await self.store.put(prefix + MTIME_INDEX, data)

    async def _read_mtime_index(self, prefix: str) -> dict[str, list[float]]:
        """The directory's index of client-set times; {} when it has none."""
        try:
            source = await self.store.open(prefix + MTIME_INDEX)
        except NoSuchKey:
            return {}
        chunks = []
        try:
            while chunk := await source.read(1 << 20):
                chunks.append(chunk)
        finally:
            source.close()
        try:
            index = json.loads(b"".join(chunks))
        except ValueError:
            log.warn(
                "ignoring an unreadable {name} in {prefix}",
                name=MTIME_INDEX,
                prefix=prefix,
            )
            return {}
        return index if isinstance(index, dict) else {}

    def set_mtime(self, segments: Sequence[str], when: float) -> Deferred[None]:
        """
        Set a file's modification time (FTP's MFMT, SFTP's setstat): kept as
        the object's metadata, which MDTM, MLST and stat report.
        """
        self.require("overwrite", segments)
        return self._run(segments, lambda: self._set_mtime(segments, when))

    async def _digest(
        self, segments: Sequence[str], algorithm: str, start: int, end: Optional[int]
    ) -> tuple[str, int, int]:
        factory = DIGESTS[algorithm]
        source = await self._open_read(segments, start)
        last = source.info.size - 1 if end is None else min(end, source.info.size - 1)
        remaining = max(0, last - start + 1)
        state = factory()
        try:
            while remaining:
                chunk = await source.read(min(remaining, self.settings.read_chunk))
                if not chunk:
                    raise IntegrityError(f"{display(segments)}: ended early")
                chunk = chunk[:remaining]
                remaining -= len(chunk)
                if self.runner is not None:
                    await self.runner.run(state.update, chunk)
                else:
                    state.update(chunk)
        finally:
            source.close()
        return state.hexdigest(), start, max(start, last)

    def digest(
        self,
        segments: Sequence[str],
        algorithm: str,
        start: int = 0,
        end: Optional[int] = None,
    ) -> Deferred[tuple[str, int, int]]:
        """
        A digest (L{DIGESTS}) of bytes C{start..end} (inclusive; to the end
        when None) of a file, streamed from the store and hashed in the
        thread pool, one chunk at a time.

        @return: Deferred firing with (hex digest, first byte, last byte).
        """
        self.require("download", segments)
        return self._run(
            segments, lambda: self._digest(segments, algorithm, start, end)
        )

    def commit(
        self, writer: UploadWriter, segments: Sequence[str]
    ) -> Deferred[ObjectInfo]:
        """
        Finish an upload begun with L{open_write} after a clean end of
        stream.

        @return: Deferred firing with the stored object's L{ObjectInfo} once
            the store confirmed it; failing with L{StoreFailure},
            L{IntegrityFailure} or L{FileTooLarge} (nothing is then left in
            the store).
        """
        return self._run(segments, writer.finish)

    # -- changes ----------------------------------------------------------

    async def _mkdir(self, segments: Sequence[str]) -> None:
        if not segments:
            raise AlreadyExists("/")
        key = self.key(segments)
        if segments[:-1]:
            await self._require_dir(segments[:-1])
        try:
            await self._stat(segments)
        except NotFound:
            pass
        else:
            raise AlreadyExists(display(segments))
        await self.store.put(key + "/", b"")

    def mkdir(self, segments: Sequence[str]) -> Deferred[None]:
        self.require("mkdir", segments)
        return self._run(segments, lambda: self._mkdir(segments))

    async def _keep_directory(self, segments: Sequence[str]) -> None:
        """
        Write the marker of the directory at C{segments} if nothing else
        keeps it in existence any more.
        """
        if not segments:
            return
        prefix = self.dir_prefix(segments)
        page = await self.store.list(prefix, delimiter="/", max_keys=1)
        if not page.objects and not page.prefixes:
            await self.store.put(prefix, b"")

    async def _rmdir(self, segments: Sequence[str]) -> None:
        if not segments:
            raise PermissionDenied("/", "cannot remove the home directory")
        prefix = self.dir_prefix(segments)
        # The marker and the mtime index are not contents.
        page = await self.store.list(prefix, delimiter="/", max_keys=3)
        hidden = (prefix, prefix + MTIME_INDEX)
        others = [o for o in page.objects if o.key not in hidden] + list(page.prefixes)
        if others:
            raise NotEmpty(display(segments))
        if not page.objects:
            entry = await self._stat(segments)  # NotFound propagates
            if not entry.is_dir:
                raise NotADirectory(display(segments))
        if any(o.key == prefix + MTIME_INDEX for o in page.objects):
            await self.store.delete(prefix + MTIME_INDEX)
        await self.store.delete(prefix)
        await self._keep_directory(segments[:-1])

    def rmdir(self, segments: Sequence[str]) -> Deferred[None]:
        """Remove an empty directory; fails with L{NotEmpty} otherwise."""
        self.require("rmdir", segments)
        return self._run(segments, lambda: self._rmdir(segments))

    async def _remove(self, segments: Sequence[str]) -> None:
        if not segments:
            raise IsADirectory("/")
        key = self.key(segments)
        try:
            info = await self.store.head(key)
        except NoSuchKey:
            entry = await self._stat(segments)
            if entry.is_dir:
                raise IsADirectory(display(segments)) from None
            raise
        await self.store.delete(key)
        if self.usage is not None:
            self.usage.removed(info.size)
        await self._keep_directory(segments[:-1])

    def remove(self, segments: Sequence[str]) -> Deferred[None]:
        """Remove a file; fails with L{IsADirectory} for a directory."""
        self.require("delete", segments)
        return self._run(segments, lambda: self._remove(segments))

    async def _rename(self, source: Sequence[str], target: Sequence[str]) -> None:
        if not source or not target:
            raise PermissionDenied("/", "cannot rename the home directory")
        entry = await self._stat(source)
        if list(target[: len(source)]) == list(source) and entry.is_dir:
            raise InvalidName(display(target), "cannot move a directory into itself")
        if target[:-1]:
            await self._require_dir(target[:-1])
        try:
            existing = await self._stat(target)
        except NotFound:
            existing = None
        if entry.is_dir:
            if existing is not None:
                raise AlreadyExists(display(target))
            await self._rename_tree(source, target)
        else:
            if existing is not None:
                if existing.is_dir:
                    raise IsADirectory(display(target))
                self.require("overwrite", target)
            src_key, dst_key = self.key(source), self.key(target)
            if src_key == dst_key:
                return
            await self.store.copy(src_key, dst_key)
            await self.store.delete(src_key)
            if existing is not None and self.usage is not None:
                self.usage.removed(existing.size)  # the file it replaced
        await self._keep_directory(source[:-1])

    async def _rename_tree(self, source: Sequence[str], target: Sequence[str]) -> None:
        """
        Copy every key below C{source} to C{target}, then delete the sources.
        If it fails half-way, every source is still in place (deletion only
        starts after all copies succeeded) and the copies made so far stay
        under the target: retrying the rename, or removing the target, is
        safe.
        """
        src_prefix, dst_prefix = self.dir_prefix(source), self.dir_prefix(target)
        copied: list[str] = []
        marker = ""
        while True:
            page = await self.store.list(src_prefix, delimiter="", marker=marker)
            for info in page.objects:
                await self._copy_object(info, dst_prefix + info.key[len(src_prefix) :])
                copied.append(info.key)
            if page.next_marker is None:
                break
            marker = page.next_marker
            log.info(
                "{user}: renaming {source}: {count} objects copied",
                user=self.user,
                source=display(source),
                count=len(copied),
            )
        if src_prefix not in copied:
            await self.store.put(dst_prefix, b"")
        # Contents before their directory markers (reverse key order puts
        # "a/b" before "a/"), so no directory outlives its files on a store
        # that keeps directories as real ones.
        for key in sorted(copied, reverse=True):
            await self.store.delete(key)
        log.info(
            "{user}: renamed {source} to {target} ({count} objects)",
            user=self.user,
            source=display(source),
            target=display(target),
            count=len(copied),
        )

    async def _copy_object(self, info: ObjectInfo, destination: str) -> None:
        if info.key.endswith("/"):
            await self.store.put(destination, b"")
        else:
            await self.store.copy(info.key, destination)

    def rename(self, source: Sequence[str], target: Sequence[str]) -> Deferred[None]:
        """Rename a file or a directory tree (server-side copies, then deletes)."""
        self.require("rename", source)
        return self._run(source, lambda: self._rename(source, target))


class Listing:
    """
    A directory listing that arrives page by page, so a frontend can stream
    it: the first entries go out before the last page is fetched and memory
    does not grow with the directory.
    """

    def __init__(self, fs: ObjectFileSystem, segments: list[str]) -> None:
        self.fs = fs
        self.segments = segments
        self._marker = ""
        self._done = False
        self._first = True
        self._mtimes: dict[str, list[float]] = {}

    def next_page(self) -> Deferred[Optional[list[Entry]]]:
        """
        @return: Deferred firing with the next list of entries, or None at
            the end; the first call fails with L{NotFound} if there is
            nothing at the path.  A file's listing is the file itself.
        """
        return self.fs._run(self.segments, self._next)

    async def _next(self) -> Optional[list[Entry]]:
        if self._done:
            return None
        fs = self.fs
        prefix = fs.dir_prefix(self.segments)
        if self._first:
            self._mtimes = await fs._read_mtime_index(prefix)
        page = await fs.store.list(prefix, delimiter="/", marker=self._marker)
        first, self._first = self._first, False
        entries: list[Entry] = []
        marker_seen = False
        for info in page.objects:
            if info.key == prefix:
                marker_seen = True
                continue
            name = info.key[len(prefix) :]
            if name in ("", ".", "..", MTIME_INDEX):
                continue
            mtime = client_mtime(info)
            known = self._mtimes.get(name)
            if known and known[1] == info.size and abs(known[2] - info.mtime) < 1:
                mtime = known[0]
            entries.append(Entry(name, False, info.size, mtime))
        for p in page.prefixes:
            name = p[len(prefix) :].rstrip("/")
            if name in ("", ".", "..") or "/" in name:
                continue
            entries.append(Entry(name, True, 0, 0.0))
        entries.sort(key=lambda e: e.name)
        if page.next_marker is None:
            self._done = True
        else:
            self._marker = page.next_marker
        if first and self.segments and not entries and not marker_seen and self._done:
            # Nothing below the prefix: a file, or nothing at all.
            entry = await fs._stat(self.segments)
            return [entry] if not entry.is_dir else []
        return entries
