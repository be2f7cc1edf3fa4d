"""
The PROXY protocol header parser: every form HAProxy's specification
(doc/proxy-protocol.txt) defines, fed whole, byte by byte and split
anywhere, and the ways a header can be wrong, each one L{BadHeader}.
"""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase

from cosgw.frontends.proxyheader import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    BadHeader,
    HeaderParser,
    ProxyHeader,
)
from tests.proxytesting import v1_header, v2_header

SSH = b"SSH-2.0-OpenSSH_9.2p1\r\n"


def feed_all(data: bytes, pieces: int = 1) -> tuple[ProxyHeader, bytes]:
    """
    Feed C{data} in C{pieces} reads (1: whole; len(data): byte by byte):
    the header and every byte after it.
    """
    parser = HeaderParser()
    size = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), size):
        result = parser.feed(data[i : i + size])
        if result is not None:
            return result[0], result[1] + data[i + size :]
    raise AssertionError(f"no header in {data!r}")


class V1Tests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        data = v1_header(("203.0.113.5", 40001), ("192.0.2.1", 21)) + b"USER x\r\n"
        header, rest = feed_all(data)
        self.assertEqual(header.version, 1)
        self.assertEqual(header.source, IPv4Address("TCP", "203.0.113.5", 40001))
        self.assertEqual(header.destination, IPv4Address("TCP", "192.0.2.1", 21))
        self.assertFalse(header.local)
        self.assertEqual(rest, b"USER x\r\n")

    def test_tcp6(self) -> None:
        data = v1_header(("2001:db8::5", 1), ("2001:db8::1", 65535))
        header, rest = feed_all(data)
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::5", 1))
        self.assertEqual(header.destination, IPv6Address("TCP", "2001:db8::1", 65535))
        self.assertEqual(rest, b"")

    def test_tcp6_mapped_is_ipv4(self) -> None:
        """An IPv4 client of the balancer's dual-stack socket is IPv4."""
        data = v1_header(("::ffff:203.0.113.9", 5), ("::ffff:192.0.2.1", 21))
        header, _ = feed_all(data)
        self.assertEqual(header.source, IPv4Address("TCP", "203.0.113.9", 5))

    def test_unknown(self) -> None:
        """UNKNOWN: the balancer's own connection; the rest of the line is moot."""
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"):
            header, rest = feed_all(line + SSH)
            self.assertEqual(
                (header.version, header.source, header.local), (1, None, True)
            )
            self.assertEqual(rest, SSH)

    def test_split_anywhere(self) -> None:
        data = v1_header(("198.51.100.7", 1234), ("192.0.2.1", 2222)) + SSH
        for pieces in (2, 3, 7, len(data)):
            header, rest = feed_all(data, pieces)
            self.assertEqual(header.source, IPv4Address("TCP", "198.51.100.7", 1234))
            self.assertEqual(rest, SSH)

    def test_incomplete_waits(self) -> None:
        parser = HeaderParser()
        self.assertIsNone(parser.feed(b"PRO"))
        self.assertIsNone(parser.feed(b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r"))
        header, rest = parser.feed(b"\nx")
        self.assertEqual(
            (str(getattr(header.source, "host", None)), rest), ("1.2.3.4", b"x")
        )

    def test_bad_lines(self) -> None:
        bad = [
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a port missing
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",  # a field too many
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",  # family mismatch
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
            b"PROXY TCP4 host.example 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY\r\n",
            b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        ]
        for line in bad:
            self.assertRaises(BadHeader, feed_all, line)

    def test_oversized(self) -> None:
        """No CRLF in the first 107 bytes: refused, nothing more buffered."""
        parser = HeaderParser()
        self.assertIsNone(parser.feed(b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 15)))
        with self.assertRaises(BadHeader) as caught:
            parser.feed(b"xx")
        self.assertIn("107", str(caught.exception))
        # A CRLF at the limit is still a header.
        line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 16) + b"\r\n"
        self.assertEqual(len(line), MAX_V1_LENGTH)
        header, _ = feed_all(line)
        self.assertTrue(header.local)

    def test_garbage_refused_on_first_byte(self) -> None:
        """A client speaking at once is refused on its first read."""
        for start in (SSH, b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"USER x"):
            with self.assertRaises(BadHeader) as caught:
                HeaderParser().feed(start[:1])
            self.assertIn("no PROXY header", str(caught.exception))
        self.assertRaises(BadHeader, HeaderParser().feed, b"PROXX")
        self.assertRaises(BadHeader, HeaderParser().feed, b"\r\n\r\n\x00\r\nQUIX")


