"""
Unit tests of L{cosgw.transfer.reader}: positional reads through
L{RangedReader} over fake byte sources, some answering at once, some (a
store whose GETs take time) only when the test says so, so that reads can
pile up as they do when a client sends them all at once.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import IntegrityError, ObjectInfo
from cosgw.transfer import (
    RangedReader,
    TransferStopped,
)
from cosgw.transfer.reader import TooManyReads
from tests.transfertesting import FakeSource

MiB = 1024 * 1024
KiB = 1024


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class SourceAt(FakeSource):
    """A fake byte source of C{data[offset:end]}."""

    def __init__(
        self,
        data: bytes,
        offset: int,
        end: Optional[int] = None,
        etag: str = "e1",
        auto: bool = True,
    ) -> None:
        super().__init__(data[: len(data) if end is None else end], auto)
        self.info = ObjectInfo(key="obj", size=len(data), mtime=1.0, etag=etag)
        self.offset = self.position = offset
        self.length = len(self.data) - offset


class Streams:
    """
    A store whose GETs answer when L{run} says: every stream a reader
    opened, the first one (from offset 0, to the end) included.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.etag = "e1"
        self.first = SourceAt(data, 0, auto=False)
        self.sources = [self.first]
        self.opened: list[tuple[int, Optional[int]]] = []

    def reopen(self, offset: int, end: int) -> Deferred[Any]:
        self.opened.append((offset, end))
        source = SourceAt(self.data, offset, end, self.etag, auto=False)
        self.sources.append(source)
        return succeed(source)

    def step(self) -> bool:
        """Answer one outstanding read of a stream; False if there is none."""
        for source in self.sources:
            if source.waiting is not None:
                source.answer()
                return True
        return False

    def run(self, reader: RangedReader, limit: int = 100_000) -> int:
        """Answer reads until none is outstanding; the most bytes buffered."""
        most = reader.buffered
        for _ in range(limit):
            if not self.step():
                return most
            most = max(most, reader.buffered)
        raise AssertionError("the stream never stopped reading")


