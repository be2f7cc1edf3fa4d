"""
What the gateway knows of the markers of times in each directory, for a
second, shared by every session of one store in this process: what lets
the stats of a directory's files, its listing and the times set in it
share one LIST of its markers (house rule 10) instead of one per file.
The markers themselves are described in L{cosgw.vfs.mtimes}.

One LIST of a directory's marker folder (C{<metadata_prefix>mtimes/<dir>/},
delimiter C{/}, its first page of up to 1,000 keys) gives every marker of
the directory's files and, as common prefixes, the subdirectories that hold
markers somewhere below: when that page is the whole answer, every other
subdirectory holds none, so its own listing and the stats of its files
need no LIST of markers either (the case of most directories: no client
ever set a time there).  A first page cut short answers for the names its
keys reach; the markers of a name past them are LISTed by name.

Like what a session knows of names (L{cosgw.vfs.knowledge}, whose model
this follows):

  - an answer lasts L{TIMES_TTL} seconds from the LIST that brought it;
  - a change made in this process (a time set, a file deleted or renamed,
    a directory renamed, an old index migrated) updates what is known of
    its directory at once, for every session; an answer that was on its way
    while its directory changed is given to those who asked, not kept;
  - a time set by a writer outside this process (another replica) on a
    file already there when the answer came is not seen before the answer
    ages: within L{TIMES_TTL} seconds a stat or a listing here may show the
    time the file had before.

What may use it: stats, listings and a time set (whose LIST of the file's
markers only says which old ones to delete after its PUT: one it does not
know of stays behind, and the newest marker wins anyway).  A delete or a
rename always asks the store for the file's markers (L{cosgw.vfs.mtimes}):
it is the last chance to remove them, and a rename must carry the newest
time to its new name.

Without a clock nothing is remembered.  Memory is bounded: L{MAX_FOLDERS}
directories, L{MAX_ITEMS} markers and subdirectories in all.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from cosgw.vfs.mtimes import Marker

__all__ = ["MAX_FOLDERS", "MAX_ITEMS", "TIMES_TTL", "FolderTimes", "TimesCache"]

#: Seconds an answer about a directory's markers lasts: what a time set
#: through another gateway may take to show here (see the module
#: docstring); the same second a session trusts what it saw of names.
TIMES_TTL = 1.0

#: Directories whose answers are kept; the oldest go first.
MAX_FOLDERS = 256

#: Markers and subdirectories kept, all directories together.
MAX_ITEMS = 20_000


@dataclass
class FolderTimes:
    """
    The markers of one directory's files, by name, from the first page of
    a LIST of its marker folder C{folder} (and this process's changes
    since): C{below}, the subdirectories (C{name/}) holding markers;
    C{until}, the key the page stopped at (None: the whole folder).
    """

    folder: str
    markers: dict[str, list[Marker]] = field(default_factory=dict)
    below: set[str] = field(default_factory=set)
    until: Optional[str] = None
    seen: float = 0.0

    def reaches(self, rest: str) -> bool:
        """
        Whether every key of the folder that starts with C{rest} (a name's
        C{escaped name + SEP}, or a subdirectory's C{name/}) is known.
        """
        if self.until is None:
            return True
        start = self.folder + rest
        return self.until > start and not self.until.startswith(start)

    def in_order(self) -> list[Marker]:
        """Every marker known, in key order (the order of the files' names)."""
        return sorted((m for ms in self.markers.values() for m in ms), key=_key)

    def size(self) -> int:
        return sum(len(ms) for ms in self.markers.values()) + len(self.below)


def _key(marker: Marker) -> str:
    return marker.key


class _Asking:
    """A first page on its way: who waits for it, and whether it may be kept."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[FolderTimes]] = []
        #: The folder changed since the LIST left: the answer is not kept.
        self.stale = False

    def wait(self) -> Deferred[FolderTimes]:
        d: Deferred[FolderTimes] = Deferred()
        self.waiting.append(d)
        return d

    def settle(self, result: Any) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class TimesCache:
    """What is known of the markers of each directory; see the module docstring."""

    def __init__(self, clock: Optional[IReactorTime], ttl: Optional[float] = None):
        """@param ttl: seconds an answer lasts (default L{TIMES_TTL})."""
        self.clock = clock
        self.ttl = TIMES_TTL if ttl is None else ttl
        self._answers: OrderedDict[str, FolderTimes] = OrderedDict()
        self._asking: dict[str, _Asking] = {}

    def now(self) -> float:
        return self.clock.seconds() if self.clock is not None else 0.0

    # -- asking -------------------------------------------------------------

    def answer(self, folder: str, root: str) -> Optional[FolderTimes]:
        """
        What is known of the marker folder C{folder} (below the markers'
        C{root}): its own answer, or an empty one when a directory above
        it answered that nothing below it holds markers; None: unknown.
        """
        if self.clock is None:
            return None
        known = self._fresh(folder)
        if known is not None:
            return known
        above = folder
        while len(above) > len(root):
            cut = above.rfind("/", 0, len(above) - 1) + 1
            above, child = above[:cut], above[cut:]
            if len(above) < len(root):
                break
            parent = self._fresh(above)
            if parent is not None and parent.reaches(child):
                if child not in parent.below:
                    return FolderTimes(folder, seen=parent.seen)
                # Markers somewhere below the child: it does not say where.
                return None
        return None

    def markers_of(
        self, folder: str, name: str, rest: str, root: str
    ) -> Optional[list[Marker]]:
        """
        The markers of the file C{name}, whose keys start with C{folder +
        rest}, when known; None: ask.
        """
        known = self.answer(folder, root)
        if known is None or not known.reaches(rest):
            return None
        return list(known.markers.get(name, ()))

    def fetch(
        self, folder: str, ask: Callable[[], Deferred[FolderTimes]]
    ) -> Deferred[FolderTimes]:
        """
        The first page of C{folder}, as C{ask()} reads it: the one already
        on its way when there is one (and the folder has not changed since
        it left), else a new one, kept when it comes back unless the folder
        changed meanwhile.
        """
        asking = self._asking.get(folder)
        if asking is not None and not asking.stale:
            return asking.wait()
        asking = self._asking[folder] = _Asking()
        waiter = asking.wait()

        def came(result: Any) -> None:
            if self._asking.get(folder) is asking:
                del self._asking[folder]
            if not isinstance(result, Failure) and not asking.stale:
                self._keep(result)
            asking.settle(result)

        ask().addBoth(came)
        return waiter

    def _fresh(self, folder: str) -> Optional[FolderTimes]:
        known = self._answers.get(folder)
        if known is None:
            return None
        if self.clock is None or self.now() - known.seen > self.ttl:
            del self._answers[folder]
            return None
        return known

    def _keep(self, answer: FolderTimes) -> None:
        if self.clock is None:
            return
        self._answers.pop(answer.folder, None)
        self._answers[answer.folder] = answer
        total = sum(a.size() for a in self._answers.values())
        while len(self._answers) > 1 and (
            len(self._answers) > MAX_FOLDERS or total > MAX_ITEMS
        ):
            _, dropped = self._answers.popitem(last=False)
            total -= dropped.size()

    # -- changes made in this process -----------------------------------------

    def _stale(self, folder: str) -> None:
        """An answer of C{folder} on its way may miss a change: not kept."""
        asking = self._asking.get(folder)
        if asking is not None:
            asking.stale = True

    def changed(
        self,
        folder: str,
        name: str,
        rest: str,
        root: str,
        added: Iterable[Marker] = (),
        removed: Iterable[str] = (),
        gone: bool = False,
    ) -> None:
        """
        The markers of the file C{name} (keys C{folder + rest}) changed through this
        process: C{added} were stored, the keys C{removed} deleted; C{gone}:
        the file went, and every marker known of it with it.
        """
        added = list(added)
        self._stale(folder)
        known = self._fresh(folder)
        if known is not None and known.reaches(rest):
            drop = set(removed)
            kept = [] if gone else known.markers.get(name, [])
            now = [m for m in kept if m.key not in drop] + added
            if now:
                known.markers[name] = now
            else:
                known.markers.pop(name, None)
        if added:
            self.holds(folder, root)

    def holds(self, folder: str, root: str) -> None:
        """
        Markers are now below C{folder}: each directory above it knows its
        child on the way may hold some, and answers of them on their way
        are not kept.
        """
        self._stale(folder)
        above = folder
        while len(above) > len(root):
            cut = above.rfind("/", 0, len(above) - 1) + 1
            above, child = above[:cut], above[cut:]
            if len(above) < len(root):
                break
            self._stale(above)
            known = self._fresh(above)
            if known is not None and known.reaches(child):
                known.below.add(child)

    def forget(self, folder: str, root: str) -> None:
        """
        Markers below C{folder} changed in ways not followed one by one (a
        directory renamed, an old index migrated): nothing is known of them.
        """
        for known in [f for f in self._answers if f.startswith(folder)]:
            del self._answers[known]
        for asking in [f for f in self._asking if f.startswith(folder)]:
            self._stale(asking)
        self.holds(folder, root)

    def clear(self) -> None:
        """Forget every answer (they are asked again)."""
        self._answers.clear()
        for asking in self._asking.values():
            asking.stale = True


#: The caches of each store, by markers' root, shared by its sessions (as
#: L{cosgw.vfs.knowledge.changes_of} keeps the record of their changes).
_CACHES: weakref.WeakKeyDictionary[object, dict[str, TimesCache]] = (
    weakref.WeakKeyDictionary()
)


def shared(store: object, root: str, clock: Optional[IReactorTime]) -> TimesCache:
    """The cache of the markers under C{root} in C{store}, for every session."""
    caches = _CACHES.setdefault(store, {})
    cache = caches.get(root)
    if cache is None:
        cache = caches[root] = TimesCache(clock)
    elif cache.clock is None and clock is not None:
        cache.clock = clock
    return cache
