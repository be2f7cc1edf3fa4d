"""
Running blocking store work off the reactor thread, with a bounded queue.

Both stores do blocking work (SDK calls, file I/O).  Rule 2 of the house:
the reactor thread never blocks, and queues stay bounded.  Twisted's thread
pool queue is unbounded, so every call goes through a DeferredSemaphore that
admits at most C{max_pending} calls into the pool at once; the rest wait as
cheap Deferreds on the reactor.
"""

from __future__ import annotations

# The store's method named `list` shadows the builtin inside the class body.
import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from cosgw.interfaces import (
    MAX_PART_SIZE,
    IByteSource,
    ListPage,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
)

T = TypeVar("T")


def check_read_range(key: str, offset: int, end: Optional[int]) -> None:
    """
    Refuse an open() from a negative C{offset}, or of a bounded range that
    holds no byte (C{end} at or before C{offset}).

    @raise StoreError: the range is not one a GET can ask for.
    """
    if offset < 0:
        raise StoreError(f"{key}: negative offset {offset}")
    if end is not None and end <= offset:
        raise StoreError(f"{key}: empty range {offset}-{end}")


def check_copy_range(source: str, first: int, last: int, size: int) -> None:
    """
    Refuse a part copy of bytes C{first..last} (inclusive) of a C{size}-byte
    C{source} unless the range is non-empty, inside the source and no larger
    than a part may be.

    @raise StoreError: the range is not one a part can be copied from.
    """
    if not 0 <= first <= last < size:
        raise StoreError(
            f"bytes {first}-{last} are not inside {source!r} ({size} bytes)"
        )
    if last - first + 1 > MAX_PART_SIZE:
        raise StoreError(f"bytes {first}-{last} of {source!r}: larger than a part")


class BlockingRunner:
    """Runs callables in a given thread pool, at most C{max_pending} at once."""

    def __init__(
        self, reactor: IReactorFromThreads, pool: ThreadPool, max_pending: int
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._gate = DeferredSemaphore(max(1, max_pending))

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        @return: A Deferred firing with C{f(*args, **kwargs)} as computed in a
            pool thread, or failing with what it raised.
        """
        return self._gate.run(
            deferToThreadPool, self._reactor, self._pool, f, *args, **kwargs
        )


class StoreObserver(Protocol):
    """
    Watches every request of a store (the admin listener's metrics): one
    call when a request is asked for and one when its answer is back, both
    on the reactor thread.
    """

    def request_started(self, operation: str) -> None: ...

    def request_finished(
        self, operation: str, seconds: Optional[float], error: Optional[BaseException]
    ) -> None:
        """
        @param seconds: how long the request took in its pool thread (the
            store's own retries included, the wait for a thread not); None
            when it never ran (cancelled while it waited).
        @param error: what it failed with; None when it succeeded.
        """


class ThreadedStore:
    """
    The L{IObjectStore} methods of a store whose work is blocking: each runs
    the store's C{_name} method of the same arguments in the pool, through
    C{self._runner}.  A store subclasses this and writes only the blocking
    bodies.

    @ivar observer: told of every request, by operation (the method's
        name); None: nobody watches.
    """

    _runner: BlockingRunner
    observer: Optional[StoreObserver] = None

    def _request(self, operation: str, f: Callable[..., T], *args: Any) -> Deferred[T]:
        """C{f(*args)} in the pool, timed for the observer, if there is one."""
        observer = self.observer
        if observer is None:
            return self._runner.run(f, *args)
        took: list[float] = []

        def timed() -> T:
            start = time.monotonic()
            try:
                return f(*args)
            finally:
                # Read on the reactor thread once the result is delivered
                # there (callFromThread orders it after this write).
                took.append(time.monotonic() - start)

        def finished(result: Any) -> Any:
            error = result.value if isinstance(result, Failure) else None
            assert observer is not None
            observer.request_finished(operation, took[0] if took else None, error)
            return result

        observer.request_started(operation)
        return self._runner.run(timed).addBoth(finished)

    def head(self, key: str) -> Deferred[ObjectInfo]:
        return self._request("head", self._head, key)

    def list(
        self, prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ) -> Deferred[ListPage]:
        return self._request("list", self._list, prefix, delimiter, marker, max_keys)

    def open(
        self, key: str, offset: int = 0, end: Optional[int] = None
    ) -> Deferred[IByteSource]:
        return self._request("open", self._open, key, offset, end)

    def put(
        self,
        key: str,
        data: bytes | memoryview,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        return self._request("put", self._put, key, data, metadata)

    def delete(self, key: str) -> Deferred[None]:
        return self._request("delete", self._delete, key)

    def copy(
        self,
        source: str,
        destination: str,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Deferred[ObjectInfo]:
        return self._request("copy", self._copy, source, destination, metadata)

    def create_multipart(
        self, key: str, metadata: Optional[Mapping[str, str]] = None
    ) -> Deferred[str]:
        return self._request("create_multipart", self._create_multipart, key, metadata)

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> Deferred[PartInfo]:
        return self._request(
            "upload_part", self._upload_part, key, upload_id, number, data
        )

    def upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> Deferred[PartInfo]:
        return self._request(
            "upload_part_copy",
            self._upload_part_copy,
            key,
            upload_id,
            number,
            source,
            first,
            last,
        )

    def list_parts(self, key: str, upload_id: str) -> Deferred[builtins.list[PartInfo]]:
        return self._request("list_parts", self._list_parts, key, upload_id)

    def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> Deferred[ObjectInfo]:
        return self._request(
            "complete_multipart", self._complete, key, upload_id, list(parts)
        )

    def abort_multipart(self, key: str, upload_id: str) -> Deferred[None]:
        return self._request("abort_multipart", self._abort, key, upload_id)

    def list_multipart(
        self, prefix: str = ""
    ) -> Deferred[builtins.list[PendingUpload]]:
        return self._request("list_multipart", self._list_multipart, prefix)

    # The blocking bodies, run in a pool thread.

    def _head(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def _list(
        self, prefix: str, delimiter: str, marker: str, max_keys: int
    ) -> ListPage:
        raise NotImplementedError

    def _open(self, key: str, offset: int, end: Optional[int]) -> IByteSource:
        raise NotImplementedError

    def _put(
        self, key: str, data: bytes | memoryview, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _copy(
        self, source: str, destination: str, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        raise NotImplementedError

    def _create_multipart(self, key: str, metadata: Optional[Mapping[str, str]]) -> str:
        raise NotImplementedError

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
    ) -> PartInfo:
        raise NotImplementedError

    def _upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> PartInfo:
        raise NotImplementedError

    def _list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        raise NotImplementedError

    def _complete(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> ObjectInfo:
        raise NotImplementedError

    def _abort(self, key: str, upload_id: str) -> None:
        raise NotImplementedError

    def _list_multipart(self, prefix: str) -> builtins.list[PendingUpload]:
        raise NotImplementedError
