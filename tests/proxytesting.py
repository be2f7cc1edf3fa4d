"""
PROXY protocol headers as a balancer writes them, and clients that send one
before they speak: ftplib (plain and implicit FTPS) and paramiko over a
socket whose first bytes are the header.
"""

from __future__ import annotations

import ftplib
import ipaddress
import socket
import struct
from typing import Any, Optional

from cosgw.frontends.proxyheader import V2_SIGNATURE

#: Bound on any one client wait.
BOUND = 30.0


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A version 1 header from C{(host, port)} pairs of one family."""
    kind = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def v2_header(
    source: Optional[tuple[str, int]],
    destination: Optional[tuple[str, int]] = None,
    tlvs: bytes = b"",
) -> bytes:
    """
    A version 2 header (C{PROXY} over TCP), or C{LOCAL} when C{source} is
    None.
    """
    if source is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0, len(tlvs)) + tlvs
    if destination is None:
        destination = ("::" if ":" in source[0] else "0.0.0.0", 0)
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = block + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


def proxied_socket(port: int, header: bytes, host: str = "127.0.0.1") -> socket.socket:
    """A connection to C{host}:C{port} that has sent C{header} already."""
    sock = socket.create_connection((host, port), BOUND)
    sock.sendall(header)
    return sock


class _Proxied:
    """C{connect} of ftplib's classes over a socket that sent C{header}."""

    header = b""
    host: str
    port: int
    encoding: str

    def _open(self, host: str, port: int) -> socket.socket:
        self.host, self.port = host, port
        return proxied_socket(port, self.header, host)

    def _greeted(self, sock: Any) -> str:
        self.sock = sock
        self.af = sock.family
        self.file = sock.makefile("r", encoding=self.encoding)
        self.welcome: str = self.getresp()  # type: ignore[attr-defined]
        return self.welcome


class ProxiedFTP(_Proxied, ftplib.FTP):
    """ftplib's FTP whose control connection starts with C{header}."""

    def connect(self, host: str = "", port: int = 0, *args: Any, **kw: Any) -> str:
        return self._greeted(self._open(host, port))


class ProxiedFTPTLS(_Proxied, ftplib.FTP_TLS):
    """FTP_TLS (AUTH TLS) whose control connection starts with C{header}."""

    def connect(self, host: str = "", port: int = 0, *args: Any, **kw: Any) -> str:
        return self._greeted(self._open(host, port))


class ProxiedImplicitFTPS(_Proxied, ftplib.FTP_TLS):
    """Implicit FTPS whose header goes in clear before the ClientHello."""

    def connect(self, host: str = "", port: int = 0, *args: Any, **kw: Any) -> str:
        plain = self._open(host, port)
        return self._greeted(self.context.wrap_socket(plain, server_hostname=host))


def proxied(cls: type, header: bytes, **kw: Any) -> Any:
    """An ftplib client of C{cls} (above) that sends C{header} first."""
    client = cls(**kw)
    client.header = header
    return client
