"""
Unit tests of L{cosgw.transfer.upload}: the upload writer's parts,
backpressure, failures and aborts, over the recording fake store of
L{tests.transfertesting}.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cosgw.interfaces import (
    MAX_PARTS,
    IObjectStore,
    ObjectInfo,
    StoreError,
    StoreUnavailable,
)
from cosgw.transfer import (
    TransferSettings,
    TransferStopped,
    UploadState,
    UploadTooLarge,
    UploadWriter,
    part_size_for,
    upload,
)
from tests.logevents import LogEvents
from tests.transfertesting import (
    KEY,
    FakeProducer,
    FakeStore,
    GiB,
    MiB,
    random_bytes,
)


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
        self.producer = FakeProducer()
        self.writer = UploadWriter(
            self.store,
            KEY,
            self.settings,
            size_hint=size_hint,
            metadata=metadata,
        )
        self.writer.registerProducer(self.producer, True)
        return self.writer

    def held(self) -> int:
        """The bytes the writer holds: parts at the store, queued, buffered."""
        writer = self.writer
        at_store = sum(len(c.args[3]) for c in self.store.unsettled("upload_part"))
        queued = sum(
            sum(len(chunk) for chunk in payload)
            for _number, payload, _held in writer._pending
            if isinstance(payload, list)
        )
        return at_store + queued + writer._fill.size

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
        self.assertEqual(self.producer.events.count("stop"), 0)

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
        A part that fails fails the upload with its error: the producer is
        stopped, finish() fails with that error, later writes are ignored,
        and the multipart upload is aborted only once the other parts in
        flight have settled; nothing is completed.
        """
        self.make_writer(auto={"create_multipart"}, part_size=MiB, parts_in_flight=8)
        self.feed(random_bytes(sum(part_size_for(n, MiB) for n in (1, 2, 3)) + 10))
        parts = self.store.unsettled("upload_part")
        self.assertEqual(len(parts), 3)
        error = StoreUnavailable("PART 2: COS 503 SlowDown", "request-2")
        self.store.fail(parts[1], error)
        self.assertEqual(self.producer.events.count("stop"), 1)
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
        self.assertEqual(self.producer.events.count("stop"), 1)

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
        self.assertEqual(self.producer.events.count("stop"), 1)
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
        with None.  A store that is down is one warning line (the sweeper
        retries); anything else keeps its traceback.
        """
        events = LogEvents(self, "cosgw.transfer.upload")
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        cleaned = self.writer.abort()
        [abort] = self.store.calls_to("abort_multipart")
        self.store.fail(abort, StoreUnavailable("ABORT: COS 503"))
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertEqual(self.flushLoggedErrors(StoreUnavailable), [])
        [warning] = events.at(LogLevel.warn)
        self.assertIn("ABORT: COS 503", formatEvent(warning))
        self.assertIn("the sweeper will retry", formatEvent(warning))

    def test_unexpected_cleanup_failure_keeps_its_traceback(self) -> None:
        self.make_writer(auto={"create_multipart", "upload_part"}, part_size=MiB)
        self.feed(random_bytes(MiB + 10))
        cleaned = self.writer.abort()
        [abort] = self.store.calls_to("abort_multipart")
        self.store.fail(abort, StoreError("ABORT: access denied"))
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)

    # limits

    def test_too_large_small(self) -> None:
        """Going over max_file_size fails the upload with UploadTooLarge."""
        self.make_writer(max_file_size=1000)
        self.writer.write(b"x" * 600)
        self.writer.write(b"x" * 600)
        self.assertEqual(self.producer.events.count("stop"), 1)
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
        self.assertEqual(self.producer.events.count("stop"), 1)
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
        self.patch(upload, "part_size_for", lambda number, base, hint=None: 16)
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
        self.assertEqual(self.producer.events.count("stop"), 0)

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
        self.assertEqual(self.writer._fill.size, 0)
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
