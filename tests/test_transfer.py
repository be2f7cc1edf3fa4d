"""
Unit tests of L{cosgw.transfer} (the upload writer, the download producer,
part sizes) and L{cosgw.storage.checksum}.

The code under test is real; only its edges are fakes written here: an
in-memory L{IObjectStore} whose Deferreds the test fires one by one (or at
once, per method), a push producer standing for the data connection, an
L{IByteSource} and an L{IConsumer}.  No reactor, no threads, no sockets:
everything is synchronous and checked with C{successResultOf},
C{failureResultOf} and C{assertNoResult}.
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
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cosgw import transfer
from cosgw.interfaces import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    IByteSource,
    IntegrityError,
    IObjectStore,
    ObjectInfo,
    PartInfo,
    StoreError,
    StoreUnavailable,
)
from cosgw.storage.checksum import StreamCheck, crc64, crc64_combine, parse_crc64
from cosgw.transfer import (
    Download,
    TransferSettings,
    TransferStopped,
    UploadState,
    UploadTooLarge,
    UploadWriter,
    max_stream_size,
    part_size_for,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
KEY = "dir/upload.bin"


# -- fakes ------------------------------------------------------------------


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

    def open(self, key: str, offset: int = 0) -> Any:
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


# -- the upload writer ------------------------------------------------------


class UploadWriterTestsMixin:
    """Helpers to build a writer over a fake store and feed it."""

    def make_writer(
        self,
        auto: Iterable[str] = (),
        size_hint: Optional[int] = None,
        metadata: Optional[dict[str, str]] = None,
        **settings: Any,
    ) -> UploadWriter:
        self.store = FakeStore(auto)
        self.settings = TransferSettings(**settings)
        self.stops: list[None] = []
        self.producer = FakeProducer()
        self.writer = UploadWriter(
            self.store,
            KEY,
            self.settings,
            size_hint=size_hint,
            metadata=metadata,
            on_stop=lambda: self.stops.append(None),
        )
        self.writer.registerProducer(self.producer, True)
        return self.writer

    def held(self) -> int:
        """The bytes the writer holds: parts at the store, queued, buffered."""
        writer = self.writer
        at_store = sum(len(c.args[3]) for c in self.store.unsettled("upload_part"))
        queued = sum(len(data) for _number, data in writer._pending)
        return at_store + queued + len(writer._buffer)

    def check_memory(self) -> None:
        """Memory stays within (parts in flight + 1) x the part size."""
        bound = (self.settings.parts_in_flight + 1) * self.writer._current_part
        self.assertLessEqual(self.held(), bound)  # type: ignore[attr-defined]
        self.assertLessEqual(  # type: ignore[attr-defined]
            len(self.store.unsettled("upload_part")), self.settings.parts_in_flight
        )

    def feed(self, data: bytes, chunk: int = 64 * 1024) -> int:
        """
        Write C{data} as a data connection does: in chunks, stopping when
        paused.

        @return: How many bytes were written.
        """
        written = 0
        while written < len(data) and not self.producer.paused:
            self.writer.write(data[written : written + chunk])
            written += len(data[written : written + chunk])
            self.check_memory()
        return written

    def sent_parts(self) -> list[tuple[int, bytes]]:
        """(number, data) of every upload_part call, in call order."""
        return [(c.args[2], c.args[3]) for c in self.store.calls_to("upload_part")]


class UploadWriterTests(UploadWriterTestsMixin, SynchronousTestCase):
    def test_provides_consumer(self) -> None:
        """The writer is an IConsumer; the fakes provide their interfaces."""
        self.make_writer()
        self.assertTrue(verifyObject(IConsumer, self.writer))
        self.assertTrue(verifyObject(IObjectStore, self.store))
        self.assertTrue(verifyObject(IPushProducer, self.producer))

    def test_small_stream_one_put(self) -> None:
        """
        A stream smaller than a part is one put() with all its bytes and
        the metadata; finish() fires with the put's result, not before.
        """
        self.make_writer(part_size=MiB, metadata={"mtime": "5"})
        data = random_bytes(MiB - 1)
        self.assertEqual(self.feed(data), len(data))
        self.assertEqual(self.store.calls, [])
        d = self.writer.finish()
        self.assertEqual(self.store.names(), ["put"])
        put = self.store.calls[0]
        self.assertEqual(put.args, (KEY, data, {"mtime": "5"}))
        self.assertNoResult(d)
        self.store.answer(put)
        info = self.successResultOf(d)
        self.assertEqual((info.key, info.size), (KEY, len(data)))
        self.assertIs(self.writer.state, UploadState.DONE)
        self.assertEqual(self.stops, [])

    def test_empty_stream_one_put(self) -> None:
        """A stream of no bytes is one put() of C{b""}."""
        self.make_writer(auto={"put"})
        info = self.successResultOf(self.writer.finish())
        self.assertEqual(self.store.names(), ["put"])
        self.assertEqual(self.store.calls[0].args[:2], (KEY, b""))
        self.assertEqual(info.size, 0)

    def test_multipart_stream(self) -> None:
        """
        A stream longer than a part is cut at part_size_for's sizes, parts
        numbered from 1; the rest goes in a last, shorter part at finish();
        complete gets every part; finish() fires only after complete.
        """
        self.make_writer(
            auto={"create_multipart", "upload_part"},
            metadata={"mtime": "7"},
            part_size=MiB,
            parts_in_flight=4,
        )
        sizes = [part_size_for(n, MiB) for n in (1, 2, 3)]
        data = random_bytes(sum(sizes) + 300_000)
        self.assertEqual(self.feed(data), len(data))
        self.assertEqual(
            self.store.calls_to("create_multipart")[0].args, (KEY, {"mtime": "7"})
        )
        d = self.writer.finish()
        parts = self.sent_parts()
        self.assertEqual([n for n, _ in parts], [1, 2, 3, 4])
        self.assertEqual([len(p) for _, p in parts], sizes + [300_000])
        self.assertEqual(b"".join(p for _, p in parts), data)
        self.assertTrue(all(c.args[1] == "upload1" for c in self.store.calls[1:]))
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual(complete.args[:2], (KEY, "upload1"))
        self.assertEqual([p.number for p in complete.args[2]], [1, 2, 3, 4])
        self.assertEqual([p.size for p in complete.args[2]], sizes + [300_000])
        self.assertNoResult(d)
        self.assertIs(self.writer.state, UploadState.FINISHING)
        self.store.answer(complete)
        info = self.successResultOf(d)
        self.assertEqual(info.size, len(data))
        self.assertIs(self.writer.state, UploadState.DONE)
        self.assertNotIn("put", self.store.names())
        self.assertNotIn("abort_multipart", self.store.names())

    def test_multipart_exact_parts(self) -> None:
        """A stream of exactly whole parts has no empty last part."""
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        sizes = [part_size_for(n, MiB) for n in (1, 2)]
        self.feed(random_bytes(sum(sizes)))
        self.writer.finish()
        self.assertEqual([len(p) for _, p in self.sent_parts()], sizes)

    def test_complete_gets_parts_sorted(self) -> None:
        """
        Parts that finish out of order are still given to
        complete_multipart sorted by number, as IObjectStore asks.
        """
        self.make_writer(auto={"create_multipart"}, part_size=MiB, parts_in_flight=8)
        data = random_bytes(sum(part_size_for(n, MiB) for n in (1, 2, 3)) + 10)
        self.feed(data)
        d = self.writer.finish()
        calls = {c.args[2]: c for c in self.store.calls_to("upload_part")}
        self.assertEqual(sorted(calls), [1, 2, 3, 4])
        for number in (4, 2, 3, 1):
            self.assertEqual(self.store.calls_to("complete_multipart"), [])
            self.store.answer(calls[number])
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual([p.number for p in complete.args[2]], [1, 2, 3, 4])
        self.store.answer(complete)
        self.successResultOf(d)

    def test_size_hint_sets_part_size(self) -> None:
        """With a size hint, parts are large enough for 10,000 to hold it."""
        hint = 100 * GiB
        self.make_writer(auto={"create_multipart", "upload_part"}, size_hint=hint)
        self.assertEqual(self.writer._current_part, part_size_for(1, 8 * MiB, hint))
        self.assertGreaterEqual(self.writer._current_part * MAX_PARTS, hint)

    # backpressure and memory

    def test_backpressure(self) -> None:
        """
        The data connection is paused when the parts in flight reach the
        limit, and resumed when one completes, each completion admitting
        one more part; memory stays within (parts in flight + 1) x part
        size all along (checked after every write and every answer).
        """
        self.make_writer(part_size=MiB, parts_in_flight=4)
        data = random_bytes(20 * MiB + 12345)
        written = self.feed(data)
        # Nothing can be uploaded before the upload exists.
        self.assertTrue(self.producer.paused)
        self.assertLess(written, len(data))
        self.assertEqual(self.store.names(), ["create_multipart"])
        self.store.answer(self.store.calls[0])
        self.check_memory()
        self.assertTrue(self.producer.paused)
        in_flight = len(self.store.unsettled("upload_part"))
        self.assertGreaterEqual(in_flight, 1)
        rounds = 0
        while written < len(data):
            rounds += 1
            self.assertTrue(self.producer.paused)
            self.assertEqual(self.producer.events[-1], "pause")
            oldest = self.store.unsettled("upload_part")[0]
            self.store.answer(oldest)
            self.check_memory()
            self.assertEqual(self.producer.events[-1], "resume")
            written += self.feed(data[written:])
            if written < len(data):
                self.assertTrue(self.producer.paused)
                # One part done, one more part admitted.
                self.assertEqual(len(self.store.unsettled("upload_part")), in_flight)
        self.assertGreater(rounds, 3)
        d = self.writer.finish()
        while self.store.unsettled("upload_part"):
            self.store.answer(self.store.unsettled("upload_part")[0])
            self.check_memory()
        self.store.answer(self.store.calls_to("complete_multipart")[0])
        self.assertEqual(self.successResultOf(d).size, len(data))
        self.assertEqual(b"".join(p for _, p in self.sent_parts()), data)
        self.assertEqual(
            self.producer.events.count("pause"), self.producer.events.count("resume")
        )

    def test_default_settings_keep_parts_in_flight(self) -> None:
        """
        With the default settings (8 MiB parts, 4 in flight) an upload has
        4 parts in flight before the data connection is paused, not only
        during its first part.
        """
        self.make_writer(auto={"create_multipart"})
        self.feed(random_bytes(64 * MiB))
        self.assertTrue(self.producer.paused)
        self.assertEqual(
            len(self.store.unsettled("upload_part")),
            self.settings.parts_in_flight,
        )

    def test_register_producer_while_paused(self) -> None:
        """A producer registered while the writer is full is paused at once."""
        self.make_writer(part_size=MiB, parts_in_flight=1)
        self.feed(random_bytes(2 * MiB))
        self.assertTrue(self.producer.paused)
        self.writer.unregisterProducer()
        other = FakeProducer()
        self.writer.registerProducer(other, True)
        self.assertEqual(other.events, ["pause"])

    # failures

    def test_part_failure(self) -> None:
        """
        A part that fails fails the upload with its error: on_stop is
        called, finish() fails with that error, later writes are ignored,
        and the multipart upload is aborted only once the other parts in
        flight have settled; nothing is completed.
        """
        self.make_writer(auto={"create_multipart"}, part_size=MiB, parts_in_flight=8)
        self.feed(random_bytes(sum(part_size_for(n, MiB) for n in (1, 2, 3)) + 10))
        parts = self.store.unsettled("upload_part")
        self.assertEqual(len(parts), 3)
        error = StoreUnavailable("PART 2: COS 503 SlowDown", "request-2")
        self.store.fail(parts[1], error)
        self.assertEqual(self.stops, [None])
        self.assertIs(self.writer.state, UploadState.FAILED)
        finished = self.writer.finish()
        # The failure is reported once the store is clean, not before.
        self.assertNoResult(finished)
        received = self.writer.received
        self.writer.write(b"more" * 1000)
        self.assertEqual(self.writer.received, received)
        self.assertEqual(len(self.store.calls_to("upload_part")), 3)
        cleaned = self.writer.abort()
        self.assertNoResult(cleaned)
        self.store.answer(parts[0])
        self.assertNotIn("abort_multipart", self.store.names())
        self.store.answer(parts[2])
        [abort] = self.store.calls_to("abort_multipart")
        self.assertEqual(abort.args, (KEY, "upload1"))
        self.assertNoResult(cleaned)
        self.assertNoResult(finished)
        self.store.answer(abort)
        self.assertIsNone(self.successResultOf(cleaned))
        failure = self.failureResultOf(finished, StoreUnavailable)
        self.assertIs(failure.value, error)
        self.assertNotIn("complete_multipart", self.store.names())
        self.assertEqual(self.stops, [None])

    def test_part_failure_while_finishing(self) -> None:
        """A part failing after finish() fails finish()'s Deferred."""
        self.make_writer(auto={"create_multipart"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        d = self.writer.finish()
        parts = self.store.unsettled("upload_part")
        self.assertEqual(len(parts), 2)
        self.store.fail(parts[1], StoreError("PART 2: COS 400 BadDigest"))
        self.assertNoResult(d)
        self.assertNotIn("abort_multipart", self.store.names())
        self.store.answer(parts[0])
        [abort] = self.store.calls_to("abort_multipart")
        self.assertNotIn("complete_multipart", self.store.names())
        self.assertNoResult(d)
        self.store.answer(abort)
        self.failureResultOf(d, StoreError)

    def test_create_failure(self) -> None:
        """
        If the multipart upload cannot be created the upload fails with that
        error; nothing is uploaded and there is nothing to abort.
        """
        self.make_writer(part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        [create] = self.store.calls
        self.store.fail(create, StoreUnavailable("INITIATE: COS 500", "request-1"))
        self.assertEqual(self.stops, [None])
        self.failureResultOf(self.writer.finish(), StoreUnavailable)
        self.assertIsNone(self.successResultOf(self.writer.abort()))
        self.assertEqual(self.store.names(), ["create_multipart"])

    def test_complete_failure_aborts(self) -> None:
        """A failed completion fails the upload and aborts it."""
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(2 * MiB))
        d = self.writer.finish()
        [complete] = self.store.calls_to("complete_multipart")
        self.store.fail(complete, StoreError("COMPLETE: COS 400 InvalidPart"))
        [abort] = self.store.calls_to("abort_multipart")
        self.assertEqual(abort.args, (KEY, "upload1"))
        self.assertIs(self.writer.state, UploadState.FAILED)
        self.assertNoResult(d)
        self.store.answer(abort)
        self.failureResultOf(d, StoreError)

    def test_put_failure(self) -> None:
        """A failed put fails the upload; there is nothing to abort."""
        self.make_writer()
        self.writer.write(b"small")
        d = self.writer.finish()
        self.store.fail(self.store.calls[0], StoreUnavailable("PUT: COS 503"))
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(self.store.names(), ["put"])

    def test_cleanup_failure_is_logged(self) -> None:
        """
        A failed abort_multipart is logged, not raised: abort() still fires
        with None.
        """
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        cleaned = self.writer.abort()
        [abort] = self.store.calls_to("abort_multipart")
        self.store.fail(abort, StoreUnavailable("ABORT: COS 503"))
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertEqual(len(self.flushLoggedErrors(StoreUnavailable)), 1)

    # limits

    def test_too_large_small(self) -> None:
        """Going over max_file_size fails the upload with UploadTooLarge."""
        self.make_writer(max_file_size=1000)
        self.writer.write(b"x" * 600)
        self.writer.write(b"x" * 600)
        self.assertEqual(self.stops, [None])
        self.failureResultOf(self.writer.finish(), UploadTooLarge)
        self.assertEqual(self.store.calls, [])

    def test_exactly_max_file_size(self) -> None:
        """A stream of exactly max_file_size bytes is stored."""
        self.make_writer(auto={"put"}, max_file_size=1000)
        self.writer.write(b"x" * 1000)
        self.assertEqual(self.successResultOf(self.writer.finish()).size, 1000)

    def test_too_large_multipart(self) -> None:
        """
        Going over max_file_size in a multipart upload fails it and aborts
        it once its parts settle.
        """
        self.make_writer(
            auto={"create_multipart"}, part_size=MiB, max_file_size=3 * MiB
        )
        data = random_bytes(4 * MiB)
        written = 0
        while written < len(data) and self.writer.state is UploadState.OPEN:
            self.writer.write(data[written : written + 64 * 1024])
            written += 64 * 1024
        self.assertEqual(self.stops, [None])
        finished = self.writer.finish()
        self.assertNotIn("abort_multipart", self.store.names())
        for part in self.store.unsettled("upload_part"):
            self.store.answer(part)
        [abort] = self.store.calls_to("abort_multipart")
        self.assertNotIn("complete_multipart", self.store.names())
        self.store.answer(abort)
        self.failureResultOf(finished, UploadTooLarge)

    def test_no_part_over_max_parts(self) -> None:
        """
        A stream that would need more than 10,000 parts fails with
        UploadTooLarge instead of sending part 10,001 (part sizes are made
        tiny here so the test stays small).
        """
        self.patch(transfer, "part_size_for", lambda number, base, hint=None: 16)
        self.make_writer(auto={"create_multipart", "upload_part"})
        for _ in range(MAX_PARTS + 1):
            self.writer.write(b"p" * 16)
        d = self.writer.finish()
        numbers = [c.args[2] for c in self.store.calls_to("upload_part")]
        self.assertLessEqual(max(numbers), MAX_PARTS)
        [abort] = self.store.calls_to("abort_multipart")
        self.store.answer(abort)
        self.failureResultOf(d, UploadTooLarge)

    # abort

    def test_abort_before_any_part(self) -> None:
        """Aborting a writer that stored nothing touches nothing."""
        self.make_writer()
        self.writer.write(b"a few bytes")
        self.assertIsNone(self.successResultOf(self.writer.abort()))
        self.assertEqual(self.store.calls, [])
        self.assertIs(self.writer.state, UploadState.ABORTED)
        self.assertEqual(self.stops, [])

    def test_abort_with_parts_in_flight(self) -> None:
        """
        abort() while parts are in flight: writes after it are ignored,
        abort_multipart comes only after the parts settle, nothing is
        completed, and abort()'s Deferred fires once the store is clean.
        """
        self.make_writer(auto={"create_multipart"}, part_size=MiB, parts_in_flight=8)
        self.feed(random_bytes(2 * MiB + 10))
        parts = self.store.unsettled("upload_part")
        self.assertEqual(len(parts), 2)
        cleaned = self.writer.abort()
        self.assertIs(self.writer.state, UploadState.ABORTED)
        self.assertNoResult(cleaned)
        received = self.writer.received
        self.writer.write(b"y" * (4 * MiB))
        self.assertEqual(self.writer.received, received)
        self.assertEqual(len(self.store.calls_to("upload_part")), 2)
        self.store.answer(parts[1])
        self.assertNotIn("abort_multipart", self.store.names())
        self.store.fail(parts[0], StoreUnavailable("PART 1: connection lost"))
        [abort] = self.store.calls_to("abort_multipart")
        self.assertEqual(abort.args, (KEY, "upload1"))
        self.assertNoResult(cleaned)
        self.store.answer(abort)
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertNotIn("complete_multipart", self.store.names())
        self.assertEqual(self.writer._buffer, b"")
        self.assertEqual(len(self.writer._pending), 0)

    def test_abort_while_creating(self) -> None:
        """
        abort() while the multipart upload is being created aborts it when
        it exists; no part is sent.
        """
        self.make_writer(part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        [create] = self.store.calls
        cleaned = self.writer.abort()
        self.assertNoResult(cleaned)
        self.store.answer(create)
        self.assertEqual(self.store.names(), ["create_multipart", "abort_multipart"])
        self.store.answer(self.store.calls[1])
        self.successResultOf(cleaned)

    def test_abort_with_reason(self) -> None:
        """
        The reason given to abort() is what finish() reports, whether it was
        called before the abort or after.
        """
        self.make_writer(part_size=MiB)
        self.writer.write(b"some bytes")
        reason = TransferStopped("connection reset")
        self.writer.abort(Failure(reason))
        failure = self.failureResultOf(self.writer.finish())
        self.assertIs(failure.value, reason)
        self.make_writer(auto={"create_multipart"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        results: list[Any] = []
        self.writer.finish().addBoth(results.append)  # waits for part 1
        self.writer.abort(Failure(reason))
        for part in self.store.unsettled("upload_part"):
            self.store.answer(part)
        self.store.answer(self.store.calls_to("abort_multipart")[0])
        [failure] = results
        self.assertIs(failure.value, reason)

    def test_abort_twice(self) -> None:
        """A second abort() waits for the same cleanup."""
        self.make_writer(auto={"create_multipart"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        first = self.writer.abort()
        second = self.writer.abort()
        self.store.answer(self.store.unsettled("upload_part")[0])
        self.assertEqual(len(self.store.calls_to("abort_multipart")), 1)
        self.store.answer(self.store.calls_to("abort_multipart")[0])
        self.successResultOf(first)
        self.successResultOf(second)

    def test_finish_after_abort_fails(self) -> None:
        """
        finish() after abort() fails (with the abort's reason): an aborted
        upload must never look stored.
        """
        self.make_writer(auto={"put"})
        self.writer.write(b"data")
        self.writer.abort()
        self.failureResultOf(self.writer.finish(), TransferStopped)
        self.assertEqual(self.store.calls, [])

    def test_finish_result_kept_after_abort(self) -> None:
        """
        The Deferred finish() returned before an abort() (parts still in
        flight) still fails when its holder looks at it after the abort.
        """
        self.make_writer(auto={"create_multipart"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        d = self.writer.finish()
        self.writer.abort()
        self.assertNoResult(d)  # part 1 is still in flight
        for part in self.store.unsettled("upload_part"):
            self.store.answer(part)
        self.store.answer(self.store.calls_to("abort_multipart")[0])
        self.failureResultOf(d, TransferStopped)

    def test_abort_while_completing_settles(self) -> None:
        """
        abort() while complete_multipart is in flight: abort()'s Deferred
        fires once the completion has settled, and a successful completion
        stands (every byte arrived before a clean end of stream), so finish()
        reports it and nothing is aborted or deleted.
        """
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        results: list[Any] = []
        self.writer.finish().addBoth(results.append)
        [complete] = self.store.calls_to("complete_multipart")
        cleaned = self.writer.abort()
        self.assertEqual(results, [])
        self.assertNoResult(cleaned)
        self.store.answer(complete)
        self.successResultOf(cleaned)
        self.assertIsInstance(results[0], ObjectInfo)
        self.assertIs(self.writer.state, UploadState.DONE)
        self.assertEqual(self.store.calls_to("abort_multipart"), [])
        self.assertEqual(self.store.calls_to("delete"), [])

    def test_abort_while_completion_fails(self) -> None:
        """
        abort() while complete_multipart is in flight, and the completion
        fails: the upload is aborted and abort() fires.
        """
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        finished = self.writer.finish()
        [complete] = self.store.calls_to("complete_multipart")
        cleaned = self.writer.abort()
        self.store.fail(complete, StoreUnavailable("COMPLETE: connection lost"))
        [abort] = self.store.calls_to("abort_multipart")
        self.store.answer(abort)
        self.successResultOf(cleaned)
        self.failureResultOf(finished, StoreUnavailable)

    def test_abort_while_putting_waits_for_the_put(self) -> None:
        """
        abort() while the single PUT of a small file is in flight: the
        store is not settled until the put has; a PUT that fails leaves
        nothing and finish() reports the failure.
        """
        self.make_writer()
        self.writer.write(b"small file")
        results: list[Any] = []
        self.writer.finish().addBoth(results.append)
        [put] = self.store.calls
        cleaned = self.writer.abort()
        self.assertEqual(results, [])
        self.assertNoResult(cleaned)
        self.store.fail(put, StoreUnavailable("PUT: connection lost"))
        self.successResultOf(cleaned)
        self.assertIsInstance(results[0].value, StoreUnavailable)
        self.assertIs(self.writer.state, UploadState.FAILED)
        self.assertEqual(self.store.names(), ["put"])


class ResumeAndAppendTests(SynchronousTestCase):
    """
    The writer continuing an interrupted upload, starting from a copied
    prefix, and keeping what is stored when the client goes away.
    """

    def setUp(self) -> None:
        self.store = FakeStore(
            {
                "create_multipart",
                "upload_part",
                "upload_part_copy",
                "complete_multipart",
            }
        )
        self.settings = TransferSettings(part_size=MiB, parts_in_flight=2)

    def writer(self, **kwargs: Any) -> UploadWriter:
        writer = UploadWriter(self.store, KEY, self.settings, **kwargs)
        writer.registerProducer(FakeProducer(), True)
        return writer

    def test_resume_continues_the_same_upload(self) -> None:
        kept = [PartInfo(1, "e1", MiB), PartInfo(2, "e2", MiB)]
        registry = transfer.UploadRegistry()
        writer = self.writer(resume=("old-upload", kept), registry=registry)
        self.assertIn("old-upload", registry)
        writer.write(b"z" * (MiB + 5))
        info = self.successResultOf(writer.finish())
        self.assertNotIn("create_multipart", self.store.names())
        numbers = [c.args[2] for c in self.store.calls_to("upload_part")]
        self.assertEqual(numbers, [3, 4])
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual(complete.args[1], "old-upload")
        self.assertEqual([p.number for p in complete.args[2]], [1, 2, 3, 4])
        self.assertEqual(info.size, 3 * MiB + 5)
        self.assertEqual(writer.size, 3 * MiB + 5)
        self.assertNotIn("old-upload", registry)

    def test_copy_prefix_then_new_bytes(self) -> None:
        writer = self.writer(copy_prefix=("old/object", 3 * MiB + 1))
        writer.write(b"n" * 10)
        self.successResultOf(writer.finish())
        [copy] = self.store.calls_to("upload_part_copy")
        self.assertEqual(copy.args[2:], (1, "old/object", 0, 3 * MiB))
        [part] = self.store.calls_to("upload_part")
        self.assertEqual((part.args[2], part.args[3]), (2, b"n" * 10))
        [complete] = self.store.calls_to("complete_multipart")
        self.assertEqual([p.number for p in complete.args[2]], [1, 2])
        self.assertEqual(writer.size, 3 * MiB + 11)

    def test_copy_ranges_respect_part_limits(self) -> None:
        self.assertEqual(transfer.copy_ranges(MiB), [(0, MiB - 1)])
        ranges = transfer.copy_ranges(MAX_PART_SIZE + 100)
        self.assertEqual(ranges[-1][1], MAX_PART_SIZE + 99)
        sizes = [last - first + 1 for first, last in ranges]
        self.assertTrue(all(MIN_PART_SIZE <= s <= MAX_PART_SIZE for s in sizes), sizes)
        self.assertEqual(sum(sizes), MAX_PART_SIZE + 100)
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            self.assertEqual(first, last + 1)

    def test_initial_bytes_and_small_file_single_put(self) -> None:
        self.store.auto.add("put")
        writer = self.writer(initial=b"head-")
        writer.write(b"tail")
        info = self.successResultOf(writer.finish())
        [put] = self.store.calls_to("put")
        self.assertEqual(put.args[1], b"head-tail")
        self.assertEqual(info.size, 9)

    def test_suspend_keeps_contiguous_parts(self) -> None:
        self.store.auto.discard("upload_part")
        writer = self.writer()
        writer.write(b"a" * (2 * MiB + 7))
        first, second = self.store.unsettled("upload_part")
        kept = writer.suspend()
        self.assertNoResult(kept)
        self.store.answer(first)
        self.store.answer(second)
        self.assertEqual(self.successResultOf(kept), 2 * MiB)
        self.assertNotIn("abort_multipart", self.store.names())
        self.assertNotIn("complete_multipart", self.store.names())
        self.failureResultOf(writer.finish(), TransferStopped)

    def test_suspend_with_a_gap_keeps_only_the_prefix(self) -> None:
        self.store.auto.discard("upload_part")
        writer = self.writer()
        writer.write(b"a" * (2 * MiB + 7))
        first, second = self.store.unsettled("upload_part")
        kept = writer.suspend()
        self.store.fail(first, StoreUnavailable("lost"))
        self.store.answer(second)
        # Part 2 is stored but part 1 is not: nothing can be resumed, so the
        # upload is aborted before suspend() reports.
        [abort] = self.store.calls_to("abort_multipart")
        self.assertEqual(abort.args, (KEY, "upload1"))
        self.assertNoResult(kept)
        self.store.answer(abort)
        self.assertEqual(self.successResultOf(kept), 0)

    def test_suspend_before_any_part_leaves_nothing(self) -> None:
        writer = self.writer()
        writer.write(b"small")
        self.assertEqual(self.successResultOf(writer.suspend()), 0)
        self.assertEqual(self.store.calls, [])


# -- part sizes -------------------------------------------------------------


class PartSizeTests(SynchronousTestCase):
    BASES = (1, MIN_PART_SIZE, 8 * MiB, 64 * MiB, MAX_PART_SIZE, 6 * GiB)
    HINTS = (None, 10 * GiB, 10 * TiB, 48 * TiB, MAX_PARTS * MAX_PART_SIZE)

    def test_bounds_and_growth(self) -> None:
        """
        For any base and hint, sizes never go below 1 MiB nor above 5 GiB,
        and never shrink from one part to the next.
        """
        for base in self.BASES:
            for hint in self.HINTS:
                sizes = [part_size_for(n, base, hint) for n in range(1, MAX_PARTS + 2)]
                self.assertGreaterEqual(min(sizes), MIN_PART_SIZE, (base, hint))
                self.assertLessEqual(max(sizes), MAX_PART_SIZE, (base, hint))
                self.assertTrue(
                    all(a <= b for a, b in zip(sizes, sizes[1:])), (base, hint)
                )

    def test_first_part_is_base(self) -> None:
        """Without a hint the first part has the configured size."""
        self.assertEqual(part_size_for(1, 8 * MiB), 8 * MiB)
        self.assertEqual(part_size_for(1, MiB), MiB)
        self.assertEqual(part_size_for(1, 100), MIN_PART_SIZE)
        self.assertEqual(part_size_for(1, 6 * GiB), MAX_PART_SIZE)

    def test_reaches_max_part_size(self) -> None:
        """Parts reach 5 GiB by part 1000 and stay there."""
        for base in (MIN_PART_SIZE, 8 * MiB):
            self.assertEqual(part_size_for(1000, base), MAX_PART_SIZE)
            self.assertEqual(part_size_for(MAX_PARTS, base), MAX_PART_SIZE)

    def test_size_hint_fits(self) -> None:
        """A size hint makes a file of that size fit in 10,000 parts."""
        for hint in (48 * TiB, MAX_PARTS * MAX_PART_SIZE, 123 * GiB + 7):
            total = sum(
                part_size_for(n, 8 * MiB, hint) for n in range(1, MAX_PARTS + 1)
            )
            self.assertGreaterEqual(total, hint)
        # Parts of a 48 TiB file are each large enough on their own.
        self.assertGreaterEqual(
            part_size_for(1, 8 * MiB, 48 * TiB) * MAX_PARTS, 48 * TiB
        )

    def test_small_hint_changes_nothing(self) -> None:
        """A hint that fits anyway leaves the sizes as without one."""
        for n in (1, 2, 50, 999, 5000):
            self.assertEqual(part_size_for(n, 8 * MiB, GiB), part_size_for(n, 8 * MiB))

    def test_max_stream_size(self) -> None:
        """A stream of unknown size can reach 44 TiB with 8 MiB parts."""
        self.assertGreaterEqual(max_stream_size(8 * MiB), 44 * TiB)
        self.assertLessEqual(max_stream_size(8 * MiB), MAX_PARTS * MAX_PART_SIZE)
        self.assertGreaterEqual(max_stream_size(MIN_PART_SIZE), 44 * TiB)


# -- downloads --------------------------------------------------------------


class DownloadTests(SynchronousTestCase):
    def make(
        self,
        data: bytes,
        auto: bool = True,
        chunk: int = 1000,
        read_ahead: int = 3,
        pause_on_write: bool = False,
    ) -> Download:
        self.source = FakeSource(data, auto)
        self.consumer = FakeConsumer(pause_on_write)
        self.download = Download(self.source, self.consumer, chunk, read_ahead)
        return self.download

    def test_provides_push_producer(self) -> None:
        self.make(b"")
        self.assertTrue(verifyObject(IPushProducer, self.download))
        self.assertTrue(verifyObject(IByteSource, self.source))

    def test_delivers_everything_in_order(self) -> None:
        """
        Every byte reaches the consumer in order, in chunks of at most the
        chunk size; then the producer is unregistered, the source closed,
        and start() fires with the byte count.
        """
        data = random_bytes(10_500)
        self.make(data)
        d = self.download.start()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)
        self.assertTrue(all(len(c) <= 1000 for c in self.consumer.chunks))
        self.assertEqual(self.consumer.events[0], ("register", True))
        self.assertEqual(self.consumer.events[-1], ("unregister",))
        self.assertEqual(self.consumer.events.count(("unregister",)), 1)
        self.assertEqual(self.source.closed, 1)
        self.assertEqual(self.download.sent, len(data))

    def test_empty(self) -> None:
        """An empty source: no write, unregistered, start() fires with 0."""
        self.make(b"")
        self.assertEqual(self.successResultOf(self.download.start()), 0)
        self.assertEqual(self.consumer.events, [("register", True), ("unregister",)])
        self.assertEqual(self.source.closed, 1)

    def test_fires_after_end_of_source(self) -> None:
        """start() fires only once the source said it was at its end."""
        data = random_bytes(2500)
        self.make(data, auto=False)
        d = self.download.start()
        for _ in range(3):
            self.assertNoResult(d)
            self.source.answer()
        self.assertEqual(self.consumer.received, data)
        self.assertNoResult(d)
        self.assertFalse(self.consumer.unregistered)
        self.source.answer()  # b""
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertTrue(self.consumer.unregistered)

    def test_read_ahead_while_paused(self) -> None:
        """
        While the consumer has paused the download, it reads ahead at most
        C{read_ahead} chunks, then stops reading; on resume it writes them
        and reads on.
        """
        data = random_bytes(10_000)
        self.make(data, auto=False, read_ahead=3)
        d = self.download.start()
        self.download.pauseProducing()
        while self.source.waiting is not None:
            self.source.answer()
            self.assertLessEqual(len(self.download._queue), 3)
        self.assertEqual(self.source.reads, 3)
        self.assertEqual(len(self.download._queue), 3)
        self.assertEqual(self.consumer.chunks, [])
        self.download.resumeProducing()
        self.assertEqual(self.consumer.received, data[:3000])
        self.assertIsNotNone(self.source.waiting)
        self.download.pauseProducing()
        while self.source.waiting is not None:
            self.source.answer()
        self.assertEqual(self.source.reads, 6)
        self.assertEqual(self.consumer.received, data[:3000])
        self.download.resumeProducing()
        while self.source.waiting is not None:
            self.source.answer()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)

    def test_consumer_pausing_in_write(self) -> None:
        """
        A consumer that pauses the download from inside write() gets no
        further write until it resumes it.
        """
        data = random_bytes(5000)
        self.make(data, pause_on_write=True, read_ahead=2)
        d = self.download.start()
        self.assertEqual(len(self.consumer.chunks), 1)
        for n in range(2, 6):
            self.download.resumeProducing()
            self.assertEqual(len(self.consumer.chunks), n)
        self.download.resumeProducing()
        self.assertEqual(self.successResultOf(d), len(data))
        self.assertEqual(self.consumer.received, data)

    def test_stop_producing(self) -> None:
        """
        stopProducing() fails start() with TransferStopped and closes the
        source; a read that lands afterwards is dropped.
        """
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.source.answer()
        self.download.stopProducing()
        self.failureResultOf(d, TransferStopped)
        self.assertEqual(self.source.closed, 1)
        self.source.answer()
        self.assertEqual(self.consumer.received, data[:1000])
        self.assertFalse(self.consumer.unregistered)
        self.download.resumeProducing()
        self.assertIsNone(self.source.waiting)
        self.assertEqual(self.source.reads, 2)

    def test_stop_after_end(self) -> None:
        """stopProducing() after the end changes nothing."""
        self.make(b"abc")
        d = self.download.start()
        self.download.stopProducing()
        self.assertEqual(self.successResultOf(d), 3)

    def test_source_failure(self) -> None:
        """
        A read that fails (a broken or corrupt stream) fails start() with
        its error; the producer stays registered, so the caller has to
        drop the connection; the source is closed.
        """
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.source.answer()
        self.source.answer()
        self.source.fail(IntegrityError("obj: stream ended after 2000 of 5000 bytes"))
        self.failureResultOf(d, IntegrityError)
        self.assertFalse(self.consumer.unregistered)
        self.assertEqual(self.source.closed, 1)
        self.assertEqual(self.consumer.received, data[:2000])

    def test_source_failure_while_paused(self) -> None:
        """A failure while chunks wait for the consumer drops them."""
        data = random_bytes(5000)
        self.make(data, auto=False)
        d = self.download.start()
        self.download.pauseProducing()
        self.source.answer()
        self.source.fail(StoreUnavailable("connection reset"))
        self.failureResultOf(d, StoreUnavailable)
        self.download.resumeProducing()
        self.assertEqual(self.consumer.chunks, [])
        self.assertFalse(self.consumer.unregistered)


# -- checksums --------------------------------------------------------------


class ChecksumTests(SynchronousTestCase):
    def test_check_value(self) -> None:
        """crc64 is CRC-64/XZ (ECMA-182, reflected): its check value."""
        self.assertEqual(crc64(b"123456789"), 0x995DC9BBDF1939FA)
        self.assertEqual(crc64(b""), 0)

    def test_chaining(self) -> None:
        data = random_bytes(10_000)
        self.assertEqual(crc64(data[3000:], crc64(data[:3000])), crc64(data))

    def test_combine(self) -> None:
        """crc64_combine gives the CRC of a concatenation from its pieces'."""
        for len_a, len_b in (
            (0, 0),
            (0, 17),
            (17, 0),
            (1, 1),
            (9, 8),
            (1000, 3),
            (3, 1000),
            (4096, 65_537),
            (MiB, MiB + 5),
        ):
            a, b = random_bytes(len_a), random_bytes(len_b)
            self.assertEqual(
                crc64_combine(crc64(a), crc64(b), len(b)), crc64(a + b), (len_a, len_b)
            )

    def test_combine_many(self) -> None:
        """Combining the CRCs of many parts gives the whole's CRC."""
        parts = [random_bytes(n) for n in (1000, 0, 2048, 1, 5000)]
        total = 0
        for part in parts:
            total = crc64_combine(total, crc64(part), len(part))
        self.assertEqual(total, crc64(b"".join(parts)))

    def test_parse(self) -> None:
        self.assertEqual(parse_crc64("11562812366232624542"), 11562812366232624542)
        for value in (None, "", "not a number"):
            self.assertIsNone(parse_crc64(value))

    def test_stream_check_good(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), crc64(data))
        for i in range(0, len(data), 1000):
            check.update(data[i : i + 1000])
        check.finish()
        self.assertEqual(check.count, len(data))

    def test_stream_check_without_crc(self) -> None:
        """Without an expected CRC only the length is checked."""
        check = StreamCheck("k", 3, None)
        check.update(b"abc")
        check.finish()

    def test_stream_check_short(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), crc64(data))
        check.update(data[:2999])
        self.assertRaises(IntegrityError, check.finish)

    def test_stream_check_long(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), None)
        check.update(data)
        self.assertRaises(IntegrityError, check.update, b"x")

    def test_stream_check_bad_crc(self) -> None:
        data = bytearray(random_bytes(3000))
        crc = crc64(bytes(data))
        data[1500] ^= 1
        check = StreamCheck("k", len(data), crc)
        check.update(bytes(data))
        error = self.assertRaises(IntegrityError, check.finish)
        self.assertIn("k", str(error))

    def test_stream_check_empty(self) -> None:
        check = StreamCheck("k", 0, crc64(b""))
        check.finish()