class V2Tests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        data = v2_header(("203.0.113.5", 40001), ("192.0.2.1", 990)) + b"\x16\x03"
        header, rest = feed_all(data)
        self.assertEqual(header.version, 2)
        self.assertEqual(header.source, IPv4Address("TCP", "203.0.113.5", 40001))
        self.assertEqual(header.destination, IPv4Address("TCP", "192.0.2.1", 990))
        self.assertEqual(rest, b"\x16\x03")

    def test_tcp6_and_mapped(self) -> None:
        header, _ = feed_all(v2_header(("2001:db8::5", 7), ("2001:db8::1", 22)))
        self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::5", 7))
        header, _ = feed_all(v2_header(("::ffff:198.51.100.2", 7), ("::1", 22)))
        self.assertEqual(header.source, IPv4Address("TCP", "198.51.100.2", 7))

    def test_tlvs_skipped(self) -> None:
        """TLVs (HAProxy's unique id, ALPN, ...) follow the addresses."""
        tlvs = struct.pack("!BH", 0x05, 8) + b"uniqueid" + struct.pack("!BH", 0x04, 0)
        data = v2_header(("192.0.2.77", 5), ("192.0.2.1", 21), tlvs) + b"rest"
        header, rest = feed_all(data)
        self.assertEqual(
            (str(getattr(header.source, "host", None)), rest), ("192.0.2.77", b"rest")
        )

    def test_local(self) -> None:
        """LOCAL (HAProxy's health checks): the balancer itself."""
        header, rest = feed_all(v2_header(None) + SSH)
        self.assertEqual((header.version, header.local, rest), (2, True, SSH))
        # LOCAL with an address block: discarded, as the spec says.
        block = v2_header(("192.0.2.1", 1))
        local = block[:12] + b"\x20" + block[13:]
        header, _ = feed_all(local)
        self.assertTrue(header.local)

    def test_unspec_and_unix_are_the_balancer(self) -> None:
        for family in (
            0x00,
            0x01,
            0x31,
            0x10,
        ):  # UNSPEC, UNSPEC/STREAM, UNIX, INET/UNSPEC
            body = b"\0" * 216
            data = V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body
            header, _ = feed_all(data)
            self.assertTrue(header.local, hex(family))

    def test_split_anywhere(self) -> None:
        """The first read may be shorter than the 16 fixed bytes."""
        data = v2_header(("2001:db8::77", 4242), ("2001:db8::1", 22)) + SSH
        for pieces in (2, 3, 5, 11, len(data)):
            header, rest = feed_all(data, pieces)
            self.assertEqual(header.source, IPv6Address("TCP", "2001:db8::77", 4242))
            self.assertEqual(rest, SSH)

    def test_bad_headers(self) -> None:
        good = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2))

        def fixed(version_command: int, family: int, length: int) -> bytes:
            return V2_SIGNATURE + struct.pack("!BBH", version_command, family, length)

        bad = [
            fixed(0x11, 0x11, 12) + good[16:],  # version 1 in a v2 header
            fixed(0x22, 0x11, 12) + good[16:],  # command 2
            fixed(0x21, 0x12, 12) + good[16:],  # UDP
            fixed(0x21, 0x41, 12) + good[16:],  # family 4
            fixed(0x21, 0x13, 12) + good[16:],  # protocol 3
            fixed(0x21, 0x11, 11) + good[16:27],  # addresses cut short
            fixed(0x21, 0x21, 12) + good[16:],  # IPv6 needs 36 bytes
        ]
        for data in bad:
            self.assertRaises(BadHeader, feed_all, data)

    def test_oversized_refused_on_its_length(self) -> None:
        """A length over the cap is refused before its bytes are awaited."""
        parser = HeaderParser()
        too_long = MAX_V2_LENGTH - 16 + 1
        with self.assertRaises(BadHeader) as caught:
            parser.feed(V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, too_long))
        self.assertIn(str(MAX_V2_LENGTH), str(caught.exception))
        # At the cap: read whole.
        tlvs = struct.pack("!BH", 0x05, MAX_V2_LENGTH - 16 - 12 - 3)
        tlvs += b"u" * (MAX_V2_LENGTH - 16 - 12 - 3)
        data = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2), tlvs)
        self.assertEqual(len(data), MAX_V2_LENGTH)
        header, _ = feed_all(data, 9)
        self.assertEqual(str(getattr(header.source, "host", None)), "192.0.2.1")

    def test_incomplete_waits(self) -> None:
        data = v2_header(("192.0.2.1", 1), ("192.0.2.2", 2))
        parser = HeaderParser()
        for i in range(len(data) - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]))
        self.assertIsNotNone(parser.feed(data[-1:]))
