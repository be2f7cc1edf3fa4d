"""
Unit tests of L{cosgw.transfer.writer} and L{cosgw.transfer.spool}:
positional writes into a real L{UploadWriter} (over the recording fake
store of L{tests.transfertesting}), with a real spool file.  Synchronous:
the spool runs its file I/O inline here.
"""

from __future__ import annotations

import random
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import ObjectInfo, PartInfo, StoreUnavailable
from cosgw.testing import MemoryStore
from cosgw.transfer import (
    PositionalWriter,
    QuotaReached,
    RewriteRefused,
    Spool,
    SpoolFull,
    TransferSettings,
    UploadBuffers,
    UploadWriter,
)
from cosgw.transfer.spool import SpoolBudget
from tests.transfertesting import FakeStore

MiB = 1024 * 1024
KiB = 1024


def stored(store: FakeStore) -> bytes:
    """The object the fake store ended with."""
    puts = store.calls_to("put")
    if puts:
        return puts[-1].args[1]
    parts = sorted((c.args[2], c.args[3]) for c in store.calls_to("upload_part"))
    return b"".join(data for _, data in parts)


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class PositionalWriterTests(SynchronousTestCase):
    def make(
        self,
        auto: bool = True,
        window: int = 256 * KiB,
        spool_limit: Optional[int] = 64 * MiB,
        append: bool = False,
        pressure: Optional[list[bool]] = None,
    ) -> tuple[FakeStore, UploadWriter, PositionalWriter]:
        names = ["create_multipart", "complete_multipart", "put", "abort_multipart"]
        if auto:
            names.append("upload_part")
        store = FakeStore(auto=names)
        writer = UploadWriter(
            store, "k", TransferSettings(part_size=MiB, parts_in_flight=2)
        )
        spool = Spool(None, self.mktemp(), spool_limit) if spool_limit else None
        positional = PositionalWriter(
            writer,
            window=window,
            spool=spool,
            hold_limit=512 * KiB,
            on_pressure=pressure.append if pressure is not None else None,
            append=append,
        )
        return store, writer, positional

    def finish(self, writer: UploadWriter, positional: PositionalWriter) -> int:
        size = self.successResultOf(positional.finish())
        self.successResultOf(writer.finish())
        return size

    def test_in_order(self) -> None:
        store, writer, positional = self.make()
        data = pattern(3 * MiB + 123)
        for at in range(0, len(data), 32 * KiB):
            self.assertIsNone(positional.write(at, data[at : at + 32 * KiB]))
        self.assertEqual(self.finish(writer, positional), len(data))
        self.assertEqual(stored(store), data)

    def test_shuffled_within_window(self) -> None:
        """Writes shuffled in groups of 8 (a concurrent writer) reorder."""
        store, writer, positional = self.make()
        data = pattern(2 * MiB, seed=2)
        offsets = list(range(0, len(data), 32 * KiB))
        rng = random.Random(3)
        for i in range(0, len(offsets), 8):
            group = offsets[i : i + 8]
            rng.shuffle(group)
            for at in group:
                positional.write(at, data[at : at + 32 * KiB])
        self.finish(writer, positional)
        self.assertEqual(stored(store), data)
        self.assertEqual(positional.spool.used, 0)  # type: ignore[union-attr]

    def test_far_ahead_goes_to_spool(self) -> None:
        """Back-to-front writes overflow the window into the spool."""
        store, writer, positional = self.make(window=64 * KiB)
        data = pattern(MiB + 5000, seed=4)
        offsets = list(range(0, len(data), 32 * KiB))
        for at in reversed(offsets):
            positional.write(at, data[at : at + 32 * KiB])
        self.finish(writer, positional)
        self.assertEqual(stored(store), data)
        self.assertGreater(positional.spool.used, 0)  # type: ignore[union-attr]

    def test_holes_are_zeros(self) -> None:
        store, writer, positional = self.make()
        positional.write(0, b"a" * 10)
        positional.write(100, b"b" * 10)
        self.assertEqual(self.finish(writer, positional), 110)
        self.assertEqual(stored(store), b"a" * 10 + bytes(90) + b"b" * 10)

    def test_later_write_wins(self) -> None:
        """Overlapping writes waiting for a gap: the newer bytes stand."""
        store, writer, positional = self.make()
        positional.write(10, b"x" * 20)
        positional.write(15, b"y" * 5)
        positional.write(0, b"z" * 10)
        self.finish(writer, positional)
        self.assertEqual(stored(store), b"z" * 10 + b"x" * 5 + b"y" * 5 + b"x" * 10)

    def test_rewrite_refused(self) -> None:
        """Bytes already uploaded cannot change: the file fails, loudly."""
        store, writer, positional = self.make()
        positional.write(0, b"a" * 100)
        with self.assertRaises(RewriteRefused) as caught:
            positional.write(50, b"b")
        self.assertIn("offset 50", str(caught.exception))
        self.failureResultOf(positional.finish(), RewriteRefused)
        with self.assertRaises(RewriteRefused):
            positional.write(100, b"c")

    def test_without_spool_too_far_ahead_fails(self) -> None:
        _, _, positional = self.make(window=64 * KiB, spool_limit=None)
        with self.assertRaises(SpoolFull):
            positional.write(MiB, b"x" * 10)

    def test_spool_limit(self) -> None:
        _, _, positional = self.make(window=16 * KiB, spool_limit=100 * KiB)
        positional.write(MiB, b"x" * 64 * KiB)
        with self.assertRaises(SpoolFull):
            positional.write(2 * MiB, b"x" * 64 * KiB)

    def test_tiny_writes_count_their_cost(self) -> None:
        """
        A flood of one-byte writes ahead of the stream holds no more memory
        than the window says (each chunk costs its bookkeeping too): past
        it they go to the spool, and the file still comes out right.
        """
        store, writer, positional = self.make(window=64 * KiB)
        data = pattern(2001, seed=9)
        for i in range(1, len(data)):
            positional.write(i, data[i : i + 1])
        assert positional.spool is not None
        self.assertGreater(positional.spool.used, 0)
        positional.write(0, data[:1])
        self.assertEqual(self.finish(writer, positional), len(data))
        self.assertEqual(stored(store), data)

    def test_blocked_by_the_gateway_budget(self) -> None:
        """
        A spool whose gateway budget is spent refuses the write before
        anything reaches the disk; the file fails, loudly.
        """
        store, writer, positional = self.make(window=16 * KiB)
        assert positional.spool is not None
        positional.spool.budget = SpoolBudget(8 * KiB)
        positional.write(MiB, b"x" * 8 * KiB)
        with self.assertRaises(SpoolFull) as caught:
            positional.write(2 * MiB, b"x")
        self.assertIn("gateway spool is full", str(caught.exception))

    def test_cut_short_by_size(self) -> None:
        store, writer, positional = self.make()
        positional.write(0, b"a" * 10)
        positional.write(20, b"b" * 10)
        self.assertEqual(self.successResultOf(positional.finish(15)), 15)
        self.successResultOf(writer.finish())
        self.assertEqual(stored(store), b"a" * 10 + bytes(5))

    def test_size_below_uploaded_refused(self) -> None:
        _, _, positional = self.make()
        positional.write(0, b"a" * 10)
        self.failureResultOf(positional.finish(5), RewriteRefused)

    def test_append_ignores_offsets(self) -> None:
        store, writer, positional = self.make(append=True)
        positional.write(0, b"one")
        positional.write(0, b"two")
        self.finish(writer, positional)
        self.assertEqual(stored(store), b"onetwo")

    def test_acks_wait_for_the_store(self) -> None:
        """While parts are in flight at the limit, acknowledgements wait."""
        pressure: list[bool] = []
        store, writer, positional = self.make(auto=False, pressure=pressure)
        data = pattern(4 * MiB, seed=5)
        acks: list[Optional[Deferred[None]]] = []
        for at in range(0, len(data), 32 * KiB):
            acks.append(positional.write(at, data[at : at + 32 * KiB]))
        held = [d for d in acks if d is not None]
        self.assertTrue(held)
        for d in held:
            self.assertNoResult(d)
        self.assertEqual(pressure, [True])
        # The store catches up: parts complete, acknowledgements go out.
        while store.unsettled("upload_part"):
            store.answer(store.unsettled("upload_part")[0])
        for d in held:
            self.successResultOf(d)
        self.assertEqual(pressure, [True, False])
        size = self.successResultOf(positional.finish())
        d = writer.finish()
        while store.unsettled("upload_part"):
            store.answer(store.unsettled("upload_part")[0])
        self.successResultOf(d)
        self.assertEqual(size, len(data))
        self.assertEqual(stored(store), data)

    def test_store_failure_fails_the_file(self) -> None:
        """
        An upload that fails in the store stops its producer, the
        positional writer: held acknowledgements and later writes fail
        with the upload's own error, not a generic one.
        """
        store, writer, positional = self.make(auto=False)
        data = pattern(4 * MiB, seed=12)
        acks = [
            positional.write(at, data[at : at + 32 * KiB])
            for at in range(0, len(data), 32 * KiB)
        ]
        held = [d for d in acks if d is not None]
        self.assertTrue(held)
        store.fail(store.unsettled("upload_part")[0], StoreUnavailable("503"))
        for d in held:
            self.failureResultOf(d, StoreUnavailable)
        with self.assertRaises(StoreUnavailable):
            positional.write(len(data), b"more")
        self.failureResultOf(positional.finish(), StoreUnavailable)

    def test_quota_refusal_reaches_the_file(self) -> None:
        """A refusal of the quota fails the file as itself."""
        store = FakeStore(auto=["create_multipart", "upload_part", "abort_multipart"])

        class Budget:
            def grow(self, size: int) -> bool:
                return size <= 100

            def release(self) -> None:
                pass

        writer = UploadWriter(
            store, "k", TransferSettings(part_size=MiB), budget=Budget()
        )
        positional = PositionalWriter(writer, window=KiB)
        self.assertIsNone(positional.write(0, b"x" * 100))
        positional.write(100, b"y")  # over the quota: the upload fails
        with self.assertRaises(QuotaReached):
            positional.write(101, b"z")
        self.assertIsInstance(writer.failure.value, QuotaReached)  # type: ignore[union-attr]
        self.failureResultOf(positional.finish(), QuotaReached)


