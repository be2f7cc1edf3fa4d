"""
How an upload is cut into parts, within COS's limits (ARCHITECTURE.md):
at most 10,000 parts of 1 MiB to 5 GiB, only the last one smaller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from cosgw.interfaces import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, PartInfo
from cosgw.transfer.settings import MiB

#: The part number by which an upload of unknown length reaches COS's 5 GiB
#: part limit.  Growing geometrically until then lets a stream reach about
#: 44.7 TiB (91% of the 48.82 TiB that 10,000 parts of 5 GiB allow) while an
#: upload of a few GiB keeps parts small; only a known size can reach the
#: very last bytes of the limit, and a size hint does.
PART_GROWTH_SPAN = 1000


def part_size_for(number: int, base: int, size_hint: Optional[int] = None) -> int:
    """
    The size of part C{number} (1-based) of an upload.

    Without a hint, sizes grow geometrically from C{base} so that part
    L{PART_GROWTH_SPAN} is 5 GiB; each size is rounded to a whole MiB.
    With a hint of the total size, parts are at least large enough for the
    whole file to fit in 10,000 of them.
    """
    base = min(max(base, MIN_PART_SIZE), MAX_PART_SIZE)
    ratio = MAX_PART_SIZE / base
    growth = ratio ** (min(number - 1, PART_GROWTH_SPAN - 1) / (PART_GROWTH_SPAN - 1))
    size = max(MIN_PART_SIZE, round(base * growth / MiB) * MiB)
    if size_hint:
        size = max(size, math.ceil(size_hint / MAX_PARTS / MiB) * MiB)
    return min(size, MAX_PART_SIZE)


def max_stream_size(base: int) -> int:
    """The largest object an upload of unknown size can make (for the docs)."""
    return sum(part_size_for(n, base) for n in range(1, MAX_PARTS + 1))


@dataclass(frozen=True)
class CopyRange:
    """A part copied server-side from bytes C{first..last} of C{source}."""

    source: str
    first: int
    last: int


def copy_ranges(length: int) -> list[tuple[int, int]]:
    """
    Split the first C{length} bytes of an object into part-copy ranges:
    each at most 5 GiB and, since more parts follow, at least 1 MiB.

    @param length: At least L{MIN_PART_SIZE}.
    """
    ranges = []
    first = 0
    while first < length:
        size = min(MAX_PART_SIZE, length - first)
        rest = length - first - size
        if 0 < rest < MIN_PART_SIZE:
            size -= MIN_PART_SIZE - rest
        ranges.append((first, first + size - 1))
        first += size
    return ranges


def contiguous_parts(parts: Sequence[PartInfo]) -> list[PartInfo]:
    """Parts 1..k of C{parts} with no gap, sorted: what a resume can keep."""
    by_number = {p.number: p for p in parts}
    kept: list[PartInfo] = []
    while len(kept) + 1 in by_number:
        kept.append(by_number[len(kept) + 1])
    return kept
