"""
What a name is, in one store request, and the directories one session
knows exist: what lets an upload into a directory the session has just
seen cost one check and the PUT (house rule 10: never ask the store what
is already known).

L{probe} answers "file, directory or nothing?" with one LIST of the name
itself as a prefix (C{dir/name}, delimiter C{/}): the object C{dir/name}
sorts first if it exists, and the common prefix C{dir/name/} follows the
few siblings whose names extend C{name} with a character below C{/}
(C{name.txt}, C{name-2}).  A HEAD would need a second request, a LIST of
C{name/}, to rule out a directory.  The listing carries no user metadata
and no CRC: an entry it gives is for the write checks (is it there, is it
a directory, its size), not for MDTM or MLST, which HEAD.

L{KnownDirectories} remembers, per session, the directories the session
saw exist (CWD, a listing, a probe, its own MKD and uploads) for
L{DIRECTORY_TTL} seconds, and forgets those its own RMD and renames remove.
What another session or another COS writer does meanwhile is not seen: a
directory removed elsewhere within the TTL comes back when this session
uploads into it (a key implies its prefixes), and one replaced by a file
of the same name then holds the file and the new key side by side, as COS
allows.  Both are the race every check-then-write already has (the check
of an upload has always come before its whole transfer); the checks that
keep data safe are never cached: the name written is probed every time,
so an upload never lands on a directory and never replaces a file without
the overwrite permission, and the resume rules see the name as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any, Optional, TypeVar

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from cosgw.interfaces import Entry, IObjectStore

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
    both results, or the first one's error when both fail.
    """
    checks: list[Deferred[Any]] = [ensureDeferred(first), ensureDeferred(second)]
    done = await DeferredList(checks, consumeErrors=True)
    for ok, value in done:
        if not ok:
            value.raiseException()
    return done[0][1], done[1][1]


async def probe(store: IObjectStore, key: str, name: str) -> Optional[Entry]:
    """
    What is at C{key}: a file (its size and the store's time, no metadata,
    no CRC), a directory (a prefix C{key/} with something below it), or
    None.  A key that is both an object and a prefix is a file, as a stat
    (HEAD first) sees it.  One LIST; two when more than L{PROBE_KEYS}
    siblings sort between C{key} and C{key/}.

    @param name: the entry's name (the last segment).
    """
    page = await store.list(key, delimiter="/", max_keys=PROBE_KEYS)
    for info in page.objects:
        if info.key == key:
            return Entry(name, False, info.size, info.mtime)
    below = key + "/"
    is_dir = below in page.prefixes
    if not is_dir and page.next_marker is not None and page.next_marker < below:
        rest = await store.list(below, delimiter="/", max_keys=1)
        is_dir = bool(rest.objects or rest.prefixes)
    return Entry(name, True, 0, 0.0) if is_dir else None


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