class SlowParts(MemoryStore):
    """A memory store whose parts take C{delay} seconds on C{clock}."""

    def __init__(self, clock: MemoryReactorClock, delay: float) -> None:
        super().__init__(clock, min_part_size=MiB)
        self.clock = clock
        self.delay = delay

    def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> Deferred[PartInfo]:
        d: Deferred[PartInfo] = Deferred()
        parent = super()

        def answer() -> None:
            parent.upload_part(key, upload_id, number, data).chainDeferred(d)

        self.clock.callLater(self.delay, answer)
        return d


class SFTPClient:
    """
    OpenSSH's sftp uploading one file: writes of C{chunk} in order, at most
    C{in_flight} unacknowledged, none while the session stopped reading
    (the positional writer's pressure).
    """

    def __init__(self, store: SlowParts, key: str, settings: TransferSettings) -> None:
        self.data = pattern(6 * MiB + 4321, seed=len(key))
        self.pressure = False
        self.writer = UploadWriter(store, key, settings)
        self.positional = PositionalWriter(
            self.writer,
            window=256 * KiB,
            on_pressure=self.pressed,
            paused_hold_limit=512 * KiB,
        )
        self.sent = 0
        self.unacked = 0
        self.result: Optional[Deferred[object]] = None
        self.stored: Optional[ObjectInfo] = None

    def pressed(self, on: bool) -> None:
        self.pressure = on

    def acked(self, _: object, size: int) -> None:
        self.unacked -= size

    def tick(self, chunk: int = 64 * KiB, in_flight: int = 64) -> None:
        while (
            not self.pressure
            and self.sent < len(self.data)
            and self.unacked < in_flight * chunk
        ):
            data = self.data[self.sent : self.sent + chunk]
            d = self.positional.write(self.sent, data)
            self.sent += len(data)
            if d is not None:
                self.unacked += len(data)
                d.addCallback(self.acked, len(data))
        if self.sent == len(self.data) and self.result is None:
            self.result = self.positional.finish().addCallback(
                lambda _: self.writer.finish()
            )
            self.result.addCallback(self.done)

    def done(self, info: ObjectInfo) -> ObjectInfo:
        self.stored = info
        return info


