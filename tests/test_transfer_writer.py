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
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import StoreUnavailable
from cosgw.transfer import (
    PositionalWriter,
    QuotaReached,
    RewriteRefused,
    Spool,
    SpoolFull,
    TransferSettings,
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
