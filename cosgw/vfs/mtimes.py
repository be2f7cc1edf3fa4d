"""
Modification times clients set (FTP's MFMT, SFTP's setstat, WebDAV's
PROPPATCH), kept where no user, listing, other application or
lifecycle rule on the users' prefixes sees them: one empty marker object
per file under the reserved prefix ([server] metadata_prefix, default
C{.cosgw/}), outside every home, whose key carries the time and the
identity of the object it was set on:

    <metadata_prefix>mtimes/<dir of the file's key>/<name>  <stamp>

    <name>   the file's name with each space written " !" (see L{escape})
    "  "     two spaces: the end of the name (L{SEP})
    <stamp>  <time in ns>.<size>.<store time, s>.<ETag or "x">

Why this shape:

  - One LIST of C{<metadata_prefix>mtimes/<dir>/} with delimiter C{/}
    gives every time of a directory's files (subdirectories fold into
    common prefixes), in the order of the files' own keys: a name's
    spaces are doubled up as C{" !"} and ended by two spaces, which sort
    below every character a name may hold, so a marker of C{a} sorts
    before those of C{a b} and C{a.txt} as the files do.  A listing reads
    both LISTs side by side, page by page (L{DirectoryTimes}): its memory
    does not grow with the directory, and a directory where no time was
    ever set costs one LIST more, sent at once with the directory's, or
    none when its markers are known (next point).
  - Each time set is its own PUT of a new key: gateways setting times in
    one directory at once never overwrite each other (no shared index, no
    read-modify-write).  The setter reads the file's markers before its
    PUT (known, or LISTed) and deletes those after it: a marker is only
    ever deleted by a setter whose own marker is newer, so the newest
    survives; one the setter did not know of stays until the file goes.
  - A marker applies only while the object has the identity it had when
    the time was set (size, store time and ETag, from a HEAD): a later
    upload by anyone makes it stale by itself, with no request.
  - A stat of a file, and a time set, read the first page of the LIST of
    its directory's markers, which then answers for every file there (and
    says which subdirectories hold none) for a second, for every session
    of the store in this process (L{cosgw.vfs.timecache}): a run of stats
    or gets in one directory costs one LIST of markers, not one per file.
  - A file's delete and rename move or remove its markers (L{Times}),
    LISTed by name from the store each time: what is known may miss a
    marker another gateway wrote within that second, and a delete is the
    last chance to remove it, a rename the only one to carry it along.

The object's own metadata (C{x-cos-meta-mtime}, which earlier versions
wrote by copying the object onto itself, and other tools write at upload)
is still read by a stat, below any marker that applies.  Per-directory
indexes of earlier versions (L{MTIME_INDEX}) become markers when their
directory is listed (L{Times.migrate}).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import (
    MAX_KEY_BYTES,
    MAX_LIST_KEYS,
    Entry,
    IObjectStore,
    ListPage,
    NoSuchKey,
    ObjectInfo,
)
from cosgw.vfs import timecache
from cosgw.vfs.names import MTIME_INDEX

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

log = Logger()

#: Where markers live, below the metadata prefix.
MARKERS = "mtimes/"

#: Ends a marker's name: sorts below any character of an escaped name.
SEP = "  "

#: The longest stamp (time, size, store time, ETag) a marker may need.
MAX_STAMP = 100

_TAG = re.compile(r"[0-9A-Za-z-]{1,64}")

#: An index of an earlier version: name -> [client time, size, store time].
Index = dict[str, list[float]]


def escape(name: str) -> str:
    """A name as a marker's key holds it: no two spaces in a row."""
    return name.replace(" ", " !")


def unescape(text: str) -> str:
    return text.replace(" !", " ")


def split_key(key: str) -> tuple[str, str]:
    """C{"a/b/c"} -> (C{"a/b/"}, C{"c"})."""
    head, _, name = key.rpartition("/")
    return (head + "/" if head else ""), name