class PausedHoldTests(SynchronousTestCase):
    def test_budget_exhausted_bounds_held_bytes(self) -> None:
        """
        Eight SFTP uploads (64 writes of 64 KiB in flight each, 4 MiB)
        share a budget of two parts: while an upload waits for its turn
        its acknowledgements are held and, past C{paused_hold_limit}, the
        session stops reading, so no file holds more than that plus one
        write outside the budget; every file arrives whole once the budget
        frees.
        """
        clock = MemoryReactorClock()
        store = SlowParts(clock, 0.1)
        buffers = UploadBuffers(2 * MiB)
        settings = TransferSettings(part_size=MiB, parts_in_flight=4, buffers=buffers)
        clients = [SFTPClient(store, f"file{i}", settings) for i in range(8)]
        peak = 0
        for _ in range(20_000):
            for client in clients:
                client.tick()
                peak = max(peak, client.positional._held_bytes)
            if all(c.stored is not None for c in clients):
                break
            clock.advance(0.01)
        self.assertGreater(buffers.waited, 8)
        self.assertGreater(peak, 0)
        self.assertLessEqual(peak, 512 * KiB + 64 * KiB)
        for i, client in enumerate(clients):
            assert client.stored is not None
            self.assertEqual(client.stored.size, len(client.data))
            self.assertEqual(store.stored_bytes(f"file{i}"), client.data)
        self.assertEqual((buffers.used, buffers.waiting), (0, 0))
