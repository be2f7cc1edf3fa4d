"""
What a name is, in one store request or none, and the directories one
session knows exist: what lets an upload into a directory the session has
just seen cost the PUT and at most one check (house rule 10: never ask the
store what is already known).

L{probe} answers "file, directory or nothing?" for the write checks.  What
the session knows of the name (L{cosgw.vfs.knowledge}: what it saw in the
last seconds, and its own changes) answers first; else one LIST of the
directory from just before the name (delimiter C{/}): the object C{dir/name}
comes first if it exists, and the common prefix C{dir/name/} follows the
few siblings whose names extend C{name} with a character below C{/}
(C{name.txt}, C{name-2}).  The names after it come along, so the session
then knows them too: the next uploads of a sequence of new names need no
check at all.  A HEAD would need a second request, a LIST of C{name/}, to
rule out a directory.  The listing carries no user metadata and no CRC: an
entry it gives is for the write checks (is it there, is it a directory, its
size), not for a stat.

L{stat_entry} answers a stat: from what the session knows exactly (a file
it read or wrote, a directory, nothing), else with a HEAD, and when that
finds no file, with the same LIST as L{probe}.

L{KnownDirectories} remembers, per session, the directories the session
saw exist (CWD, a listing, a probe, its own MKD and uploads) for
L{DIRECTORY_TTL} seconds, and forgets those its own RMD and renames remove.
What another session or another COS writer does meanwhile is not seen: a
directory removed elsewhere within the TTL comes back when this session
uploads into it (a key implies its prefixes), and one replaced by a file
of the same name then holds the file and the new key side by side, as COS
allows.  Both are the race every check-then-write already has (the check
of an upload has always come before its whole transfer).  The name written
is checked every time, from what the session saw of it within the last
L{cosgw.vfs.knowledge.NAME_TTL} seconds or with a request, so an upload
never lands on a directory and never replaces a file without the overwrite
permission, but for a change another writer made within those seconds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from cosgw.interfaces import Entry, IObjectStore, NoSuchKey
from cosgw.vfs import mtimes
from cosgw.vfs.errors import NotFound
from cosgw.vfs.knowing import knowledge_of
from cosgw.vfs.names import display

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem

#: Seconds a directory stays known after the session last saw it exist.
#: Each upload into it, and each listing of it, sees it again.
DIRECTORY_TTL = 30.0

#: Directories one session remembers at most; the least recently seen go.
MAX_KNOWN_DIRECTORIES = 256

#: Entries a probe asks for: enough for the siblings that sort between a
#: name and its C{name/} prefix in any sensible directory.  Beyond them a
#: second LIST asks for C{name/} itself.
PROBE_KEYS = 100

T = TypeVar("T")
U = TypeVar("U")


async def together(
    first: Coroutine[Any, Any, T], second: Coroutine[Any, Any, U]
) -> tuple[T, U]:
    """
    Run two checks at once (two store requests in flight, one round trip):
    both results, or the first one's error when both fail.  When the first
    fails at once (the session knew the answer), the second is not begun.
    """
    early = ensureDeferred(first)
    if early.called:
        known: list[T] = []
        refused: list[Failure] = []
        early.addCallbacks(known.append, refused.append)
        if refused:
            second.close()
            refused[0].raiseException()
        # The first is known at once (it was the session's): the second
        # alone, without the machinery of waiting for two.
        return known[0], await second
    checks: list[Deferred[Any]] = [early, ensureDeferred(second)]
    done = await DeferredList(checks, consumeErrors=True)
    for ok, value in done:
        if not ok:
            value.raiseException()
    return done[0][1], done[1][1]


async def probe(
    store: IObjectStore, key: str, name: str, ask: bool = False
) -> Optional[Entry]:
    """
    What is at C{key}: a file (its size and the store's time, no metadata,
    no CRC), a directory (a prefix C{key/} with something below it), or
    None.  A key that is both an object and a prefix is a file, as a stat
    (HEAD first) sees it.  What the session knows (the store is its
    L{cosgw.vfs.knowledge.KnowingStore}) answers without a request; else
    one LIST from just before the name, two when more than L{PROBE_KEYS}
    siblings sort between C{key} and C{key/}.

    @param name: the entry's name (the last segment).
    @param ask: ask the store, whatever the session knows.
    """
    known = None if ask else knowledge_of(store)
    sighting = known.lookup(key) if known is not None else None
    if sighting is not None:
        return sighting.entry
    prefix = key[: len(key) - len(name)]
    page = await store.list(
        prefix, delimiter="/", marker=prefix + _just_before(name), max_keys=PROBE_KEYS
    )
    if page.next_marker is not None and page.next_marker < key:
        # Odd names filled the page before this one: ask for it alone.
        page = await store.list(key, delimiter="/", max_keys=PROBE_KEYS)
    return await _found(store, page, key, name)


async def _found(
    store: IObjectStore, page: Any, key: str, name: str
) -> Optional[Entry]:
    """What C{page}, a LIST that reached C{key}, says is there."""
    for info in page.objects:
        if info.key == key:
            return Entry(name, False, info.size, info.mtime)
    below = key + "/"
    is_dir = below in page.prefixes
    if not is_dir and page.next_marker is not None and page.next_marker < below:
        rest = await store.list(below, delimiter="/", max_keys=1)
        is_dir = bool(rest.objects or rest.prefixes)
    return Entry(name, True, 0, 0.0) if is_dir else None


def _just_before(name: str) -> str:
    """
    A marker below C{name} and above any other name (but those that extend
    C{name}'s first characters with the one just below its last, then a
    character beyond U+FFFF): a LIST from it starts at C{name}.
    """
    code = ord(name[-1]) - 1
    if code < 0x20 or 0xD800 <= code <= 0xDFFF:
        return name[:-1]
    return name[:-1] + chr(code) + "\uffff"


async def stat_entry(
    fs: ObjectFileSystem, segments: Sequence[str], with_time: bool = True
) -> Entry:
    """
    A stat of C{segments}: what the session knows exactly (a file it read
    or wrote in the last second, a directory, a name it removed or found
    missing); else the file's HEAD; else what L{probe} finds, a directory
    (whose time is unknown, 0.0, as in a listing) or nothing.  A name that
    only a listing showed missing is asked for with a HEAD all the same:
    another session may have just made it (rclone sets a file's time over
    another connection than the upload's).  C{with_time} False: a file's
    time may be the store's (no LIST of the markers of client times).

    @raise NotFound: nothing is there.
    """
    if not segments:
        return Entry("/", True, 0, 0.0)
    key = fs.key(segments)
    known = knowledge_of(fs.store)
    sighting = known.lookup(key) if known is not None else None
    if sighting is not None and sighting.exact:
        entry = sighting.entry
    elif sighting is not None and sighting.found is not None and with_time:
        # A file this session read a moment ago: only the markers of client
        # times are missing from what it knows.
        return await mtimes.found_entry(fs, segments, sighting.found)
    else:
        at = known.stamp() if known is not None else None
        try:
            return await fs._head_entry(segments, with_time)
        except NoSuchKey:
            pass
        entry = await probe(fs.store, key, segments[-1])
        if entry is not None and not entry.is_dir:
            # A file came between the HEAD and the LIST (or a listing saw
            # one): its HEAD says what it is.
            return await fs._head_entry(segments, with_time)
        if entry is None and known is not None and at is not None:
            known.learn(key, None, True, at)
    if entry is None:
        raise NotFound(display(segments))
    fs.directories.saw(segments)
    return entry


class KnownDirectories:
    """
    The directories one session saw exist, each for L{DIRECTORY_TTL}
    seconds since it was last seen; see the module docstring.  Without a
    clock nothing is remembered.
    """

    def __init__(
        self,
        clock: Optional[IReactorTime],
        ttl: float = DIRECTORY_TTL,
        limit: int = MAX_KNOWN_DIRECTORIES,
    ) -> None:
        self._clock = clock
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def __contains__(self, segments: Sequence[str]) -> bool:
        """Whether the directory at C{segments} is known to exist (the home is)."""
        if not segments:
            return True
        if self._clock is None:
            return False
        key = tuple(segments)
        seen = self._seen.get(key)
        if seen is None:
            return False
        if self._clock.seconds() - seen > self.ttl:
            del self._seen[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def saw(self, segments: Sequence[str]) -> None:
        """The directory at C{segments} exists now."""
        if not segments or self._clock is None:
            return
        key = tuple(segments)
        self._seen[key] = self._clock.seconds()
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def forget(self, segments: Sequence[str]) -> None:
        """The directory at C{segments}, and all below it, may be gone."""
        top = tuple(segments)
        for key in [k for k in self._seen if k[: len(top)] == top]:
            del self._seen[key]
