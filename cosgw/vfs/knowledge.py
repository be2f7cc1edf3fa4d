"""
What one session knows of the names in its store, for a second: what lets
a stat, or the checks before an upload, be answered without a request
(house rule 10).  SFTP clients ask before and after each transfer: OpenSSH's
C{put} stats the name it is about to write, its C{get} stats the file twice
before opening it, paramiko stats a file it has just uploaded, rclone stats
its directory, the name, and the name again after setting its time.

Every request of the session goes through a
L{cosgw.vfs.knowing.KnowingStore}, which teaches this knowledge from the
answers and from the session's own changes:

  - a HEAD or a GET: the file, exactly (size, the time a client set or the
    store's, CRC-64);
  - a LIST of a directory (delimiter C{/}): every name in the span of keys
    it covers (from its marker to its last key, or to the end), so a name
    in that span that it does not show is known to be absent;
  - the session's PUTs, completed uploads, copies and deletes: what they
    made (a file the store gave a time is known exactly), or what they
    removed.  A change that fails leaves its name unknown.

Knowledge lasts L{NAME_TTL} seconds from the request that brought it; an
answer that was on its way while the session changed the name does not
overwrite the newer change (each piece of knowledge is stamped when its
request left, each change when it completed).  A change by another session
of the same store in this process voids what the others knew of the name
at once (L{Changes}).  A writer outside the gateway (another replica, the
COS console) is not seen before the knowledge ages: within L{NAME_TTL}
seconds a stat may show a file it has just replaced or removed as it was,
and an upload may be checked against what was there (the race of any check
made before a transfer, one second longer).

What a listing shows is enough for the write checks (a file there, of that
size; a directory; nothing), not for a stat of a file or of a missing name:
listings carry no user metadata (the time a client set), and another
connection of the same client (rclone sets a file's time over another one
than the upload's) may be served by another replica.  A stat then asks
(HEAD); a directory a listing shows answers a stat.

Without a clock nothing is remembered.  Memory is bounded per session:
L{MAX_NAMES} names and L{MAX_SPAN_ENTRIES} listed entries.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet.interfaces import IReactorTime

from cosgw.interfaces import Entry, ListPage, ObjectInfo
from cosgw.vfs.names import is_hidden_key

__all__ = [
    "MAX_NAMES",
    "MAX_SPAN_ENTRIES",
    "NAME_TTL",
    "Changes",
    "SessionKnowledge",
    "Sighting",
    "changes_of",
    "split_key",
]

#: Seconds a session trusts what it saw of a name (see the module
#: docstring): enough for a client's stat, open and stat around one small
#: transfer over a slow link, and for a run of uploads to share one LIST;
#: short, as a writer outside the gateway is not seen before.
NAME_TTL = 1.0

#: Names one session knows individually; the least recently learned go.
MAX_NAMES = 256

#: Entries of listed spans one session keeps, all directories together; the
#: oldest spans go first, and a longer span is cut short.
MAX_SPAN_ENTRIES = 1000

#: Directories whose spans one session keeps.
MAX_SPANS = 16


@dataclass(frozen=True)
class Sighting:
    """
    What a session knows of one name: the entry there (None: nothing), and
    whether a stat may show it (a file from a HEAD, a GET or the session's
    own write; a directory; nothing), or only the write checks may use it
    (a file seen in a listing).
    """

    entry: Optional[Entry]
    exact: bool
    #: A file read (HEAD, GET) before the markers of client times in its
    #: directory were known: what the store said of it, so that a stat
    #: needs only those markers, not another HEAD.
    found: Optional[ObjectInfo] = None


@dataclass
class _Known:
    sighting: Sighting
    #: Order of the request that brought it (see L{SessionKnowledge.stamp}).
    order: int
    seen: float


@dataclass
class _Span:
    """
    A listed span of one directory: every key from C{first} to C{until}
    (both relative to the directory, inclusive; C{until} None: to the end)
    is one of C{entries} (files by name, directories as C{name/}).
    """

    first: str
    until: Optional[str]
    order: int
    seen: float
    entries: dict[str, Entry] = field(default_factory=dict)

    def covers(self, name: str) -> bool:
        """Whether both C{name} and C{name/} are inside the span."""
        return self.first <= name and (self.until is None or name + "/" <= self.until)

    def touches(self, other: _Span) -> bool:
        """Whether the spans overlap or meet (one starts just after the other)."""
        return _before_or_at(other.first, self.until) and _before_or_at(
            self.first, other.until
        )


def _before_or_at(first: str, until: Optional[str]) -> bool:
    """C{first} is inside or just after a span ending at C{until}."""
    return until is None or first <= until + "\0"


def split_key(key: str) -> tuple[str, str]:
    """A key's directory prefix (with its slash) and name."""
    cut = key.rfind("/") + 1
    return key[:cut], key[cut:]


