"""
Unit tests of L{cosgw.transfer.parts}: part sizes within COS's limits.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
)
from cosgw.transfer import (
    max_stream_size,
    part_size_for,
)
from tests.transfertesting import (
    GiB,
    MiB,
    TiB,
)


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
