"""
The file system of one logged-in user over an object store: the one door
through which every frontend reaches storage.

A directory is a common prefix; an empty one is a zero-byte marker object
C{dir/}.  Removing the last entry of a directory writes its marker, so a
directory does not vanish under a client that is in it.  Reads and uploads
are handed out as objects (L{Reader}, L{Upload}, L{RandomAccessFile}) with
the user's permissions, quota, size limit, rates and error translation
already inside, so a frontend only speaks its protocol.

Every action is one audit event of the session (L{cosgw.audit.Session}),
emitted here once the store answered, with its outcome: delete, rename,
mkdir, rmdir, mtime, list (L{Listing}), resume; and every upload and
download handed out is a live transfer record that ends in its event
(L{cosgw.vfs.metering}).  Paths in events are as the client sees them,
from its home.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cosgw.audit import Session
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
from cosgw.vfs import changes, copies, editing, mtimes, opening, renames
from cosgw.vfs.auditing import Auditing
from cosgw.vfs.digests import DIGESTS, digest_source
from cosgw.vfs.directories import KnownDirectories, probe, stat_entry, together
from cosgw.vfs.errors import (
    FSError,
    InvalidName,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotFound,
    PermissionDenied,
    translate,
)
from cosgw.vfs.knowing import KnowingStore
from cosgw.vfs.knowledge import SessionKnowledge
from cosgw.vfs.listing import Listing
from cosgw.vfs.names import (
    METADATA_PREFIX,
    check_name,
    display,
    home_prefix,
    is_reserved,
)
from cosgw.vfs.rates import Rates
from cosgw.vfs.reader import Reader
from cosgw.vfs.resume import Resumable, find_resumable
from cosgw.vfs.upload import Upload, begin_upload

log = Logger()

T = TypeVar("T")


@implementer(IFileSystem)
class ObjectFileSystem(Auditing):
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
        session: Optional[Session] = None,
        metadata_prefix: str = METADATA_PREFIX,
    ) -> None:
        """
        @param usage: the user's quota usage, shared by all their sessions
            (None: no quota).
        @param upload_limit: the user's rate for bytes they send, shared by
            all their sessions; the uploads this file system hands out apply
            it.  C{download_limit} likewise for bytes they receive.
        @param clock: times the pauses of rate-limited streams; needed when
            there is a limit.
        @param session: the client session this file system serves: its
            audit events and live transfers (None: none are recorded).
        @param metadata_prefix: where the gateway keeps its own objects
            (the times clients set): hidden and refused, whatever the home.
        """
        #: What this session knows of names, taught by each of its requests.
        self.known = SessionKnowledge(clock)
        #: The times clients set, as markers under the metadata prefix.
        self.times = mtimes.Times(store, metadata_prefix, clock)
        self.store: IObjectStore = KnowingStore(store, self.known, self.times)
        self.session = session
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
        if is_reserved(key, self.times.metadata_prefix):
            log.warn("{user}: {path} refused: reserved", user=self.user, path=path)
            raise PermissionDenied(path, "reserved for the gateway")
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

    async def _head_entry(
        self, segments: Sequence[str], with_time: bool = True
    ) -> Entry:
        """The file at C{segments} (L{mtimes.head_entry}); or L{NoSuchKey}."""
        return await mtimes.head_entry(self, segments, with_time)

    async def _has_contents(self, prefix: str) -> bool:
        """Whether anything is below C{prefix} (a directory there)."""
        page = await self.store.list(prefix, delimiter="/", max_keys=1)
        return bool(page.objects or page.prefixes)

    async def _stat(self, segments: Sequence[str], with_time: bool = True) -> Entry:
        return await stat_entry(self, segments, with_time)

    async def _stat_or_none(self, segments: Sequence[str]) -> Optional[Entry]:
        try:
            return await self._stat(segments)
        except NotFound:
            return None

    def stat(self, segments: Sequence[str]) -> Deferred[Entry]:
        """@return: Deferred firing with an L{Entry}; fails with L{NotFound}."""
        return self._run(segments, lambda: self._stat(segments))

    async def _probe(
        self, segments: Sequence[str], ask: bool = False
    ) -> Optional[Entry]:
        """
        What is at C{segments}, known or in one LIST (L{probe}; C{ask}: in
        one LIST): enough to write there, not a stat (no client time, no
        CRC for a file).
        """
        if not segments:
            return Entry("/", True, 0, 0.0)
        entry = await probe(self.store, self.key(segments), segments[-1], ask)
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
        entry = await self._probe(segments, ask)
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
        try:
            self.require("list", segments)
        except FSError as e:
            self.emit("list", segments, e, entries=0)
            raise
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
        self,
        segments: Sequence[str],
        offset: int,
        settings: RandomAccessSettings,
        since: Optional[float] = None,
        whole: bool = False,
        end: Optional[int] = None,
    ) -> Reader:
        """
        A reader; recorded as a download begun at C{since} (when the open
        began) unless that is None; C{whole}: see L{Reader.metered}.
        """
        self.require("download", segments)
        source = await self._open_source(segments, offset, end)
        reader = Reader(self, segments, source, settings.read_window)
        if since is not None and self.session is not None:
            meter = self.meter("download", segments, reader.size, reader.offset, since)
            reader.metered(meter, whole)
        return reader

    def open_reader(
        self, segments: Sequence[str], offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IReader]:
        """
        Open a file for reading from C{offset} (to C{end}, exclusive, when
        given: an HTTP range): a download, recorded until the reader is
        closed.

        @return: Deferred firing with a L{Reader}; fails with L{NotFound},
            L{IsADirectory}, L{PermissionDenied}, L{InvalidOffset}.
        """
        since = self.now()
        settings = RandomAccessSettings()
        d: Deferred[IReader] = self._run(
            segments,
            lambda: self._reader(segments, offset, settings, since, True, end),
        )
        return self._handing_out(d, "download", segments, since)

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
        since: float,
    ) -> Upload:
        existing = await self._writable(segments)
        resumable = None
        if offset or append:
            resumable = await self._resumable(self.key(segments), existing)
        upload = await begin_upload(
            self, segments, existing, resumable, offset, append, size_hint
        )
        upload.metered(self.meter("upload", segments, size_hint, upload.base, since))
        return upload

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
        @param size_hint: the file's size, when the client said (FTP's
            ALLO): part sizes, and the transfer record's size.
        @return: Deferred firing with an L{Upload}, recorded as an upload
            until it is committed, interrupted or aborted; fails with
            L{NotFound} (no parent directory), L{IsADirectory},
            L{PermissionDenied}, L{InvalidName}, L{InvalidOffset}.
        """
        since = self.now()
        try:
            self.require("upload", segments)
        except FSError as e:
            self.failed_transfer("upload", segments, e, since)
            raise
        d: Deferred[IUpload] = self._run(
            segments,
            lambda: self._open_upload(segments, offset, append, size_hint, since),
        )
        return self._handing_out(d, "upload", segments, since)

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
        since = self.now()
        d: Deferred[IRandomAccessFile] = self._run(
            segments,
            lambda: opening.open_file(
                self,
                segments,
                flags,
                settings or RandomAccessSettings(),
                producer,
                since,
            ),
        )
        direction = "upload" if flags.writes or flags.create else "download"
        return self._handing_out(d, direction, segments, since)

    def set_attributes(
        self,
        segments: Sequence[str],
        size: Optional[int] = None,
        mtime: Optional[float] = None,
    ) -> Deferred[None]:
        """
        Change a file's size or time (SFTP's SETSTAT); see
        L{changes.set_attributes}.  With a time, one C{mtime} event.
        """
        d = self._run(
            segments, lambda: changes.set_attributes(self, segments, size, mtime)
        )
        if mtime is None:
            return d
        return self._emitting(d, "mtime", segments)

    def set_mtime(self, segments: Sequence[str], when: float) -> Deferred[None]:
        """
        Set a file's modification time (FTP's MFMT, SFTP's setstat): kept as
        the object's metadata, which MDTM, MLST and stat report.
        """
        return self._action(
            "mtime",
            segments,
            "overwrite",
            lambda: changes.set_mtime(self, segments, when),
        )

    # -- changes ----------------------------------------------------------

    def mkdir(self, segments: Sequence[str]) -> Deferred[None]:
        return self._action(
            "mkdir", segments, "mkdir", lambda: changes.mkdir(self, segments)
        )

    def rmdir(self, segments: Sequence[str]) -> Deferred[None]:
        """Remove an empty directory; fails with L{NotEmpty} otherwise."""
        return self._action(
            "rmdir", segments, "rmdir", lambda: changes.rmdir(self, segments)
        )

    def remove(self, segments: Sequence[str]) -> Deferred[None]:
        """Remove a file; fails with L{IsADirectory} for a directory."""
        return self._action(
            "delete", segments, "delete", lambda: changes.remove(self, segments)
        )

    def rename(
        self, source: Sequence[str], target: Sequence[str], replace: bool = True
    ) -> Deferred[None]:
        """
        Rename a file or a directory tree (server-side copies, then
        deletes).  C{replace} False: a target that exists is refused with
        L{AlreadyExists} (SFTP's RENAME), from the checks the rename makes
        anyway (no stat first), and the refusal is the rename's event.
        """
        return self._action(
            "rename",
            source,
            "rename",
            lambda: renames.rename(self, source, target, replace),
            path_to=display(target),
        )

    def copy(
        self, source: Sequence[str], target: Sequence[str], replace: bool = True
    ) -> Deferred[None]:
        """
        Copy a file server-side (WebDAV's COPY; see L{copies.copy}): one
        C{copy} event, refused without C{download} on the source.
        """
        return self._action(
            "copy",
            source,
            "download",
            lambda: copies.copy(self, source, target, replace),
            path_to=display(target),
        )
