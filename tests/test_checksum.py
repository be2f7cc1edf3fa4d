"""
Unit tests of L{cosgw.storage.checksum}: CRC-64/ECMA, combining, parsing
and the stream check both stores' sources use.
"""

from __future__ import annotations

import crcmod
from twisted.trial.unittest import SynchronousTestCase

from cosgw.interfaces import (
    IntegrityError,
)
from cosgw.storage import checksum
from cosgw.storage.checksum import (
    SLICE,
    StreamCheck,
    crc64,
    crc64_combine,
    parse_crc64,
)
from tests.transfertesting import (
    MiB,
    random_bytes,
)


class ChecksumTests(SynchronousTestCase):
    def test_check_value(self) -> None:
        """crc64 is CRC-64/XZ (ECMA-182, reflected): its check value."""
        self.assertEqual(crc64(b"123456789"), 0x995DC9BBDF1939FA)
        self.assertEqual(crc64(b""), 0)

    def test_chaining(self) -> None:
        data = random_bytes(10_000)
        self.assertEqual(crc64(data[3000:], crc64(data[:3000])), crc64(data))

    def test_large_buffers_in_slices(self) -> None:
        """
        A buffer larger than L{SLICE} is checksummed a slice per call of
        anycrc (which holds the GIL while it runs), with the CRC that
        crcmod, the COS SDK's own implementation, gives for the whole;
        memoryviews and a chained CRC work the same.
        """
        reference = crcmod.mkCrcFun(
            0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True
        )
        model = checksum._MODEL
        sizes: list[int] = []

        class Recording:
            def calc(self, data: bytes, *init: int) -> int:
                sizes.append(len(data))
                return model.calc(data, *init)

        self.patch(checksum, "_MODEL", Recording())
        data = random_bytes(3 * SLICE + 1)
        self.assertEqual(crc64(data), reference(data))
        self.assertEqual(sizes, [SLICE, SLICE, SLICE, 1])
        self.assertEqual(crc64(memoryview(data)), reference(data))
        head = crc64(data[:5])
        self.assertEqual(crc64(data[5:], head), reference(data))
        self.assertLessEqual(max(sizes), SLICE)

    def test_combine(self) -> None:
        """crc64_combine gives the CRC of a concatenation from its pieces'."""
        for len_a, len_b in (
            (0, 0),
            (0, 17),
            (17, 0),
            (1, 1),
            (9, 8),
            (1000, 3),
            (3, 1000),
            (4096, 65_537),
            (MiB, MiB + 5),
        ):
            a, b = random_bytes(len_a), random_bytes(len_b)
            self.assertEqual(
                crc64_combine(crc64(a), crc64(b), len(b)), crc64(a + b), (len_a, len_b)
            )

    def test_combine_many(self) -> None:
        """Combining the CRCs of many parts gives the whole's CRC."""
        parts = [random_bytes(n) for n in (1000, 0, 2048, 1, 5000)]
        total = 0
        for part in parts:
            total = crc64_combine(total, crc64(part), len(part))
        self.assertEqual(total, crc64(b"".join(parts)))

    def test_parse(self) -> None:
        self.assertEqual(parse_crc64("11562812366232624542"), 11562812366232624542)
        for value in (None, "", "not a number"):
            self.assertIsNone(parse_crc64(value))

    def test_stream_check_good(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), crc64(data))
        for i in range(0, len(data), 1000):
            check.update(data[i : i + 1000])
        check.finish()
        self.assertEqual(check.count, len(data))

    def test_stream_check_without_crc(self) -> None:
        """Without an expected CRC only the length is checked."""
        check = StreamCheck("k", 3, None)
        check.update(b"abc")
        check.finish()

    def test_stream_check_short(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), crc64(data))
        check.update(data[:2999])
        self.assertRaises(IntegrityError, check.finish)

    def test_stream_check_long(self) -> None:
        data = random_bytes(3000)
        check = StreamCheck("k", len(data), None)
        check.update(data)
        self.assertRaises(IntegrityError, check.update, b"x")

    def test_stream_check_bad_crc(self) -> None:
        data = bytearray(random_bytes(3000))
        crc = crc64(bytes(data))
        data[1500] ^= 1
        check = StreamCheck("k", len(data), crc)
        check.update(bytes(data))
        error = self.assertRaises(IntegrityError, check.finish)
        self.assertIn("k", str(error))

    def test_stream_check_empty(self) -> None:
        check = StreamCheck("k", 0, crc64(b""))
        check.finish()