class Changes:
    """
    The names the sessions of one store changed in the last L{NAME_TTL}
    seconds, in this process: what makes one session's change void what
    the others knew of the name at once, so that only writers outside the
    gateway (another replica, the COS console) wait for knowledge to age.
    It also orders every request of those sessions (L{stamp}).
    """

    #: Changes remembered at most; past it all knowledge before is void.
    limit = 10_000

    def __init__(self) -> None:
        self._orders = itertools.count(1)
        self._changed: OrderedDict[str, tuple[int, float]] = OrderedDict()
        #: Knowledge ordered before this is void (the record overflowed).
        self.floor = 0
        self._ttl = 0.0

    def stamp(self) -> int:
        return next(self._orders)

    def record(self, key: str, order: int, when: float, ttl: float) -> None:
        """
        C{key} (and so each directory above it) changed, as of C{order};
        changes older than the longest knowledge of the sessions (C{ttl})
        can void nothing any more.
        """
        self._ttl = max(self._ttl, ttl)
        while self._changed:
            oldest = next(iter(self._changed.values()))
            if when - oldest[1] <= self._ttl:
                break
            self._changed.popitem(last=False)
        name = key
        while name:
            self._changed[name] = (order, when)
            self._changed.move_to_end(name)
            name = name[: max(name.rfind("/"), 0)]
        if len(self._changed) > self.limit:
            self._changed.clear()
            self.floor = order

    def since(self, key: str) -> int:
        """The order of the last change of C{key} still remembered (0: none)."""
        return max(self._changed.get(key, (0, 0.0))[0], self.floor)


#: The L{Changes} of each store, shared by the sessions that use it.  Kept
#: beside the stores rather than passed down from the gateway: every
#: session's file system wraps its store here, and a store that goes takes
#: its record with it.
_CHANGES: weakref.WeakKeyDictionary[object, Changes] = weakref.WeakKeyDictionary()


def changes_of(store: object) -> Changes:
    """The record of changes shared by the sessions of C{store}."""
    changes = _CHANGES.get(store)
    if changes is None:
        changes = _CHANGES[store] = Changes()
    return changes


