"""
Unit tests of L{cosgw.transfer.reader}: positional reads through
L{RangedReader} over fake byte sources.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import IntegrityError, ObjectInfo
from cosgw.transfer import (
    RangedReader,
    TransferStopped,
)
from tests.transfertesting import FakeSource

MiB = 1024 * 1024
KiB = 1024


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


class SourceAt(FakeSource):
    """A fake byte source starting at an offset of C{data}."""

    def __init__(self, data: bytes, offset: int, etag: str = "e1") -> None:
        super().__init__(data)
        self.info = ObjectInfo(key="obj", size=len(data), mtime=1.0, etag=etag)
        self.offset = self.position = offset
        self.length = len(data) - offset


class RangedReaderTests(SynchronousTestCase):
    def make(
        self, data: bytes, window: int = 256 * KiB, etag: str = "e1"
    ) -> tuple[RangedReader, list[int]]:
        opened: list[int] = []

        def reopen(offset: int) -> Deferred[Any]:
            opened.append(offset)
            return succeed(SourceAt(data, offset, etag))

        reader = RangedReader(SourceAt(data, 0), reopen, window=window, chunk=64 * KiB)
        return reader, opened

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

    def test_random_offsets_reopen(self) -> None:
        data = pattern(4 * MiB, seed=7)
        reader, opened = self.make(data)
        for at in (3 * MiB, 100, 2 * MiB + 5):
            self.assertEqual(
                self.successResultOf(reader.read(at, 1000)), data[at : at + 1000]
            )
        self.assertEqual(opened, [3 * MiB, 100, 2 * MiB + 5])

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

    def test_reads_after_close_fail(self) -> None:
        reader, _ = self.make(b"abc")
        reader.close()
        self.failureResultOf(reader.read(0, 1), TransferStopped)
