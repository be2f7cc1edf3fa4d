"""
The file system of one logged-in user over an object store: the one door
through which every frontend reaches storage.

A directory is a common prefix; an empty one is a zero-byte marker object
C{dir/}.  Removing the last entry of a directory writes its marker, so a
directory does not vanish under a client that is in it.  Reads and uploads
are handed out as objects (L{Reader}, L{Upload}, L{RandomAccessFile}) with
the user's permissions, quota, size limit, rates and error translation
already inside, so a frontend only speaks its protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cosgw.interfaces import (
    MAX_KEY_BYTES,
    Entry,
    IByteSource,
    IFileSystem,
    IListing,
    IObjectStore,
    IRandomAccessFile,
    IReader,
    IUpload,
    NoSuchKey,
)
from cosgw.policy.quota import Usage
from cosgw.policy.throttle import RateLimit
from cosgw.transfer import RandomAccessSettings, TransferSettings, UploadRegistry
from cosgw.vfs import editing, mtimes, renames
from cosgw.vfs.digests import DIGESTS, digest_source
from cosgw.vfs.directories import KnownDirectories, probe, together
from cosgw.vfs.errors import (
    AlreadyExists,
    InvalidName,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    translate,
)
from cosgw.vfs.listing import Listing
from cosgw.vfs.names import MTIME_INDEX, check_name, display, home_prefix
from cosgw.vfs.rates import Rates
from cosgw.vfs.reader import Reader
from cosgw.vfs.resume import Resumable, find_resumable
from cosgw.vfs.upload import Upload, begin_upload

log = Logger()

T = TypeVar("T")


@implementer(IFileSystem)
class ObjectFileSystem:
    """
    One user's view of a store: a home prefix, permissions, transfer
    settings and limits.  All methods return Deferreds failing with
    L{cosgw.vfs.FSError}s.
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
        upload_limit: Optional[RateLimit] = None,
        download_limit: Optional[RateLimit] = None,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """
        @param usage: the user's quota usage, shared by all their sessions
            (None: no quota).
        @param upload_limit: the user's rate for bytes they send, shared by
            all their sessions; the uploads this file system hands out apply
            it.  C{download_limit} likewise for bytes they receive.
        @param clock: times the pauses of rate-limited streams; needed when
            there is a limit.
        """
        self.store = store
        self.prefix = home_prefix(home)
        self.permissions = frozenset(permissions)
        self.settings = settings
        self.user = user
        self.registry = registry if registry is not None else UploadRegistry()
        #: Runs CPU-bound work (hashing) and spool I/O in the gateway's pool;
        #: without one (unit tests) it runs inline.
        self.runner = runner
        self.usage = usage
        if usage is not None:
            # Kept uploads the sweeper or a session discards leave the quota.
            self.registry.listen(usage.forget)
        self.rates = Rates(upload_limit, download_limit, clock)
        #: The directories this session saw exist, for a short while.
        self.directories = KnownDirectories(clock)

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
        self, segments: Sequence[str], f: Callable[[], Coroutine[Any, Any, T]]
    ) -> Deferred[T]:
        path = display(segments)
        d = ensureDeferred(f())
        d.addErrback(translate, path)
        return d

    # -- queries ----------------------------------------------------------

    async def _head_entry(self, segments: Sequence[str]) -> Entry:
        """The file at C{segments}, by its HEAD; fails with L{NoSuchKey}."""
        info = await self.store.head(self.key(segments))
        return Entry(
            segments[-1], False, info.size, mtimes.client_mtime(info), info.crc64
        )

    async def _has_contents(self, prefix: str) -> bool:
        """Whether anything is below C{prefix} (a directory there)."""
        page = await self.store.list(prefix, delimiter="/", max_keys=1)
        return bool(page.objects or page.prefixes)

    async def _stat(self, segments: Sequence[str]) -> Entry:
        if not segments:
            return Entry("/", True, 0, 0.0)
        key = self.key(segments)
        try:
            return await self._head_entry(segments)
        except NoSuchKey:
            pass
        page = await self.store.list(key + "/", delimiter="/", max_keys=1)
        if page.objects or page.prefixes:
            self.directories.saw(segments)
            mtime = page.objects[0].mtime if page.objects else 0.0
            if page.objects and page.objects[0].key != key + "/":
                mtime = 0.0
            return Entry(segments[-1], True, 0, mtime)
        raise NotFound(display(segments))

    async def _stat_or_none(self, segments: Sequence[str]) -> Optional[Entry]:
        try:
            return await self._stat(segments)
        except NotFound:
            return None

    def stat(self, segments: Sequence[str]) -> Deferred[Entry]:
        """@return: Deferred firing with an L{Entry}; fails with L{NotFound}."""
        return self._run(segments, lambda: self._stat(segments))

    async def _probe(self, segments: Sequence[str]) -> Optional[Entry]:
        """
        What is at C{segments}, in one LIST (L{probe}): enough to write
        there, not a stat (no client time, no CRC for a file).
        """
        if not segments:
            return Entry("/", True, 0, 0.0)
        entry = await probe(self.store, self.key(segments), segments[-1])
        if entry is not None and entry.is_dir:
            self.directories.saw(segments)
        return entry

    async def _require_dir(self, segments: Sequence[str], ask: bool = False) -> None:
        """
        The directory at C{segments} exists: known to this session (see
        L{KnownDirectories}), else probed, or always probed when C{ask}.
        """
        if not ask and segments in self.directories:
            return
        entry = await self._probe(segments)
        if entry is None:
            raise NotFound(display(segments))
        if not entry.is_dir:
            raise NotADirectory(display(segments))

    def require_directory(self, segments: Sequence[str]) -> Deferred[None]:
        """
        For CWD: fails with L{NotFound} or L{NotADirectory}.  Always asks
        the store (one LIST); the directory is then known to the session.
        """
        return self._run(segments, lambda: self._require_dir(segments, ask=True))

    async def _before_write(self, segments: Sequence[str]) -> Optional[Entry]:
        """
        What is at C{segments} (L{_probe}), which is about to be written,
        and whether its directory exists: two LISTs at once, or one when
        the session knows the directory.

        @raise NotFound: no directory to write in; L{NotADirectory}, a file
            is where it should be.
        """
        self.key(segments)  # InvalidName, before any request
        _, existing = await together(
            self._require_dir(segments[:-1]), self._probe(segments)
        )
        return existing

    def listing(self, segments: Sequence[str]) -> IListing:
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

    async def _resumable(
        self, key: str, existing: Optional[Entry]
    ) -> Optional[Resumable]:
        """
        The kept upload a write to C{key} may continue: none while a file
        is visible there (C{existing}), which is what APPE, REST and SIZE
        then see (L{cosgw.vfs.resume}).
        """
        if not self.settings.resume_uploads or existing is not None:
            return None
        return await find_resumable(self.store, key, self.registry)

    async def _restart_size(self, segments: Sequence[str]) -> int:
        key = self.key(segments)
        # One LIST says file, directory or nothing (a HEAD could not tell
        # the last two apart), and a file's size: the same as its HEAD's.
        existing = await self._probe(segments)
        if existing is not None:
            if existing.is_dir:
                raise IsADirectory(display(segments))
            return existing.size
        resumable = await self._resumable(key, None)
        if resumable is None:
            raise NotFound(display(segments))
        return resumable.size

    def restart_size(self, segments: Sequence[str]) -> Deferred[int]:
        """
        The size a client should resume an upload after, which is what FTP's
        SIZE answers: the file's size when one is visible (as MDTM, MLST and
        RETR see it); else the bytes an interrupted upload of the name has
        kept (whole parts), as on a disk where an interrupted STOR leaves a
        short file.

        @return: Deferred firing with the size; fails with L{NotFound} or
            L{IsADirectory}.
        """
        return self._run(segments, lambda: self._restart_size(segments))

    # -- reading ------------------------------------------------------------

    async def _open_source(
        self, segments: Sequence[str], offset: int, end: Optional[int] = None
    ) -> IByteSource:
        if not segments:
            raise IsADirectory("/")
        key = self.key(segments)
        try:
            source = await self.store.open(key, offset, end)
        except NoSuchKey:
            # No file: a directory, or nothing (the GET said so; no HEAD).
            if await self._has_contents(key + "/"):
                raise IsADirectory(display(segments)) from None
            raise
        if offset > source.info.size:
            source.close()
            raise InvalidOffset(
                display(segments),
                f"restart offset {offset} is beyond the file's {source.info.size} bytes",
            )
        return source

    def _reopen(
        self, segments: Sequence[str], offset: int, end: int
    ) -> Deferred[IByteSource]:
        """A new stream of bytes C{offset..end-1} of an open file (a reader moving)."""
        return self._run(segments, lambda: self._open_source(segments, offset, end))

    async def _reader(
        self, segments: Sequence[str], offset: int, settings: RandomAccessSettings
    ) -> Reader:
        self.require("download", segments)
        source = await self._open_source(segments, offset)
        return Reader(self, segments, source, settings.read_window)

    def open_reader(
        self, segments: Sequence[str], offset: int = 0
    ) -> Deferred[IReader]:
        """
        Open a file for reading from C{offset}.

        @return: Deferred firing with a L{Reader}; fails with L{NotFound},
            L{IsADirectory}, L{PermissionDenied}, L{InvalidOffset}.
        """
        settings = RandomAccessSettings()
        return self._run(segments, lambda: self._reader(segments, offset, settings))

    async def _digest(
        self, segments: Sequence[str], algorithm: str, start: int, end: Optional[int]
    ) -> tuple[str, int, int]:
        if algorithm not in DIGESTS:
            raise KeyError(algorithm)
        # A digest of a range reads that range: a bounded GET.
        stop = end + 1 if end is not None and end >= start else None
        source = await self._open_source(segments, start, stop)
        return await digest_source(
            source,
            algorithm,
            start,
            end,
            self.settings.read_chunk,
            self.runner,
            display(segments),
        )

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

    # -- writing ------------------------------------------------------------

    async def _writable(self, segments: Sequence[str]) -> Optional[Entry]:
        """
        The checks before a file is written (L{_before_write}): its
        directory exists, it is not itself a directory, the user may
        replace it.

        @return: the file's entry, None when it is new.
        """
        if not segments:
            raise IsADirectory("/")
        existing = await self._before_write(segments)
        if existing is not None:
            if existing.is_dir:
                raise IsADirectory(display(segments))
            self.require("overwrite", segments)
        return existing

    async def _open_upload(
        self,
        segments: Sequence[str],
        offset: int,
        append: bool,
        size_hint: Optional[int],
    ) -> Upload:
        existing = await self._writable(segments)
        resumable = None
        if offset or append:
            resumable = await self._resumable(self.key(segments), existing)
        return await begin_upload(
            self, segments, existing, resumable, offset, append, size_hint
        )

    def open_upload(
        self,
        segments: Sequence[str],
        offset: int = 0,
        append: bool = False,
        size_hint: Optional[int] = None,
    ) -> Deferred[IUpload]:
        """
        Start an upload that replaces (or creates) the file at C{segments}.
        Nothing is visible until the upload's C{commit} succeeds; the old
        object stays whole and readable until then.

        @param offset: A restart offset (REST n + STOR): the new object
            keeps the first C{offset} bytes of the visible file (copied
            server-side, never downloaded) or, when there is none, of the
            interrupted upload that kept exactly that many (which is then
            continued).
        @param append: APPE: like an offset at the end of the visible file,
            else of the kept upload, else a new file.
        @return: Deferred firing with an L{Upload}; fails with L{NotFound}
            (no parent directory), L{IsADirectory}, L{PermissionDenied},
            L{InvalidName}, L{InvalidOffset}.
        """
        self.require("upload", segments)
        return self._run(
            segments,
            lambda: self._open_upload(segments, offset, append, size_hint),
        )

    def open_file(
        self,
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
        Open a file for reads and writes at offsets, with POSIX open's
        flags (SFTP's OPEN); see L{editing.RandomAccessFile}.

        @param settings: the buffers behind reads and writes at offsets.
        @param producer: what to pause (the client's input) while writes
            wait for the store or for the user's rate.
        @return: Deferred firing with the open file; fails with
            L{NotFound}, L{AlreadyExists}, L{IsADirectory},
            L{PermissionDenied}, L{InvalidName}.
        """
        flags = editing.OpenFlags(read, write, append, create, truncate, exclusive)
        return self._run(
            segments,
            lambda: editing.open_file(
                self, segments, flags, settings or RandomAccessSettings(), producer
            ),
        )

    def set_attributes(
        self,
        segments: Sequence[str],
        size: Optional[int] = None,
        mtime: Optional[float] = None,
    ) -> Deferred[None]:
        """
        Change a file's size or time (SFTP's SETSTAT); see
        L{editing.set_attributes}.
        """
        return self._run(
            segments, lambda: editing.set_attributes(self, segments, size, mtime)
        )

    async def _set_mtime(self, segments: Sequence[str], when: float) -> None:
        if not segments:
            raise IsADirectory("/")
        key = self.key(segments)
        try:
            # Its first request, the copy, fails if there is no file: no
            # HEAD before it.
            await mtimes.set_mtime(
                self.store, key, self.dir_prefix(segments[:-1]), when
            )
        except NoSuchKey:
            if await self._has_contents(key + "/"):
                raise IsADirectory(display(segments)) from None
            raise

    def set_mtime(self, segments: Sequence[str], when: float) -> Deferred[None]:
        """
        Set a file's modification time (FTP's MFMT, SFTP's setstat): kept as
        the object's metadata, which MDTM, MLST and stat report.
        """
        self.require("overwrite", segments)
        return self._run(segments, lambda: self._set_mtime(segments, when))

    # -- changes ----------------------------------------------------------

    async def _mkdir(self, segments: Sequence[str]) -> None:
        if not segments:
            raise AlreadyExists("/")
        key = self.key(segments)
        if await self._before_write(segments) is not None:
            raise AlreadyExists(display(segments))
        await self.store.put(key + "/", b"")
        self.directories.saw(segments)

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
        if not await self._has_contents(prefix):
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
            # Nothing below the prefix: a file, or nothing (no second LIST).
            await self._head_entry(segments)  # NoSuchKey: not found
            raise NotADirectory(display(segments))
        if any(o.key == prefix + MTIME_INDEX for o in page.objects):
            await self.store.delete(prefix + MTIME_INDEX)
        await self.store.delete(prefix)
        self.directories.forget(segments)
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
            # No file: a directory, or nothing (the HEAD said so already).
            if await self._has_contents(key + "/"):
                raise IsADirectory(display(segments)) from None
            raise
        await self.store.delete(key)
        if self.usage is not None:
            self.usage.removed(info.size, key)
        await self._keep_directory(segments[:-1])

    def remove(self, segments: Sequence[str]) -> Deferred[None]:
        """Remove a file; fails with L{IsADirectory} for a directory."""
        self.require("delete", segments)
        return self._run(segments, lambda: self._remove(segments))

    def rename(self, source: Sequence[str], target: Sequence[str]) -> Deferred[None]:
        """Rename a file or a directory tree (server-side copies, then deletes)."""
        self.require("rename", source)
        return self._run(source, lambda: renames.rename(self, source, target))