class RangedReaderTests(SynchronousTestCase):
    def make(
        self, data: bytes, window: int = 256 * KiB, etag: str = "e1"
    ) -> tuple[RangedReader, list[tuple[int, int]]]:
        opened: list[tuple[int, int]] = []

        def reopen(offset: int, end: int) -> Deferred[Any]:
            opened.append((offset, end))
            return succeed(SourceAt(data, offset, end, etag))

        reader = RangedReader(SourceAt(data, 0), reopen, window=window, chunk=64 * KiB)
        return reader, opened

    def make_slow(
        self, data: bytes, window: int = 256 * KiB, **kwargs: Any
    ) -> tuple[RangedReader, Streams]:
        streams = Streams(data)
        reader = RangedReader(
            streams.first, streams.reopen, window=window, chunk=64 * KiB, **kwargs
        )
        return reader, streams

    def test_sequential_out_of_order(self) -> None:
        """OpenSSH's pattern: many reads in flight, answered from one stream."""
        data = pattern(MiB + 77, seed=6)
        reader, opened = self.make(data)
        offsets = list(range(0, len(data), 32 * KiB))
        got = {}
        for i in range(0, len(offsets), 4):
            group = offsets[i : i + 4]
            for at in reversed(group):
                got[at] = self.successResultOf(reader.read(at, 32 * KiB))
        self.assertEqual(b"".join(got[at] for at in offsets), data)
        self.assertEqual(opened, [])
        self.assertEqual(self.successResultOf(reader.read(len(data), 10)), b"")

    def test_every_read_at_once_is_one_stream(self) -> None:
        """
        paramiko's get(): a READ for every block of the file before any
        answer (here 16 windows' worth).  They wait for the one stream, none
        moves it, and memory stays about a window however many wait.
        """
        data = pattern(4 * MiB + 123, seed=2)
        reader, streams = self.make_slow(data)
        offsets = range(0, len(data), 32 * KiB)
        reads = [reader.read(at, 32 * KiB) for at in offsets]
        self.assertEqual(reader.waiting, len(reads))
        most = streams.run(reader)
        self.assertEqual(
            b"".join(self.successResultOf(d) for d in reads), data, "bytes differ"
        )
        self.assertEqual((streams.opened, reader.reopened), ([], 0))
        self.assertLessEqual(most, 256 * KiB + 128 * KiB + 2 * 64 * KiB)
        eof = reader.read(len(data), 32 * KiB)
        self.assertEqual(self.successResultOf(eof), b"")
        reader.close()

    def test_reads_in_reverse_order(self) -> None:
        """
        A client that sends its reads last block first: the stream goes
        to the first one (the end), then once back to the lowest, and the
        rest follow it; no read gets a GET of its own.
        """
        data = pattern(2 * MiB, seed=3)
        reader, streams = self.make_slow(data)
        offsets = list(range(0, len(data), 32 * KiB))
        reads = {at: reader.read(at, 32 * KiB) for at in reversed(offsets)}
        streams.run(reader)
        self.assertEqual(
            b"".join(self.successResultOf(reads[at]) for at in offsets), data
        )
        self.assertEqual(
            streams.opened,
            [(2 * MiB - 32 * KiB, 2 * MiB), (0, 2 * MiB - 32 * KiB)],
        )

    def test_a_far_read_waits_for_the_reads_before_it(self) -> None:
        """
        A jump far ahead while in-order reads wait: they are answered by
        the stream first, then one bounded GET serves the jump.
        """
        data = pattern(4 * MiB, seed=4)
        reader, streams = self.make_slow(data)
        near = [reader.read(at, 32 * KiB) for at in range(0, 384 * KiB, 32 * KiB)]
        far = reader.read(3 * MiB, 1000)
        streams.run(reader)
        self.assertEqual(
            b"".join(self.successResultOf(d) for d in near), data[: 384 * KiB]
        )
        self.assertEqual(self.successResultOf(far), data[3 * MiB : 3 * MiB + 1000])
        self.assertEqual(streams.opened, [(3 * MiB, 3 * MiB + 256 * KiB)])
        self.assertEqual(streams.first.closed, 1)

    def test_a_seek_is_a_bounded_range_that_grows_when_read_on(self) -> None:
        """
        A seek behind: a GET of one window from there.  A reader that goes
        on in order past it continues with ranges four times longer each
        (a resumed download), to the end of the file and no further.
        """
        data = pattern(7 * MiB, seed=5)
        reader, streams = self.make_slow(data)
        d = reader.read(2 * MiB, 1000)
        streams.run(reader)
        self.successResultOf(d)
        at = 100
        got = []
        while at < len(data):
            reads = [reader.read(at + i * 32 * KiB, 32 * KiB) for i in range(8)]
            streams.run(reader)
            got.extend(self.successResultOf(r) for r in reads)
            at += 8 * 32 * KiB
        self.assertEqual(b"".join(got), data[100:])
        w = 256 * KiB
        self.assertEqual(
            streams.opened,
            [
                (2 * MiB, 2 * MiB + w),
                (100, 100 + w),
                (100 + w, 100 + 5 * w),
                (100 + 5 * w, 100 + 21 * w),
                (100 + 21 * w, len(data)),
            ],
        )

    def test_random_offsets_reopen(self) -> None:
        data = pattern(4 * MiB, seed=7)
        reader, opened = self.make(data)
        for at in (3 * MiB, 100, 2 * MiB + 5):
            self.assertEqual(
                self.successResultOf(reader.read(at, 1000)), data[at : at + 1000]
            )
        w = 256 * KiB
        self.assertEqual(
            opened,
            [(3 * MiB, 3 * MiB + w), (100, 100 + w), (2 * MiB + 5, 2 * MiB + 5 + w)],
        )

    def test_a_read_behind_is_not_left_waiting(self) -> None:
        """
        One read behind the stream while a client keeps eight in-order
        reads in flight: it is served once the stream has delivered two
        windows to the others (a bounded GET for it, one to go back), with
        its own bytes, and the in-order reads go on.
        """
        data = pattern(4 * MiB, seed=8)
        reader, streams = self.make_slow(data)
        flight: list[tuple[int, Deferred[bytes]]] = []
        at, asked_at, behind, served_at = 0, 0, None, None
        for _ in range(10_000):
            while len(flight) < 8 and at < len(data):
                flight.append((at, reader.read(at, 32 * KiB)))
                at += 32 * KiB
            if behind is None and at >= MiB:
                asked_at, behind = at, reader.read(10, 100)
            if behind is not None and served_at is None and behind.called:
                served_at = at
            while flight and flight[0][1].called:
                offset, d = flight.pop(0)
                self.assertEqual(
                    self.successResultOf(d), data[offset : offset + 32 * KiB]
                )
            if not streams.step():
                break
        self.assertEqual((flight, at), ([], len(data)))
        assert behind is not None and served_at is not None
        self.assertEqual(self.successResultOf(behind), data[10:110])
        self.assertLessEqual(served_at - asked_at, 2 * 256 * KiB + 8 * 32 * KiB)
        self.assertEqual(streams.opened[0], (10, 10 + 256 * KiB))
        back = streams.opened[1][0]
        self.assertEqual(streams.opened[1], (back, back + 256 * KiB))
        self.assertLessEqual(len(streams.opened), 5, streams.opened)

    def test_reads_waiting_are_capped(self) -> None:
        data = pattern(MiB, seed=9)
        reader, streams = self.make_slow(data, max_waiting=4)
        reads = [reader.read(at, 1000) for at in (0, 5000, 9000, 20_000)]
        error = self.failureResultOf(reader.read(30_000, 10), TooManyReads).value
        self.assertIn("more than 4 reads waiting", str(error))
        streams.run(reader)
        for d, at in zip(reads, (0, 5000, 9000, 20_000)):
            self.assertEqual(self.successResultOf(d), data[at : at + 1000])
        self.assertEqual(
            self.successResultOf(reader.read(30_000, 10)), data[30_000:30_010]
        )

    def test_step_back_within_buffer(self) -> None:
        """A re-request of recent bytes is served without reopening."""
        data = pattern(MiB, seed=8)
        reader, opened = self.make(data)
        self.successResultOf(reader.read(0, 64 * KiB))
        self.assertEqual(
            self.successResultOf(reader.read(40 * KiB, 8 * KiB)),
            data[40 * KiB : 48 * KiB],
        )
        self.assertEqual(opened, [])

    def test_changed_object_fails(self) -> None:
        data = pattern(MiB, seed=9)
        reader, _ = self.make(data, etag="other")
        self.failureResultOf(reader.read(900 * KiB, 10), IntegrityError)

    def test_a_changed_object_fails_a_continued_range(self) -> None:
        """
        A download going on past a moved stream's range finds the object
        replaced: the reads fail, none gets the new version's bytes.
        """
        data = pattern(2 * MiB, seed=10)
        reader, streams = self.make_slow(data)
        d = reader.read(MiB, 32 * KiB)
        streams.run(reader)
        self.assertEqual(self.successResultOf(d), data[MiB : MiB + 32 * KiB])
        streams.etag = "e2"
        streams.data = pattern(2 * MiB, seed=11)
        reads = [reader.read(MiB + 32 * KiB * i, 32 * KiB) for i in range(1, 12)]
        streams.run(reader)
        for i, r in enumerate(reads, 1):
            at = MiB + 32 * KiB * i
            if at + 32 * KiB <= MiB + 256 * KiB:
                self.assertEqual(self.successResultOf(r), data[at : at + 32 * KiB])
            else:
                self.failureResultOf(r, IntegrityError)
        self.failureResultOf(reader.read(0, 1), IntegrityError)

    def test_end_of_file_waits_for_the_stream_check(self) -> None:
        """
        The read at the end (the client's EOF) is answered once the source
        checked its byte count and CRC-64; a failed check fails it.
        """
        data = pattern(300 * KiB, seed=12)
        reader, streams = self.make_slow(data)
        reads = [reader.read(at, 64 * KiB) for at in range(0, len(data), 64 * KiB)]
        while streams.first.position < len(data):
            streams.step()
        self.assertEqual(b"".join(self.successResultOf(d) for d in reads), data)
        eof = reader.read(len(data), 64 * KiB)
        self.assertNoResult(eof)
        streams.first.fail(IntegrityError("obj: CRC-64 mismatch"))
        self.failureResultOf(eof, IntegrityError)

    def test_empty_file(self) -> None:
        reader, streams = self.make_slow(b"")
        d = reader.read(0, 10)
        streams.run(reader)
        self.assertEqual(self.successResultOf(d), b"")

    def test_reads_after_close_fail(self) -> None:
        reader, streams = self.make_slow(b"abc" * 1000)
        waiting = reader.read(10, 20)
        reader.close()
        self.failureResultOf(waiting, TransferStopped)
        self.failureResultOf(reader.read(0, 1), TransferStopped)
        self.assertEqual(streams.first.closed, 1)
