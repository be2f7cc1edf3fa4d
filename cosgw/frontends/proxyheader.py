"""
The PROXY protocol header (versions 1 and 2), as HAProxy and other L4
balancers send it before the client's first byte, read incrementally.

The specification is HAProxy's C{doc/proxy-protocol.txt}.  A header is

  - version 1: one text line, C{PROXY TCP4|TCP6 <src> <dst> <sport>
    <dport>\\r\\n} or C{PROXY UNKNOWN ...\\r\\n}, at most 107 bytes with its
    CRLF ("a receiver may reject an incomplete line which does not contain
    the CRLF sequence in the first 107 characters");
  - version 2: the 12-byte signature, a version/command byte, a
    family/protocol byte, a 16-bit length and that many bytes: the
    addresses, then TLVs (ignored here).

Why not C{twisted.protocols.haproxy}'s parsers: its version 2 parser
refuses a first read shorter than 16 bytes (a header split across reads),
raises C{KeyError} on an unknown family/protocol byte and has no size cap;
its version 1 parser accepts any text as an address and lets a bad port
escape as C{ValueError}.  Every way a header can be wrong here is one
L{BadHeader} with a reason for the log.

What the receiver does with each form (the specification's words):

  - C{LOCAL} (v2) is sent by the balancer for itself, health checks
    included: "the receiver must accept this connection as valid and must
    use the real connection endpoints";
  - C{UNKNOWN} (v1) and the C{UNSPEC} family (v2) likewise: the balancer
    does not know the client, so the connection is the balancer's;
  - a v2 C{AF_UNIX} source (a client of the balancer's UNIX socket) is a
    local client of the balancer: the balancer's too;
  - C{DGRAM} is refused: these are stream services.

Those are a L{ProxyHeader} whose C{source} is None.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Optional, Union

from twisted.internet.address import IPv4Address, IPv6Address

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "V2_SIGNATURE",
    "BadHeader",
    "HeaderParser",
    "ProxyHeader",
]

#: The longest version 1 header, CRLF included (the specification's bound).
MAX_V1_LENGTH = 107
#: The longest version 2 header accepted, its 16 fixed bytes included.  The
#: addresses take 36 bytes at most (IPv6; AF_UNIX 216); the rest is TLVs
#: (ALPN, authority, unique id, SSL facts), which HAProxy keeps well under
#: this.  A header claiming more is refused as soon as its length is read.
MAX_V2_LENGTH = 2048
#: The version 2 signature: no valid v1 header, HTTP request or protocol
#: greeting starts with it.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "

TCPAddress = Union[IPv4Address, IPv6Address]

_FAMILY_UNSPEC, _FAMILY_INET, _FAMILY_INET6, _FAMILY_UNIX = 0, 1, 2, 3
_PROTO_UNSPEC, _PROTO_STREAM, _PROTO_DGRAM = 0, 1, 2
_COMMAND_LOCAL, _COMMAND_PROXY = 0, 1
#: Bytes of the address block for each family (v2).
_ADDRESS_LENGTH = {_FAMILY_INET: 12, _FAMILY_INET6: 36, _FAMILY_UNIX: 216}


class BadHeader(ValueError):
    """The bytes are no valid PROXY header; C{str()} says why, for the log."""


@dataclass(frozen=True)
class ProxyHeader:
    """
    A header read.  C{source} and C{destination} are None when the
    connection is the balancer's own (v2 C{LOCAL}, v1 C{UNKNOWN}, an
    unspecified or UNIX family): the real connection's addresses hold.
    """

    version: int
    source: Optional[TCPAddress] = None
    destination: Optional[TCPAddress] = None

    @property
    def local(self) -> bool:
        """The balancer speaks for itself (health checks), not a client."""
        return self.source is None


def _tcp_address(family: int, host: str, port: int) -> TCPAddress:
    """
    An address as the transports give them; an IPv4-mapped IPv6 source is
    an IPv4 client (one client, one address, whatever the balancer's
    listener).
    """
    if family == _FAMILY_INET6:
        address = ipaddress.IPv6Address(host)
        if address.ipv4_mapped is None:
            return IPv6Address("TCP", str(address), port)
        host = str(address.ipv4_mapped)
    return IPv4Address("TCP", host, port)


def _v1_field(text: bytes, family: int) -> str:
    """One address of a version 1 line, checked against its family."""
    try:
        word = text.decode("ascii")
        if family == _FAMILY_INET:
            # ipaddress accepts no leading zeros either: "010.0.0.1" fails.
            return str(ipaddress.IPv4Address(word))
        return str(ipaddress.IPv6Address(word))
    except (UnicodeDecodeError, ValueError):
        kind = "IPv4" if family == _FAMILY_INET else "IPv6"
        raise BadHeader(f"v1: {text[:48]!r} is not an {kind} address") from None


def _v1_port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise BadHeader(f"v1: {text[:16]!r} is not a port")
    if len(text) > 1 and text.startswith(b"0"):
        raise BadHeader(f"v1: port {text!r} has a leading zero")
    return int(text)


def parse_v1(line: bytes) -> ProxyHeader:
    """
    A version 1 line without its CRLF (C{PROXY TCP4 1.2.3.4 5.6.7.8 1 2}).

    @raise BadHeader: not a valid line.
    """
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise BadHeader("v1: the line does not start with 'PROXY '")
    if fields[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(1)
    family = {b"TCP4": _FAMILY_INET, b"TCP6": _FAMILY_INET6}.get(fields[1])
    if family is None:
        raise BadHeader(f"v1: unknown protocol {fields[1][:16]!r}")
    if len(fields) != 6:
        raise BadHeader(f"v1: {len(fields)} fields, not 6 (single spaces)")
    source = _v1_field(fields[2], family)
    destination = _v1_field(fields[3], family)
    source_port, destination_port = _v1_port(fields[4]), _v1_port(fields[5])
    return ProxyHeader(
        1,
        _tcp_address(family, source, source_port),
        _tcp_address(family, destination, destination_port),
    )


def parse_v2(header: bytes) -> ProxyHeader:
    """
    A whole version 2 header: its 16 fixed bytes and the length they give.

    @raise BadHeader: not a valid header.
    """
    version_command, family_protocol, length = struct.unpack("!BBH", header[12:16])
    if version_command >> 4 != 2:
        raise BadHeader(f"v2: version {version_command >> 4}, not 2")
    command = version_command & 0x0F
    if command not in (_COMMAND_LOCAL, _COMMAND_PROXY):
        raise BadHeader(f"v2: unknown command {command}")
    if command == _COMMAND_LOCAL:
        # "the receiver must ... discard the protocol block including the
        # family".
        return ProxyHeader(2)
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if family not in (_FAMILY_UNSPEC, *_ADDRESS_LENGTH) or protocol > _PROTO_DGRAM:
        raise BadHeader(f"v2: unknown family/protocol 0x{family_protocol:02x}")
    if protocol == _PROTO_DGRAM:
        raise BadHeader("v2: a datagram (UDP) header on a stream connection")
    if family in (_FAMILY_UNSPEC, _FAMILY_UNIX) or protocol == _PROTO_UNSPEC:
        # Unknown to the balancer, or its own local client.
        return ProxyHeader(2)
    needed = _ADDRESS_LENGTH[family]
    if length < needed:
        raise BadHeader(f"v2: {length} bytes of addresses, {needed} needed")
    block = header[16 : 16 + needed]
    size = 4 if family == _FAMILY_INET else 16
    source = str(ipaddress.ip_address(block[:size]))
    destination = str(ipaddress.ip_address(block[size : 2 * size]))
    source_port, destination_port = struct.unpack("!HH", block[2 * size :])
    return ProxyHeader(
        2,
        _tcp_address(family, source, source_port),
        _tcp_address(family, destination, destination_port),
    )


class HeaderParser:
    """
    Reads one header from the first bytes of a connection, fed as they
    arrive.  The form is decided on the first byte that tells them apart,
    so a client speaking its own protocol at once (an SSH version line, a
    TLS ClientHello) is refused on its first read, and no more than the
    longest header is ever buffered.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Optional[tuple[ProxyHeader, bytes]]:
        """
        Take the next bytes of the connection.

        @return: None while the header is incomplete; then the header and
            the bytes that followed it (the client's first bytes).
        @raise BadHeader: the bytes are not (the start of) a valid header;
            the parser is of no further use.
        """
        buffer = self._buffer = self._buffer + data
        if buffer[:1] == V2_SIGNATURE[:1]:
            return self._feed_v2(buffer)
        if buffer[:1] == _V1_PREFIX[:1]:
            return self._feed_v1(buffer)
        raise BadHeader(f"no PROXY header: the connection starts {buffer[:16]!r}")

    def _feed_v1(self, buffer: bytes) -> Optional[tuple[ProxyHeader, bytes]]:
        if not buffer.startswith(_V1_PREFIX[: len(buffer)]):
            raise BadHeader(f"no PROXY header: the connection starts {buffer[:16]!r}")
        end = buffer.find(b"\r\n", 0, MAX_V1_LENGTH)
        if end == -1:
            if len(buffer) >= MAX_V1_LENGTH:
                raise BadHeader(f"v1: no CRLF in the first {MAX_V1_LENGTH} bytes")
            return None
        return parse_v1(buffer[:end]), buffer[end + 2 :]

    def _feed_v2(self, buffer: bytes) -> Optional[tuple[ProxyHeader, bytes]]:
        signature = buffer[: len(V2_SIGNATURE)]
        if not V2_SIGNATURE.startswith(signature):
            raise BadHeader(f"no PROXY header: the connection starts {buffer[:16]!r}")
        if len(buffer) < 16:
            return None
        size = 16 + struct.unpack("!H", buffer[14:16])[0]
        if size > MAX_V2_LENGTH:
            raise BadHeader(f"v2: a {size}-byte header (the limit is {MAX_V2_LENGTH})")
        if len(buffer) < size:
            return None
        return parse_v2(buffer[:size]), buffer[size:]
