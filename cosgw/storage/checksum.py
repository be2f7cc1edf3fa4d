"""
CRC-64/ECMA as COS computes it (``x-cos-hash-crc64ecma``), and a running
check of a byte stream against the length and CRC a store announced.

COS returns this CRC on PUT, each part, GET and HEAD.  Checking it is the
end-to-end integrity proof that plain FTP lacks, so every download and every
upload part goes through it.

anycrc computes it at several GB/s and can combine the CRCs of consecutive
pieces, which predicts a multipart object's CRC from its parts' without
reading the bytes again.  (crcmod, which the COS SDK uses, managed about
0.38 GB/s here and capped downloads at ~230 MB/s.)  Callers still run it in
worker threads, never on the reactor.  anycrc holds the GIL while it runs
(about 1.3 ms per 8 MiB here), so a large buffer is checksummed in slices
of L{SLICE}: between two the interpreter may hand the GIL to the reactor
thread, which a part of a few GiB would otherwise stall for a second.
"""

from __future__ import annotations

from typing import Optional

import anycrc

from cosgw.interfaces import IntegrityError

#: CRC-64/XZ (a.k.a. GO-ECMA): what COS calls crc64ecma.
_MODEL = anycrc.Model("CRC64-XZ")
#: The most bytes checksummed with the GIL held at once.
SLICE = 1024 * 1024


def crc64(data: bytes | memoryview, crc: int = 0) -> int:
    """The CRC of C{data}; chains: C{crc64(b, crc64(a)) == crc64(a + b)}."""
    if len(data) <= SLICE:
        return _MODEL.calc(data, crc) if crc else _MODEL.calc(data)
    view = memoryview(data)
    for start in range(0, len(view), SLICE):
        crc = crc64(view[start : start + SLICE], crc)
    return crc


def crc64_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC of A + B from crc(A), crc(B) and len(B)."""
    return _MODEL.combine(crc1, crc2, length2)


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

    def feed(self, chunk: bytes) -> bytes:
        """
        Account for one read's result: a chunk is counted, the empty read
        at the end of the stream is checked.  Returns C{chunk}.

        @raise IntegrityError: see L{update} and L{finish}.
        """
        if chunk:
            self.update(chunk)
        else:
            self.finish()
        return chunk

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
