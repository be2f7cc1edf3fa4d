"""
Unit tests of L{cosgw.transfer.spool}: what a spool counts against its own
limit and the gateway's L{SpoolBudget} (whole blocks, a block once, holes
free, given back at close), checked against the file's real size on disk;
and L{Intervals} against a plain model.  The file I/O runs inline.
"""

from __future__ import annotations

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from cosgw.transfer import Spool, SpoolFull, TransferStopped
from cosgw.transfer.spool import BLOCK, Intervals, SpoolBudget

KiB = 1024
MiB = 1024 * KiB


class SpoolTests(SynchronousTestCase):
    def spool(self, limit: int = 64 * MiB, budget: SpoolBudget | None = None) -> Spool:
        return Spool(None, self.mktemp(), limit, budget)

    def write(self, spool: Spool, offset: int, data: bytes) -> None:
        self.successResultOf(spool.write(offset, data))

    def on_disk(self, spool: Spool) -> int:
        """The bytes of disk the spool file really takes."""
        assert spool._file is not None
        return os.fstat(spool._file.fileno()).st_blocks * 512

    def test_blocks_counted_once(self) -> None:
        """
        One byte takes a block; curl's unaligned chunks (30000 + 5536)
        share their boundary block; a rewrite costs nothing more.
        """
        spool = self.spool()
        self.write(spool, 0, b"x")
        self.assertEqual(spool.used, BLOCK)
        self.write(spool, 0, b"x" * 30000)
        self.write(spool, 30000, b"y" * 5536)
        self.assertEqual(spool.used, 9 * BLOCK)  # 35536 bytes: 9 blocks
        self.write(spool, 100, b"z" * 1000)
        self.assertEqual(spool.used, 9 * BLOCK)
        self.assertLessEqual(self.on_disk(spool), spool.used)
        self.assertEqual(self.successResultOf(spool.read(29998, 4)), b"xxyy")

    def test_holes_are_free(self) -> None:
        """Bytes far apart: two blocks counted, and the disk agrees."""
        spool = self.spool()
        self.write(spool, 0, b"a")
        self.write(spool, 10 * MiB, b"b")
        self.assertEqual(spool.used, 2 * BLOCK)
        self.assertLessEqual(self.on_disk(spool), spool.used)
        self.assertEqual(self.successResultOf(spool.read(MiB, 3)), bytes(3))

    def test_own_limit(self) -> None:
        spool = self.spool(limit=3 * BLOCK)
        self.write(spool, 0, b"a")
        self.write(spool, 5 * BLOCK, b"b")
        self.write(spool, 9 * BLOCK, b"c")
        with self.assertRaises(SpoolFull) as caught:
            spool.write(20 * BLOCK, b"d")
        self.assertIn("for one file", str(caught.exception))
        self.assertEqual(spool.used, 3 * BLOCK)

    def test_budget_shared_and_given_back(self) -> None:
        """
        Two spools share the gateway's budget; one that would exceed it is
        refused before writing anything; closing the first gives its share
        back.
        """
        budget = SpoolBudget(10 * BLOCK)
        first, second = self.spool(budget=budget), self.spool(budget=budget)
        self.write(first, 0, b"a" * (8 * BLOCK))
        self.assertEqual(budget.used, 8 * BLOCK)
        self.write(second, 0, b"b" * BLOCK)
        with self.assertRaises(SpoolFull) as caught:
            second.write(BLOCK, b"b" * (2 * BLOCK))
        self.assertIn("gateway spool is full", str(caught.exception))
        self.assertEqual((budget.used, second.used), (9 * BLOCK, BLOCK))
        self.assertEqual(self.successResultOf(second.read(BLOCK, 2)), bytes(2))
        first.close()
        self.assertEqual(budget.used, BLOCK)
        self.write(second, BLOCK, b"b" * (2 * BLOCK))
        second.close()
        second.close()
        self.assertEqual(budget.used, 0)

    def test_reserve_ahead(self) -> None:
        """A whole file's space claimed first; writing it claims no more."""
        budget = SpoolBudget(MiB)
        spool = self.spool(budget=budget)
        spool.reserve(300 * KiB + 1)
        self.assertEqual(budget.used, 76 * BLOCK)
        self.write(spool, 0, b"x" * (300 * KiB + 1))
        self.assertEqual(budget.used, 76 * BLOCK)
        other = self.spool(budget=budget)
        with self.assertRaises(SpoolFull):
            other.reserve(MiB)
        self.assertEqual(budget.used, 76 * BLOCK)
        spool.close()
        other.close()
        self.assertEqual(budget.used, 0)

    def test_cut_gives_back(self) -> None:
        budget = SpoolBudget(MiB)
        spool = self.spool(budget=budget)
        self.write(spool, 0, b"x" * (10 * BLOCK))
        self.successResultOf(spool.truncate(BLOCK + 1))
        self.assertEqual((spool.used, budget.used), (2 * BLOCK, 2 * BLOCK))
        self.successResultOf(spool.truncate(100 * BLOCK))  # a hole: free
        self.assertEqual(budget.used, 2 * BLOCK)
        spool.close()
        self.assertEqual(budget.used, 0)

    def test_closed(self) -> None:
        budget = SpoolBudget(MiB)
        spool = self.spool(budget=budget)
        spool.close()
        with self.assertRaises(TransferStopped):
            spool.write(0, b"x")
        with self.assertRaises(TransferStopped):
            spool.reserve(10)
        self.assertEqual(budget.used, 0)


class IntervalsTests(SynchronousTestCase):
    def test_against_a_model(self) -> None:
        """Random operations agree with a set of covered offsets."""
        rng = random.Random(7)
        for _ in range(40):
            intervals, model = Intervals(), set[int]()
            for _ in range(60):
                a = rng.randrange(0, 200)
                b = a + rng.randrange(0, 30)
                op = rng.randrange(6)
                if op < 3:
                    self.assertEqual(
                        intervals.uncovered(a, b), len(set(range(a, b)) - model)
                    )
                    intervals.add(a, b)
                    model |= set(range(a, b))
                elif op == 3:
                    intervals.drop_below(a)
                    model = {x for x in model if x >= a}
                elif op == 4:
                    intervals.drop_above(a)
                    model = {x for x in model if x < a}
                else:
                    covering = intervals.covering(a)
                    self.assertEqual(covering is not None, a in model)
                    if covering is not None:
                        s, e = covering
                        self.assertTrue(set(range(s, e)) <= model)
                        self.assertNotIn(s - 1, model)
                        self.assertNotIn(e, model)
                    after = [s for s, _ in intervals.ranges if s >= a]
                    self.assertEqual(intervals.first_after(a), min(after, default=None))
                self.assertEqual(intervals.total, len(model))
                covered = set()
                for s, e in intervals.ranges:
                    covered |= set(range(s, e))
                self.assertEqual(covered, model)
                ranges = intervals.ranges
                for (_, e1), (s2, _) in zip(ranges, ranges[1:]):
                    self.assertLess(e1, s2)  # disjoint, not touching