def identity(info: ObjectInfo) -> str:
    """What a marker must match: the object's size, store time and ETag."""
    etag = info.etag.lower() if info.etag and _TAG.fullmatch(info.etag) else "x"
    return f"{info.size}.{int(info.mtime)}.{etag}"


def client_mtime(info: ObjectInfo) -> float:
    """The time in the object's metadata if any, else the store's."""
    value = info.metadata.get("mtime")
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    return info.mtime


@dataclass(frozen=True)
class Marker:
    """One time set on one file, as its marker's key says."""

    key: str
    name: str
    when: float
    identity: str
    #: When the marker was stored: the newest applicable marker wins.
    stored: float

    def applies(self, info: ObjectInfo) -> bool:
        return self.identity == identity(info)


def parse(directory: str, info: ObjectInfo) -> Optional[Marker]:
    """The marker C{info} is, listed under C{directory}; None: not one."""
    rest = info.key[len(directory) :]
    end = rest.find(SEP)
    if end <= 0 or "/" in rest:
        return None
    stamp = rest[end + len(SEP) :].split(".", 1)
    try:
        when = int(stamp[0]) / 1e9
    except ValueError:
        return None
    if len(stamp) != 2:
        return None
    return Marker(info.key, unescape(rest[:end]), when, stamp[1], info.mtime)


def newest(markers: Iterable[Marker], info: ObjectInfo) -> Optional[Marker]:
    """The newest of C{markers} that applies to the object C{info}."""
    applying = [m for m in markers if m.applies(info)]
    return max(applying, key=lambda m: (m.stored, m.key), default=None)


def read_time(times: Optional[Times], info: ObjectInfo) -> tuple[float, bool]:
    """
    The time of the file a HEAD or GET found, and whether it is the file's
    for sure: the newest applying marker's when this process knows the
    markers of its directory (L{Times.known}), else the object's own
    (metadata, or the store's time), which a marker not yet seen may
    override: not exact, so a stat still asks.
    """
    known = times.known(info.key) if times is not None else None
    if known is None:
        return client_mtime(info), False
    applied = newest(known, info)
    return (applied.when if applied else client_mtime(info)), True


async def head_entry(
    fs: ObjectFileSystem, segments: Sequence[str], with_time: bool = True
) -> Entry:
    """
    A stat of the file at C{segments}: its HEAD and the LIST of its
    markers (the time a client set, L{head_and_markers}); fails with
    L{NoSuchKey}.  C{with_time} False: the HEAD alone (a rename, which
    lists the markers itself).
    """
    key = fs.key(segments)
    if with_time:
        info, markers = await head_and_markers(fs, key)
    else:
        info, markers = await fs.store.head(key), list[Marker]()
    applied = newest(markers, info)
    mtime = applied.when if applied else client_mtime(info)
    entry = Entry(segments[-1], False, info.size, mtime, info.crc64)
    if with_time:
        # The HEAD alone taught the session a time a marker may override;
        # with the markers read, this is the file's.
        fs.known.learn(key, entry, True, fs.known.stamp())
    return entry


async def found_entry(
    fs: ObjectFileSystem, segments: Sequence[str], info: ObjectInfo
) -> Entry:
    """
    A stat of a file the session has just read (L{Sighting.found}): its
    markers (known, or one LIST for its directory) and what the read said.
    """
    key = fs.key(segments)
    at = fs.known.stamp()
    applied = newest(await fs.times.markers(key), info)
    mtime = applied.when if applied else client_mtime(info)
    entry = Entry(segments[-1], False, info.size, mtime, info.crc64)
    fs.known.learn(key, entry, True, at)
    return entry


async def head_and_markers(
    fs: ObjectFileSystem, key: str, fresh: bool = False
) -> tuple[ObjectInfo, list[Marker]]:
    """
    The file's HEAD and its markers: the HEAD alone when the markers of its
    directory are known (L{Times.known}); else with the LIST of them
    (L{Times.markers}), at once when the session saw a file there (a
    listing, a probe, its own upload), else only once the HEAD found a
    file, so that a stat of a directory or of a free name (before an
    upload) costs no LIST of markers.  C{fresh}: the markers as the store
    has them now, whatever is known (L{Times.fresh}: a delete).  Fails
    with L{NoSuchKey}.
    """
    markers = fs.times.fresh if fresh else fs.times.markers
    known = None if fresh else fs.times.known(key)
    if known is not None:
        return await fs.store.head(key), known
    seen = fs.known.lookup(key)
    if seen is not None and seen.entry is not None and not seen.entry.is_dir:
        return await both(fs.store.head(key), markers(key))
    info = await fs.store.head(key)
    return info, await markers(key)