class SessionKnowledge:
    """What one session knows of names; see the module docstring."""

    def __init__(
        self,
        clock: Optional[IReactorTime],
        ttl: Optional[float] = None,
        changes: Optional[Changes] = None,
    ):
        """
        @param ttl: seconds knowledge lasts (default L{NAME_TTL}).
        @param changes: the record the sessions of the same store share
            (L{KnowingStore} sets it; a new one by default).
        """
        self._clock = clock
        self.ttl = NAME_TTL if ttl is None else ttl
        self._names: OrderedDict[str, _Known] = OrderedDict()
        self._spans: OrderedDict[str, _Span] = OrderedDict()
        self.changes = changes or Changes()

    def stamp(self) -> tuple[int, float]:
        """The order and time of a request leaving (or a change completing)."""
        return self.changes.stamp(), self._clock.seconds() if self._clock else 0.0

    def _fresh(self, seen: float) -> bool:
        assert self._clock is not None
        return self._clock.seconds() - seen <= self.ttl

    # -- asking -------------------------------------------------------------

    def lookup(self, key: str) -> Optional[Sighting]:
        """What is known of the name C{key} now; None: nothing."""
        if self._clock is None:
            return None
        best: Optional[tuple[int, Sighting]] = None
        known = self._names.get(key)
        if known is not None:
            if self._fresh(known.seen):
                best = known.order, known.sighting
            else:
                del self._names[key]
        prefix, name = split_key(key)
        span = self._spans.get(prefix)
        if span is not None and not self._fresh(span.seen):
            del self._spans[prefix]
            span = None
        if (
            span is not None
            and span.covers(name)
            and (best is None or span.order > best[0])
        ):
            best = span.order, self._from_span(span, name)
        if best is None or best[0] < self.changes.since(key):
            # Unknown, or changed since by another session.
            return None
        return best[1]

    @staticmethod
    def _from_span(span: _Span, name: str) -> Sighting:
        file = span.entries.get(name)
        if file is not None:
            return Sighting(file, exact=False)
        directory = span.entries.get(name + "/")
        # A listing's "nothing there" is for the write checks: a stat asks.
        return Sighting(directory, exact=directory is not None)

    # -- learning -------------------------------------------------------------

    def learn(
        self,
        key: str,
        entry: Optional[Entry],
        exact: bool,
        at: tuple[int, float],
        found: Optional[ObjectInfo] = None,
    ) -> None:
        """
        C{entry} (None: nothing) is at C{key}, as of the request or change
        stamped C{at}; newer knowledge of the name stands.  C{found}: see
        L{Sighting.found}.
        """
        if self._clock is None or is_hidden_key(key):
            return
        order, seen = at
        known = self._names.get(key)
        if known is not None and known.order > order:
            return
        self._names[key] = _Known(Sighting(entry, exact, found), order, seen)
        self._names.move_to_end(key)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)

    def forget(self, key: str) -> None:
        """
        Nothing is known any more of the name C{key}, of its directory's
        span, or of anything below it (a change whose outcome is unknown),
        by this session or the others.
        """
        if self._clock is not None:
            order, when = self.stamp()
            self.changes.record(key, order, when, self.ttl)
        self._names.pop(key, None)
        self._spans.pop(split_key(key)[0], None)
        below = key + "/"
        for p in [p for p in self._spans if p.startswith(below)]:
            del self._spans[p]
        for k in [k for k in self._names if k.startswith(below)]:
            del self._names[k]

    def listed(
        self, prefix: str, marker: str, page: ListPage, at: tuple[int, float]
    ) -> None:
        """A LIST of the directory C{prefix} from C{marker}, sent at C{at}, gave C{page}."""
        if self._clock is None:
            return
        order, seen = at
        first = marker[len(prefix) :] + "\0" if marker else ""
        until = page.next_marker[len(prefix) :] if page.next_marker else None
        if prefix and (page.objects or page.prefixes):
            # Something is below the prefix: the directory is there.
            folder = prefix[:-1]
            directory = Entry(split_key(folder)[1], True, 0, 0.0)
            self.learn(folder, directory, True, at)
        old = self._spans.pop(prefix, None)
        if old is not None and not self._fresh(old.seen):
            old = None
        if (
            old is not None
            and len(old.entries) >= MAX_SPAN_ENTRIES
            and old.until is not None
            and first > old.until
        ):
            # The next page of a long listing: past a full span, it would be
            # cut off again (a listing's cost must not grow with this).
            self._spans[prefix] = old
            return
        span = _Span(first, until, order, seen)
        for info in page.objects:
            name = info.key[len(prefix) :]
            if name and not is_hidden_key(info.key):
                span.entries[name] = Entry(name, False, info.size, info.mtime)
        for p in page.prefixes:
            name = p[len(prefix) :]
            span.entries[name] = Entry(name.rstrip("/"), True, 0, 0.0)
        if old is not None and old.touches(span):
            span = self._merge(old, span)
        self._spans[prefix] = span
        self._bound()

    @staticmethod
    def _merge(old: _Span, new: _Span) -> _Span:
        """One span from two that touch: the newer one's entries where both speak."""
        first = min(old.first, new.first)
        until = None
        if old.until is not None and new.until is not None:
            until = max(old.until, new.until)
        kept = {k: e for k, e in old.entries.items() if not _inside(k, new)}
        kept.update(new.entries)
        # The older part ages first: the whole span with it.
        return _Span(
            first, until, min(old.order, new.order), min(old.seen, new.seen), kept
        )

    def _bound(self) -> None:
        while len(self._spans) > MAX_SPANS:
            self._spans.popitem(last=False)
        total = sum(len(s.entries) for s in self._spans.values())
        while total > MAX_SPAN_ENTRIES and len(self._spans) > 1:
            _, dropped = self._spans.popitem(last=False)
            total -= len(dropped.entries)
        if total > MAX_SPAN_ENTRIES:
            (span,) = self._spans.values()
            names = sorted(span.entries)[:MAX_SPAN_ENTRIES]
            span.entries = {k: span.entries[k] for k in names}
            span.until = names[-1]

    def changed(self, key: str, entry: Optional[Entry], exact: bool) -> None:
        """
        The session made C{entry} the name C{key} (None: removed it), just
        now: known individually, and in its directory's span.
        """
        if self._clock is None or is_hidden_key(key):
            return
        at = self.stamp()
        self.changes.record(key, at[0], at[1], self.ttl)
        self.learn(key, entry, exact, at)
        if entry is not None:
            # What holds a name is a directory, up to the top.
            folder = split_key(key)[0][:-1]
            while folder:
                name = split_key(folder)[1]
                self.learn(folder, Entry(name, True, 0, 0.0), True, at)
                folder = split_key(folder)[0][:-1]
        prefix, name = split_key(key)
        span = self._spans.get(prefix)
        if span is not None and span.covers(name):
            span.entries.pop(name, None)
            if entry is not None:
                span.entries[name + "/" if entry.is_dir else name] = entry


def _inside(name: str, span: _Span) -> bool:
    return span.first <= name and (span.until is None or name <= span.until)
