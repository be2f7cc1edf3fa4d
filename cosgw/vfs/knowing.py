"""
A session's door to its store: every request passes through a
L{KnowingStore}, whose answers teach the session's L{SessionKnowledge}
(see L{cosgw.vfs.knowledge}) and which asks a question already on its
way only once.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import (
    Entry,
    IByteSource,
    IObjectStore,
    ListPage,
    ObjectInfo,
    PartInfo,
    PendingUpload,
)
from cosgw.vfs.knowledge import SessionKnowledge, Sighting, changes_of, split_key
from cosgw.vfs.mtimes import Times, client_mtime, read_time

__all__ = ["KnowingStore", "knowledge_of"]


def _file(info: ObjectInfo, metadata: Optional[Mapping[str, str]] = None) -> Sighting:
    """
    A file the session wrote: exact when the store gave its time (a new
    object: no earlier marker of a client's time applies to it).
    """
    if metadata is not None:
        info = replace(info, metadata=dict(metadata))
    name = split_key(info.key)[1]
    mtime = client_mtime(info)
    entry = Entry(name, False, info.size, mtime, info.crc64)
    return Sighting(entry, exact=mtime > 0)


def _found(times: Optional[Times]) -> Callable[[ObjectInfo], Sighting]:
    """
    How a file the session read (HEAD, GET) teaches it: exact only when
    the markers of client times in its directory are known, since a marker
    may hold the file's time (L{cosgw.vfs.mtimes.read_time}).
    """

    def sighting(info: ObjectInfo) -> Sighting:
        mtime, exact = read_time(times, info)
        entry = Entry(split_key(info.key)[1], False, info.size, mtime, info.crc64)
        if exact:
            return Sighting(entry, exact=mtime > 0)
        return Sighting(entry, exact=False, found=info)

    return sighting


class _Shared:
    """One request's answer, for each of those who asked the same question."""

    def __init__(self, settled: Deferred[Any], at: tuple[int, float]) -> None:
        self.at = at
        self._waiting: list[Deferred[Any]] = []
        self._result: Any = None
        self._done = False
        self.settled: Deferred[None] = settled.addBoth(self._settle)

    def _settle(self, result: Any) -> None:
        self._result, self._done = result, True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            self._fire(d)

    def _fire(self, d: Deferred[Any]) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self._done:
            self._fire(d)
        else:
            self._waiting.append(d)
        return d


@implementer(IObjectStore)
class KnowingStore:
    """
    A session's store: every request passes to C{store}, and its answer
    teaches the session's L{SessionKnowledge}.  It stands for the store it
    wraps (equal to it, hashed as it), so the registry of kept uploads,
    indexed by store, sees one store whichever session asks.
    """

    def __init__(
        self, store: IObjectStore, known: SessionKnowledge, times: Optional[Times] = None
    ) -> None:
        """
        @param times: the markers of client times of C{store}, which say
            whether a file read is known with its time.
        """
        self.store = store
        self.known = known
        self._found = _found(times)
        known.changes = changes_of(store)
        self.description = store.description
        #: HEADs and LISTs on their way, by question.
        self._asking: dict[tuple[Any, ...], _Shared] = {}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KnowingStore):
            other = other.store
        return bool(self.store == other)

    def __hash__(self) -> int:
        return hash(self.store)

    def _learn(
        self, d: Deferred[Any], key: str, teach: Any, at: Optional[tuple[int, float]]
    ) -> Deferred[Any]:
        """
        When C{d} succeeds, C{teach(result)} gives the C{Sighting} of C{key}
        (or None: nothing to learn), as of C{at} (None: of its completion,
        a change); a change that fails leaves the name unknown.
        """

        def succeeded(result: Any) -> Any:
            sighting = teach(result)
            if sighting is not None:
                if at is None:
                    self.known.changed(key, sighting.entry, sighting.exact)
                else:
                    self.known.learn(
                        key, sighting.entry, sighting.exact, at, sighting.found
                    )
            return result

        def failed(failure: Failure) -> Failure:
            if at is None:
                self.known.forget(key)
            return failure

        return d.addCallbacks(succeeded, failed)

    # -- reading --------------------------------------------------------------

    def _asked(
        self, question: tuple[Any, ...], ask: Callable[[], Deferred[Any]]
    ) -> tuple[Deferred[Any], tuple[int, float]]:
        """
        The answer to C{question} (a HEAD or a LIST), and the stamp of the
        request that brings it: the one already on its way, when the same
        question is (lftp asks twice at once when it enters a directory),
        else a new one, C{ask()}.
        """
        shared = self._asking.get(question)
        if shared is None:
            at = self.known.stamp()
            shared = self._asking[question] = _Shared(ask(), at)
            shared.settled.addBoth(lambda _: self._asking.pop(question, None))
        return shared.wait(), shared.at

    def head(self, key: str) -> Deferred[ObjectInfo]:
        d, at = self._asked(("head", key), lambda: self.store.head(key))
        return self._learn(d, key, self._found, at)

    def list(
        self, prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ) -> Deferred[ListPage]:
        d, at = self._asked(
            ("list", prefix, delimiter, marker, max_keys),
            lambda: self.store.list(prefix, delimiter, marker, max_keys),
        )
        if delimiter == "/" and (not prefix or prefix.endswith("/")):

            def listed(page: ListPage) -> ListPage:
                self.known.listed(prefix, marker, page, at)
                return page

            d.addCallback(listed)
        return d

    def open(
        self, key: str, offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IByteSource]:
        at = self.known.stamp()
        return self._learn(
            self.store.open(key, offset, end),
            key,
            lambda source: self._found(source.info),
            at,
        )

    def list_parts(self, key: str, upload_id: str) -> Deferred[builtins.list[PartInfo]]:
        return self.store.list_parts(key, upload_id)

    def list_multipart(
        self, prefix: str = ""
    ) -> Deferred[builtins.list[PendingUpload]]:
        return self.store.list_multipart(prefix)

    # -- changing -------------------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes | memoryview,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        d = self.store.put(key, data, metadata)
        if key.endswith("/"):
            # A directory's marker: the directory is there.
            folder = key[:-1]
            directory = Sighting(Entry(split_key(folder)[1], True, 0, 0.0), exact=True)
            return self._learn(d, folder, lambda _: directory, None)
        return self._learn(d, key, _file, None)

    def delete(self, key: str) -> Deferred[None]:
        d = self.store.delete(key)
        if key.endswith("/"):
            # A marker gone: the directory may live on in what it holds.
            return d.addBoth(self._forgetting(key[:-1]))
        return self._learn(d, key, lambda _: Sighting(None, exact=True), None)

    def _forgetting(self, key: str) -> Any:
        def forget(result: Any) -> Any:
            self.known.forget(key)
            return result

        return forget

    def copy(
        self,
        source: str,
        destination: str,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        def made(info: ObjectInfo) -> Sighting:
            if metadata is None:
                # The source's metadata came along, unseen: a file of that size.
                sighting = _file(info, {})
                return Sighting(sighting.entry, exact=False)
            return _file(info, metadata)

        return self._learn(
            self.store.copy(source, destination, metadata), destination, made, None
        )

    def create_multipart(
        self, key: str, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[str]:
        return self.store.create_multipart(key, metadata)

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> Deferred[PartInfo]:
        return self.store.upload_part(key, upload_id, number, data)

    def upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> Deferred[PartInfo]:
        return self.store.upload_part_copy(key, upload_id, number, source, first, last)

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> Deferred[ObjectInfo]:
        return self._learn(
            self.store.complete_multipart(key, upload_id, parts), key, _file, None
        )

    def abort_multipart(self, key: str, upload_id: str) -> Deferred[None]:
        return self.store.abort_multipart(key, upload_id)


def knowledge_of(store: IObjectStore) -> Optional[SessionKnowledge]:
    """The session knowledge a store teaches, if it is a L{KnowingStore}."""
    return store.known if isinstance(store, KnowingStore) else None