async def both(
    head: Deferred[ObjectInfo], markers: Coroutine[Any, Any, list[Marker]]
) -> tuple[ObjectInfo, list[Marker]]:
    """
    A HEAD and the LIST of the file's markers at once (one round trip):
    both answers, or the HEAD's error first.
    """
    checks: list[Deferred[Any]] = [head, ensureDeferred(markers)]
    done = await DeferredList(checks, consumeErrors=True)
    for ok, value in done:
        if not ok:
            value.raiseException()
    return done[0][1], done[1][1]


class Times:
    """
    The markers of one store under one metadata prefix; the requests to
    read, set, move and remove them, and what this process knows of each
    directory's markers (L{cosgw.vfs.timecache}, shared by the sessions of
    the store).  The store is the raw one: what a session knows of names
    (L{cosgw.vfs.knowledge}) is not about markers.
    """

    def __init__(
        self,
        store: IObjectStore,
        metadata_prefix: str,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        """@param clock: without one, no answer about markers is kept."""
        self.store = store
        self.metadata_prefix = metadata_prefix
        self.root = metadata_prefix + MARKERS
        self.cache = timecache.shared(store, self.root, clock)

    def directory(self, prefix: str) -> str:
        """Where the markers of the files directly in C{prefix} are."""
        return self.root + prefix

    def of_file(self, key: str) -> str:
        """The prefix of the markers of the file C{key}."""
        folder, name = split_key(key)
        return self.root + folder + escape(name) + SEP

    def _place(self, key: str) -> tuple[str, str, str]:
        """The marker folder of C{key}, its name, and its markers' keys after it."""
        folder, name = split_key(key)
        return self.root + folder, name, escape(name) + SEP

    def fits(self, key: str) -> bool:
        """
        Whether the markers of C{key} fit in COS's 850 bytes; a file whose
        do not cannot have a time set (L{cosgw.vfs.changes.set_mtime}).
        """
        return len(self.of_file(key).encode("utf-8")) + MAX_STAMP <= MAX_KEY_BYTES

    def marker_key(self, key: str, when: float, info: ObjectInfo) -> str:
        return f"{self.of_file(key)}{round(when * 1000) * 1_000_000}.{identity(info)}"

    # -- reading --------------------------------------------------------------

    def known(self, key: str) -> Optional[list[Marker]]:
        """The markers of the file C{key} as this process knows them; None: ask."""
        folder, name, rest = self._place(key)
        return self.cache.markers_of(folder, name, rest, self.root)

    async def markers(self, key: str) -> list[Marker]:
        """
        The markers of the file C{key}: known, else from the first page of
        its directory's markers (one LIST, which then answers for the
        directory's other files), else (a first page that stops before the
        name) a LIST of its own.
        """
        known = self.known(key)
        if known is not None:
            return known
        folder, name, rest = self._place(key)
        page = await self.first_page(folder)
        if page.reaches(rest):
            return list(page.markers.get(name, ()))
        return await self.fresh(key)

    def first_page(self, folder: str) -> Deferred[timecache.FolderTimes]:
        """
        The first page of the marker folder C{folder}, as known or in one
        LIST (shared with whoever asks it meanwhile, and kept).
        """
        known = self.cache.answer(folder, self.root)
        if known is not None:
            return succeed(known)

        def read(page: ListPage, sent: float) -> timecache.FolderTimes:
            # It lasts from when it was asked, as what a session knows does.
            answer = timecache.FolderTimes(folder, until=page.next_marker, seen=sent)
            for m in (parse(folder, i) for i in page.objects):
                if m is not None:
                    answer.markers.setdefault(m.name, []).append(m)
            answer.below.update(p[len(folder) :] for p in page.prefixes)
            return answer

        def ask() -> Deferred[timecache.FolderTimes]:
            d = self.store.list(folder, "/", "", MAX_LIST_KEYS)
            return d.addCallback(read, self.cache.now())

        return self.cache.fetch(folder, ask)

    async def fresh(self, key: str) -> list[Marker]:
        """
        The markers of the file C{key} as the store has them now (one LIST,
        more in odd cases), whatever is known: a delete and a rename ask
        (see L{cosgw.vfs.timecache}).
        """
        prefix = self.of_file(key)
        folder = self.directory(split_key(key)[0])
        found: list[Marker] = []
        async for page in _pages(self.store, prefix, ""):
            found.extend(m for m in (parse(folder, i) for i in page.objects) if m)
        return found

    # -- changing -------------------------------------------------------------

    async def set(
        self, key: str, when: float, info: ObjectInfo, old: Sequence[Marker]
    ) -> None:
        """
        Keep C{when} as the time of C{key}, the object C{info} (its HEAD),
        whose markers were C{old} (known or listed before this call): one
        PUT, then the old markers go.
        """
        new = self.marker_key(key, when, info)
        stored = await self.store.put(new, b"")
        self._added(key, new, stored)
        await self.remove(key, [m for m in old if m.key != new])

    def _added(self, key: str, new: str, stored: ObjectInfo) -> None:
        """The marker C{new} of C{key} was stored (C{stored}, its PUT's answer)."""
        folder, name, rest = self._place(key)
        # The store's time of the marker; the PUT may not say (then now).
        when = stored.mtime if stored.mtime > 0 else self.cache.now()
        marker = parse(folder, ObjectInfo(new, 0, when))
        self.cache.changed(
            folder, name, rest, self.root, added=[marker] if marker else ()
        )

    async def remove(
        self, key: str, markers: Iterable[Marker], gone: bool = False
    ) -> None:
        """
        Delete C{markers}, of the file C{key}; C{gone}: the file went (a
        delete), and every marker known of it with it.
        """
        markers = list(markers)
        try:
            for m in markers:
                await self.store.delete(m.key)
        finally:
            folder, name, rest = self._place(key)
            self.cache.changed(
                folder,
                name,
                rest,
                self.root,
                removed=[m.key for m in markers],
                gone=gone,
            )

    async def moved(
        self,
        key: str,
        info: ObjectInfo,
        markers: Sequence[Marker],
        target: str,
        copy: ObjectInfo,
    ) -> None:
        """
        C{key}, the object C{info} with C{markers}, was copied to
        C{target} as C{copy}: the time that applied follows it (its
        marker, then the source's markers go; a rename).
        """
        applied = newest(markers, info)
        if applied is not None and self.fits(target):
            new = self.marker_key(target, applied.when, copy)
            self._added(target, new, await self.store.put(new, b""))
        await self.remove(key, markers, gone=True)

    def listing(self, prefix: str) -> DirectoryTimes:
        """The markers of C{prefix}'s files, for its listing; asked at once."""
        return DirectoryTimes(self, prefix)

    async def tree(self, prefix: str) -> dict[str, list[Marker]]:
        """Every marker of the files below C{prefix}, by file key (a rename)."""
        root = self.directory(prefix)
        found: dict[str, list[Marker]] = {}
        async for page in _pages(self.store, root, ""):
            for info in page.objects:
                folder = info.key[: info.key.rfind("/") + 1]
                m = parse(folder, info)
                if m is not None:
                    key = folder[len(self.root) :] + m.name
                    found.setdefault(key, []).append(m)
        return found

    async def migrate(self, store: IObjectStore, prefix: str) -> int:
        """
        The index of times an earlier version kept in the directory
        C{prefix} becomes markers, then goes: an entry that still applies
        (the object's size and store time are those it recorded) and whose
        file has no marker yet (a marker is newer than any index) gets one.
        Two gateways migrating at once write the same keys.

        @param store: the session's store, for the directory's own keys.
        @return: how many markers were written.
        """
        index = await read_index(store, prefix)
        written = 0
        if index:
            have = set()
            async for page in _pages(self.store, self.directory(prefix)):
                for info in page.objects:
                    m = parse(self.directory(prefix), info)
                    if m is not None:
                        have.add(m.name)
            async for page in _pages(store, prefix):
                for info in page.objects:
                    name = info.key[len(prefix) :]
                    known = index.get(name)
                    if known is None or name in have or not self.fits(info.key):
                        continue
                    if known[1] == info.size and abs(known[2] - info.mtime) < 1:
                        await self.store.put(
                            self.marker_key(info.key, known[0], info), b""
                        )
                        written += 1
        if written:
            self.cache.forget(self.directory(prefix), self.root)
        await store.delete(prefix + MTIME_INDEX)
        log.info(
            "times of {prefix}: {count} moved from {index} to markers",
            prefix=prefix or "/",
            count=written,
            index=MTIME_INDEX,
        )
        return written


class DirectoryTimes:
    """
    The markers of one directory, read beside its listing: the first page
    is known (L{Times.first_page}) or asked at once (with the directory's
    first page), the next ones as the listing's pages reach past the names
    already read.
    """

    def __init__(self, times: Times, prefix: str) -> None:
        self.times = times
        self.folder = times.directory(prefix)
        self._read: list[Marker] = []
        #: Where the next page starts ("": the first; None: no more).
        self._next: Optional[str] = ""
        self._asking: Optional[Deferred[Any]] = None
        self._answer: list[object] = []
        self._ask()

    def _ask(self) -> None:
        assert self._next is not None
        self._answer = []
        d: Deferred[Any]
        if self._next == "":
            d = self.times.first_page(self.folder).addCallback(
                lambda page: (page.in_order(), page.until)
            )
        else:
            d = self.times.store.list(self.folder, "/", self._next, MAX_LIST_KEYS)
            d.addCallback(self._parsed)
        self._asking = d.addBoth(self._answer.append)  # errors are kept

    def _parsed(self, page: ListPage) -> tuple[list[Marker], Optional[str]]:
        found = (parse(self.folder, i) for i in page.objects)
        return [m for m in found if m], page.next_marker

    async def _page(self) -> tuple[list[Marker], Optional[str]]:
        assert self._asking is not None
        await self._asking
        self._asking = None
        answer = self._answer[0]
        if isinstance(answer, Failure):
            answer.raiseException()
        assert isinstance(answer, tuple)
        return answer

    async def upto(self, last: Optional[str]) -> dict[str, list[Marker]]:
        """
        The markers of the names up to C{last} (the last file of a listing
        page; None: the page had no file), by name; the markers of those
        before were handed out already.
        """
        if last is None:
            return {}
        while self._next is not None and (
            not self._read or self._read[-1].name <= last
        ):
            if self._asking is None:
                self._ask()
            markers, self._next = await self._page()
            self._read.extend(markers)
        cut = 0
        while cut < len(self._read) and self._read[cut].name <= last:
            cut += 1
        taken, self._read = self._read[:cut], self._read[cut:]
        found: dict[str, list[Marker]] = {}
        for m in taken:
            found.setdefault(m.name, []).append(m)
        return found

    def close(self) -> None:
        """The listing ended: a LIST still on its way is not awaited."""
        self._asking = None


async def _pages(
    store: IObjectStore, prefix: str, delimiter: str = "/"
) -> AsyncIterator[ListPage]:
    """Every page of a LIST of C{prefix}."""
    marker = ""
    while True:
        page = await store.list(prefix, delimiter, marker, MAX_LIST_KEYS)
        yield page
        if page.next_marker is None:
            return
        marker = page.next_marker


async def read_index(store: IObjectStore, prefix: str) -> Index:
    """The directory's index of client times (earlier versions); {} when none."""
    try:
        source = await store.open(prefix + MTIME_INDEX)
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
