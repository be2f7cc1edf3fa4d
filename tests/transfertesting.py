"""
Test doubles for the transfer code: an in-memory L{IObjectStore} whose
Deferreds the test fires one by one (or at once, per method), a push
producer standing for the data connection, an L{IByteSource} and an
L{IConsumer}.  No reactor, no threads, no sockets: tests over them are
synchronous and check results with C{successResultOf}, C{failureResultOf}
and C{assertNoResult}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import (
    IByteSource,
    IObjectStore,
    ObjectInfo,
    PartInfo,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
KEY = "dir/upload.bin"


@dataclass
class Call:
    """One call to the fake store, and the Deferred it returned."""

    name: str
    args: tuple[Any, ...]
    deferred: Deferred[Any]

    @property
    def settled(self) -> bool:
        return self.deferred.called


@implementer(IObjectStore)
class FakeStore:
    """
    An object store that records every call and answers when told.

    Methods named in C{auto} answer at once with a plausible result; the
    others return a Deferred that waits for L{answer} or L{fail}.  The
    methods a writer has no business calling fail the test.
    """

    description = "fake store"

    def __init__(self, auto: Iterable[str] = ()) -> None:
        self.auto = set(auto)
        self.calls: list[Call] = []
        self._ids = count(1)

    # recording and answering

    def _call(self, name: str, *args: Any) -> Deferred[Any]:
        call = Call(name, args, Deferred())
        self.calls.append(call)
        if name in self.auto:
            self.answer(call)
        return call.deferred

    def result_for(self, call: Call) -> Any:
        if call.name == "create_multipart":
            return f"upload{next(self._ids)}"
        if call.name == "upload_part":
            _key, _upload_id, number, data = call.args
            return PartInfo(number=number, etag=f"etag-{number}", size=len(data))
        if call.name == "upload_part_copy":
            _key, _upload_id, number, _source, first, last = call.args
            return PartInfo(number=number, etag=f"copy-{number}", size=last - first + 1)
        if call.name == "complete_multipart":
            key, _upload_id, parts = call.args
            return ObjectInfo(key=key, size=sum(p.size for p in parts), mtime=1.0)
        if call.name == "put":
            key, data, _metadata = call.args
            return ObjectInfo(key=key, size=len(data), mtime=1.0, etag="put-etag")
        return None

    def answer(self, call: Call, result: Any = None) -> None:
        call.deferred.callback(self.result_for(call) if result is None else result)

    def fail(self, call: Call, error: Exception) -> None:
        call.deferred.errback(Failure(error))

    def calls_to(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def unsettled(self, name: str) -> list[Call]:
        return [c for c in self.calls_to(name) if not c.settled]

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    # what a writer uses

    def put(
        self, key: str, data: bytes, metadata: Optional[dict[str, str]] = None
    ) -> Deferred[ObjectInfo]:
        return self._call("put", key, data, metadata)

    def delete(self, key: str) -> Deferred[None]:
        return self._call("delete", key)

    def create_multipart(
        self, key: str, metadata: Optional[dict[str, str]] = None
    ) -> Deferred[str]:
        return self._call("create_multipart", key, metadata)

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> Deferred[PartInfo]:
        return self._call("upload_part", key, upload_id, number, data)

    def complete_multipart(
        self, key: str, upload_id: str, parts: list[PartInfo]
    ) -> Deferred[ObjectInfo]:
        # A copy: what was passed at the time of the call.
        return self._call("complete_multipart", key, upload_id, list(parts))

    def abort_multipart(self, key: str, upload_id: str) -> Deferred[None]:
        return self._call("abort_multipart", key, upload_id)

    def upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> Deferred[PartInfo]:
        return self._call(
            "upload_part_copy", key, upload_id, number, source, first, last
        )

    # what it must not use

    def list_parts(self, key: str, upload_id: str) -> Any:
        raise AssertionError("the writer called list_parts()")

    def head(self, key: str) -> Deferred[ObjectInfo]:
        raise AssertionError("the writer called head()")

    def list(
        self, prefix: str, delimiter: str = "/", marker: str = "", max_keys: int = 1000
    ) -> Any:
        raise AssertionError("the writer called list()")

    def open(self, key: str, offset: int = 0, end: Optional[int] = None) -> Any:
        raise AssertionError("the writer called open()")

    def copy(self, source: str, destination: str, metadata: Any = None) -> Any:
        raise AssertionError("the writer called copy()")

    def list_multipart(self, prefix: str = "") -> Any:
        raise AssertionError("the writer called list_multipart()")


@implementer(IPushProducer)
class FakeProducer:
    """A data connection: records what the writer asks of it."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.paused = False

    def pauseProducing(self) -> None:
        self.events.append("pause")
        self.paused = True

    def resumeProducing(self) -> None:
        self.events.append("resume")
        self.paused = False

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(IByteSource)
class FakeSource:
    """
    An object's bytes; each read waits for L{answer} (or answers at once
    when C{auto}).  Fails the test if two reads are outstanding.
    """

    def __init__(self, data: bytes, auto: bool = True) -> None:
        self.data = data
        self.info = ObjectInfo(key="obj", size=len(data), mtime=1.0)
        self.offset = 0
        self.length = len(data)
        self.auto = auto
        self.position = 0
        self.reads = 0
        self.closed = 0
        self.waiting: Optional[tuple[Deferred[bytes], int]] = None

    def read(self, size: int) -> Deferred[bytes]:
        assert self.waiting is None, "two reads outstanding"
        self.reads += 1
        d: Deferred[bytes] = Deferred()
        self.waiting = (d, size)
        if self.auto:
            self.answer()
        return d

    def answer(self) -> None:
        assert self.waiting is not None, "no read outstanding"
        (d, size), self.waiting = self.waiting, None
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        d.callback(chunk)

    def fail(self, error: Exception) -> None:
        assert self.waiting is not None, "no read outstanding"
        (d, _), self.waiting = self.waiting, None
        d.errback(Failure(error))

    def close(self) -> Deferred[None]:
        self.closed += 1
        return succeed(None)


@implementer(IConsumer)
class FakeConsumer:
    """A data connection seen from a download: records everything."""

    def __init__(self, pause_on_write: bool = False) -> None:
        self.events: list[Any] = []
        self.chunks: list[bytes] = []
        self.producer: Optional[IPushProducer] = None
        self.pause_on_write = pause_on_write

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.events.append(("register", streaming))
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.events.append(("unregister",))
        self.producer = None

    def write(self, data: bytes) -> None:
        self.events.append(("write", len(data)))
        self.chunks.append(data)
        if self.pause_on_write and self.producer is not None:
            self.producer.pauseProducing()

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def unregistered(self) -> bool:
        return ("unregister",) in self.events


def random_bytes(size: int) -> bytes:
    return os.urandom(size)
