"""
CRC-64/ECMA as COS computes it (``x-cos-hash-crc64ecma``), and a running
check of a byte stream against the length and CRC a store announced.

COS returns this CRC on PUT, each part, GET and HEAD.  Checking it is the
end-to-end integrity proof that plain FTP lacks, so every download and every
upload part goes through it.  The C extension of crcmod runs at several
hundred MB/s; callers run it in worker threads, never on the reactor.
"""

from __future__ import annotations

from typing import Optional

import crcmod

from cosgw.interfaces import IntegrityError

#: crc64(data, crc=0) -> int; chains: crc64(b, crc64(a)) == crc64(a + b).
crc64 = crcmod.mkCrcFun(
    0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True
)


def parse_crc64(value: Optional[str]) -> Optional[int]:
    """COS sends the CRC as a decimal string; a missing or odd header is None."""
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


class StreamCheck:
    """
    Counts and checksums bytes as they stream past, and says at the end
    whether they are what the store promised.

    The CRC is only checked when the stream covers the whole object, because
    COS's header is the CRC of the whole object even for a ranged GET.
    """

    def __init__(self, key: str, expected_length: int, expected_crc: Optional[int]):
        self.key = key
        self.expected_length = expected_length
        self.expected_crc = expected_crc
        self.count = 0
        self.crc = 0

    def update(self, chunk: bytes) -> None:
        self.count += len(chunk)
        if self.expected_crc is not None:
            self.crc = crc64(chunk, self.crc)
        if self.count > self.expected_length:
            raise IntegrityError(
                f"{self.key}: store sent more than the {self.expected_length} "
                "bytes it announced"
            )

    def finish(self) -> None:
        """@raise IntegrityError: the stream ended short or its CRC differs."""
        if self.count != self.expected_length:
            raise IntegrityError(
                f"{self.key}: stream ended after {self.count} of "
                f"{self.expected_length} bytes"
            )
        if self.expected_crc is not None and self.crc != self.expected_crc:
            raise IntegrityError(
                f"{self.key}: CRC-64 mismatch (store {self.expected_crc}, "
                f"received {self.crc})"
            )


# -- combining CRCs of consecutive pieces -----------------------------------
#
# A multipart object's CRC-64 can be predicted from its parts' CRCs without
# reading the bytes again: crc(A + B) = shift(crc(A), len(B)) ^ crc(B), where
# shifting is multiplication by x^(8*len(B)) in GF(2), done with the
# square-and-multiply matrix method that zlib uses for crc32_combine.  This
# holds because CRC-64/ECMA (XZ variant) pre- and post-inverts alike.

_POLY_REVERSED = 0xC96C5795D7870F42


def _gf2_times(matrix: list[int], vector: int) -> int:
    total = 0
    i = 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def _zeros_operator(length: int) -> list[int]:
    """The matrix that appends C{length} zero bytes to a CRC register."""
    odd = [_POLY_REVERSED] + [1 << n for n in range(63)]  # one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    result: Optional[list[int]] = None
    while True:
        even = _gf2_square(odd)
        if length & 1:
            result = even if result is None else [_gf2_times(even, r) for r in result]
        length >>= 1
        if not length:
            break
        odd = _gf2_square(even)
        if length & 1:
            result = odd if result is None else [_gf2_times(odd, r) for r in result]
        length >>= 1
        if not length:
            break
    assert result is not None
    return result


_operators: dict[int, list[int]] = {}


def crc64_combine(crc1: int, crc2: int, length2: int) -> int:
    """
    The CRC-64 of A + B from crc(A), crc(B) and len(B).  Costs some
    milliseconds of pure Python per distinct length (cached), so call it from
    a worker thread.
    """
    if length2 == 0:
        return crc1
    op = _operators.get(length2)
    if op is None:
        op = _zeros_operator(length2)
        if len(_operators) < 64:
            _operators[length2] = op
    return _gf2_times(op, crc1) ^ crc2
