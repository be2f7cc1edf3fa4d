"""
Directory listings that arrive page by page, so a frontend can stream them:
the first entries go out before the last page is fetched, and memory does
not grow with the directory.

A listing is one audit event (C{list}, with its C{entries}), emitted once
when it ends: at its last page, at a page that failed, or when the frontend
L{closes <Listing.close>} it before the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import Entry, IListing, ListPage
from cosgw.transfer import TransferStopped
from cosgw.vfs import mtimes
from cosgw.vfs.names import MTIME_INDEX, is_reserved

if TYPE_CHECKING:
    from cosgw.vfs.filesystem import ObjectFileSystem


@implementer(IListing)
class Listing:
    """A directory listing of one file system, one store page at a time."""

    def __init__(self, fs: ObjectFileSystem, segments: list[str]) -> None:
        self.fs = fs
        self.segments = segments
        self._marker = ""
        self._done = False
        self._first = True
        #: The markers of the directory's files (the times clients set).
        self._times: Optional[mtimes.DirectoryTimes] = None
        #: Entries handed out so far, and whether the event was emitted.
        self.count = 0
        self._emitted = False

    def next_page(self) -> Deferred[Optional[list[Entry]]]:
        """
        @return: Deferred firing with the next list of entries, or None at
            the end; the first call fails with L{NotFound} if there is
            nothing at the path.  A file's listing is the file itself.
        """
        d = self.fs._run(self.segments, self._next)
        if self.fs.session is not None:
            d.addBoth(self._counted)
        return d

    def _counted(self, result: Any) -> Any:
        if isinstance(result, Failure):
            self._emit(result.value)
        elif result is None:
            self._emit(None)
        else:
            self.count += len(result)
        return result

    def _emit(self, error: Optional[BaseException]) -> None:
        if self._times is not None:
            self._times.close()
        if not self._emitted:
            self._emitted = True
            self.fs.emit("list", self.segments, error, entries=self.count)

    def close(self, error: Optional[BaseException] = None) -> None:
        """
        The frontend stops before the end: the listing's event says so,
        with C{error} or L{TransferStopped}.  Nothing after the end.
        """
        if self.fs.session is not None:
            self._emit(error or TransferStopped("the listing was not read to its end"))

    async def _next(self) -> Optional[list[Entry]]:
        if self._done:
            return None
        fs = self.fs
        prefix = fs.dir_prefix(self.segments)
        first, self._first = self._first, False
        if first:
            # The markers' first LIST goes with the directory's.
            self._times = fs.times.listing(prefix)
        page = await fs.store.list(prefix, delimiter="/", marker=self._marker)
        assert self._times is not None
        if first and _may_hold_index(page, prefix + MTIME_INDEX):
            if await fs.times.migrate(fs.store, prefix):
                self._times.close()  # markers were written: ask again
                self._times = fs.times.listing(prefix)
        reserved = fs.times.metadata_prefix
        files = [
            (info.key[len(prefix) :], info)
            for info in page.objects
            if not is_reserved(info.key, reserved)
        ]
        times = await self._times.upto(files[-1][0] if files else None)
        entries: list[Entry] = []
        for name, info in files:
            if name in ("", ".", "..", MTIME_INDEX):
                continue  # the directory's own marker, odd keys, an old index
            applied = mtimes.newest(times.get(name, ()), info)
            mtime = applied.when if applied else mtimes.client_mtime(info)
            entries.append(Entry(name, False, info.size, mtime))
        for p in page.prefixes:
            name = p[len(prefix) :].rstrip("/")
            if name in ("", ".", "..") or "/" in name or is_reserved(p, reserved):
                continue
            entries.append(Entry(name, True, 0, 0.0))
        entries.sort(key=lambda e: e.name)
        if page.next_marker is None:
            self._done = True
        else:
            self._marker = page.next_marker
        if first and self.segments:
            if page.objects or page.prefixes:
                fs.directories.saw(self.segments)
            else:
                # Nothing below the prefix: a file (its HEAD), or nothing
                # at all (NoSuchKey, which is NotFound).
                self._times.close()
                return [await fs._head_entry(self.segments)]
        return entries


def _may_hold_index(page: ListPage, index: str) -> bool:
    """
    Whether the directory may have an index of client times from an
    earlier version (to migrate, L{mtimes.Times.migrate}): it is on this
    first page, or may be on a later one.  Most directories have none.
    """
    if any(info.key == index for info in page.objects):
        return True
    return page.next_marker is not None and page.next_marker < index
