"""
End-to-end tests of the FTP control connection under abuse: a real
gateway on 127.0.0.1 (tests/harness.py), raw sockets where the attack
needs bytes no client library sends, ftplib where a real client shows the
result.  Each test also checks that another session is served meanwhile.

What the gateway holds for a connection is read from its protocol's state
(L{GatewayFTP.unread}, C{replies_full}, C{reading}) and its TCP
transport's send buffer, never inferred from wall time.  Unit tests of the
same logic are in tests/test_ftp_flow.py.
"""

from __future__ import annotations

import ftplib
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.frontends.ftp.protocol import (
    MAX_UNREAD_INPUT,
    MAX_UNSENT_REPLIES,
    GatewayFTP,
)
from cosgw.frontends.ftp.tls import generate_self_signed
from tests.harness import PASSWORD, Gateway, in_thread, start_gateway

#: Seconds a blocking client waits on a socket.
CLIENT_TIMEOUT = 20
#: A key another COS client wrote (a local directory can hold it too).
EVIL = "evil\r\n226 Transfer complete\r\nx"
SHOWN = "evil??226 Transfer complete??x"
#: Bytes the TCP transport may read in one go, beyond the unread limit.
ONE_READ = 64 * 1024


async def wait_until(condition: Any, seconds: float = 10.0) -> bool:
    """Poll C{condition} on the reactor, bounded; its last value."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        await deferLater(reactor, 0.01, lambda: None)
    return bool(condition())


def track(gw: Gateway) -> list[GatewayFTP]:
    """The control connections the gateway's FTP listener accepts."""
    factory = gw.service.ftp.listeners[0].factory
    build = factory.buildProtocol
    accepted: list[GatewayFTP] = []

    def buildProtocol(addr: Any) -> Any:
        protocol = build(addr)
        if isinstance(protocol, GatewayFTP):
            accepted.append(protocol)
        return protocol

    factory.buildProtocol = buildProtocol
    return accepted


def unsent(protocol: GatewayFTP) -> int:
    """Reply bytes waiting in the gateway's TCP send buffer."""
    tcp = protocol.transport
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def recv_line(sock: socket.socket) -> bytes:
    """One reply line, read byte by byte (nothing beyond it is consumed)."""
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            return line
        line += byte
    return line


def noop_elsewhere(gw: Gateway) -> str:
    """Another client logs in and sends NOOP: its reply."""
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect(gw.host, gw.port, timeout=CLIENT_TIMEOUT)
    try:
        ftp.login("alice", PASSWORD)
        return ftp.sendcmd("NOOP")
    finally:
        ftp.close()


def small_socket(gw: Gateway) -> socket.socket:
    """A non-blocking client socket with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect((gw.host, gw.port))
    sock.setblocking(False)
    return sock


async def served_meanwhile(gw: Gateway, protocol: GatewayFTP) -> tuple[str, int, int]:
    """
    Another user's NOOP, answered while C{protocol}'s client floods: its
    reply, and the most reply and input bytes the gateway held for the
    flooder, sampled on every reactor turn meanwhile (the kernel may take
    a little more of the flood as its buffers grow).
    """
    done = in_thread(noop_elsewhere, gw)
    most = [0, 0]
    while not done.called:
        most = [max(most[0], unsent(protocol)), max(most[1], len(protocol.unread))]
        await deferLater(reactor, 0, lambda: None)
    reply = await done
    return reply, most[0], most[1]


def make_certificate(testcase: unittest.TestCase) -> tuple[Path, Path]:
    """A self-signed certificate and key, removed after the test."""
    directory = Path(tempfile.mkdtemp(prefix="cosgw-abuse-cert-"))
    testcase.addCleanup(shutil.rmtree, directory, True)
    return generate_self_signed(directory)


async def flood(sock: socket.socket, protocol: GatewayFTP, line: bytes) -> int:
    """
    Send C{line} over and over, reading nothing, until the gateway holds
    the connection or cuts it off (bounded in time and bytes); the bytes
    sent.
    """
    chunk = line * (8192 // len(line))
    sent = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sent < 64 * 1024 * 1024:
        if protocol.replies_full and not protocol.reading:
            break
        try:
            sent += sock.send(chunk)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            await deferLater(reactor, 0.01, lambda: None)
        except ConnectionError:
            break  # cut off by the gateway
        else:
            await deferLater(reactor, 0, lambda: None)
    return sent


class ReplyFloodTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_help_flood_without_reading(self) -> Any:
        """
        An unauthenticated client sends HELP and never reads: the gateway
        stops running its commands and reading it once 64 KiB of replies
        wait; what it holds stays bounded while another user is served.
        """
        gw = yield start_gateway(self, "local")
        accepted = track(gw)
        sock = small_socket(gw)
        self.addCleanup(sock.close)
        yield defer.ensureDeferred(wait_until(lambda: accepted))
        (protocol,) = accepted
        sent = yield defer.ensureDeferred(flood(sock, protocol, b"HELP\r\n"))
        self.assertTrue(protocol.replies_full and not protocol.reading, sent)
        self.assertNotIn(protocol.transport, reactor.getReaders())
        reply, replies, unread = yield defer.ensureDeferred(
            served_meanwhile(gw, protocol)
        )
        self.assertEqual(reply, "200 NOOP ok")
        self.assertLessEqual(replies, MAX_UNSENT_REPLIES + 1024)
        self.assertLessEqual(unread, MAX_UNREAD_INPUT + ONE_READ)
        sock.close()
        closed = yield defer.ensureDeferred(
            wait_until(lambda: protocol.session.over, 10)
        )
        self.assertTrue(closed)

    @defer.inlineCallbacks
    def test_help_flood_over_tls(self) -> Any:
        """The same over explicit FTPS: the TLS layer passes the pause on."""
        cert, key = make_certificate(self)
        gw = yield start_gateway(self, "local", tls_certificate=cert, tls_key=key)
        accepted = track(gw)

        def secure() -> ssl.SSLSocket:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.settimeout(CLIENT_TIMEOUT)
            raw.connect((gw.host, gw.port))
            recv_line(raw)
            raw.sendall(b"AUTH TLS\r\n")
            recv_line(raw)
            context = ssl.create_default_context(cafile=str(cert))
            tls = context.wrap_socket(raw, server_hostname=gw.host)
            tls.setblocking(False)
            return tls

        sock = yield in_thread(secure)
        self.addCleanup(sock.close)
        (protocol,) = accepted
        yield defer.ensureDeferred(flood(sock, protocol, b"HELP\r\n"))
        self.assertTrue(protocol.replies_full and not protocol.reading)
        self.assertTrue(protocol.session.secure)
        self.assertNotIn(protocol.transport, reactor.getReaders())
        reply, replies, unread = yield defer.ensureDeferred(
            served_meanwhile(gw, protocol)
        )
        self.assertEqual(reply, "200 NOOP ok")
        # TLS adds a record header and tag to each reply.
        self.assertLessEqual(replies, MAX_UNSENT_REPLIES + 2048)
        self.assertLessEqual(unread, MAX_UNREAD_INPUT + ONE_READ)

    @defer.inlineCallbacks
    def test_flooder_cut_off_after_the_login_deadline(self) -> Any:
        """
        The login deadline closes a flooding client that never reads its
        421 either: it is cut off after the close timeout, its slot freed.
        """
        gw = yield start_gateway(self, "local", login_timeout=1)
        accepted = track(gw)
        sock = small_socket(gw)
        self.addCleanup(sock.close)
        yield defer.ensureDeferred(wait_until(lambda: accepted))
        (protocol,) = accepted
        protocol.close_timeout = 0.5
        yield defer.ensureDeferred(flood(sock, protocol, b"FEAT\r\n"))
        factory = gw.service.ftp.listeners[0].factory
        gone = yield defer.ensureDeferred(
            wait_until(lambda: factory.connections == 0, 15)
        )
        self.assertTrue(gone, "the flooding connection is still open")
        self.assertTrue(protocol.session.over)
        reply = yield in_thread(noop_elsewhere, gw)
        self.assertEqual(reply, "200 NOOP ok")


class LoginDeadlineTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_noops_do_not_keep_an_anonymous_connection(self) -> Any:
        gw = yield start_gateway(self, "local", login_timeout=1)

        def keep_alive() -> tuple[int, bytes, float, bytes]:
            sock = socket.create_connection((gw.host, gw.port), CLIENT_TIMEOUT)
            with sock:
                recv_line(sock)
                start = time.monotonic()
                answered = 0
                while time.monotonic() - start < 10:
                    sock.sendall(b"NOOP\r\n")
                    line = recv_line(sock)
                    if not line.startswith(b"200 "):
                        return answered, line, time.monotonic() - start, sock.recv(1)
                    answered += 1
                    time.sleep(0.05)  # pacing, as a keep-alive client does
                return answered, b"", 10.0, b""

        answered, line, seconds, after = yield in_thread(keep_alive)
        self.assertEqual(line, b"421 Login timeout: closing the connection\r\n")
        self.assertEqual(after, b"", "closed after the 421")
        self.assertGreater(answered, 3)
        self.assertLess(seconds, 5)
        reply = yield in_thread(noop_elsewhere, gw)
        self.assertEqual(reply, "200 NOOP ok")


class StartTLSInjectionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_commands_pipelined_after_auth_tls_are_not_run(self) -> Any:
        """
        AUTH TLS, USER and PASS in one packet in clear: after the
        handshake the session is not logged in (Postfix's answer to
        CVE-2011-0411: what came in clear is discarded).
        """
        cert, key = make_certificate(self)
        gw = yield start_gateway(self, "local", tls_certificate=cert, tls_key=key)

        def inject() -> list[bytes]:
            raw = socket.create_connection((gw.host, gw.port), CLIENT_TIMEOUT)
            recv_line(raw)
            raw.sendall(
                b"AUTH TLS\r\nUSER alice\r\nPASS " + PASSWORD.encode() + b"\r\n"
            )
            lines = [recv_line(raw)]
            context = ssl.create_default_context(cafile=str(cert))
            with context.wrap_socket(raw, server_hostname=gw.host) as tls:
                for command in (b"NOOP", b"PWD", b"QUIT"):
                    tls.sendall(command + b"\r\n")
                    lines.append(recv_line(tls))
            return lines

        lines = yield in_thread(inject)
        self.assertEqual(
            lines,
            [
                b"234 AUTH TLS successful\r\n",
                b"200 NOOP ok\r\n",
                b"530 Please login with USER and PASS\r\n",
                b"221 Goodbye\r\n",
            ],
        )
        reply = yield in_thread(noop_elsewhere, gw)
        self.assertEqual(reply, "200 NOOP ok")


class ControlCharacterNameTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_crlf_in_a_stored_name_never_makes_a_reply_line(self) -> Any:
        gw = yield start_gateway(self, "local")
        root = gw.inspector.root
        root.mkdir(parents=True, exist_ok=True)
        (root / EVIL).write_bytes(b"bad")
        (root / "plain.txt").write_bytes(b"ok")

        def client() -> dict[str, Any]:
            ftp = ftplib.FTP(encoding="utf-8")
            ftp.connect(gw.host, gw.port, timeout=CLIENT_TIMEOUT)
            seen: dict[str, Any] = {}
            try:
                ftp.login("alice", PASSWORD)
                for command in ("LIST", "NLST", "MLSD"):
                    lines: list[str] = []
                    seen[command + " end"] = ftp.retrlines(command, lines.append)
                    seen[command] = lines
                seen["STAT"] = ftp.sendcmd("STAT /").split("\n")
                seen["NOOP"] = ftp.sendcmd("NOOP")
            finally:
                ftp.close()
            return seen

        seen = yield in_thread(client)
        self.assertEqual(seen["NLST"], [SHOWN, "plain.txt"])
        for command in ("LIST", "MLSD"):
            self.assertEqual(len(seen[command]), 2, seen[command])
            self.assertTrue(seen[command][0].endswith(" " + SHOWN), seen[command])
        for command in ("LIST", "NLST", "MLSD"):
            self.assertEqual(
                seen[command + " end"], "226 Directory send OK (2 entries)"
            )
        stat = seen["STAT"]
        self.assertEqual((stat[0], stat[-1]), ("213-Status of /:", "213 End of status"))
        self.assertEqual(len(stat), 4, stat)
        self.assertTrue(stat[1].endswith(" " + SHOWN), stat)
        self.assertEqual(seen["NOOP"], "200 NOOP ok", "no reply was forged ahead")


class LongLineTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_command_after_an_over_long_line_runs_at_once(self) -> Any:
        """The PWD behind an over-long line in one packet: answered without
        the client sending anything more."""
        gw = yield start_gateway(self, "local")

        def client() -> list[bytes]:
            sock = socket.create_connection((gw.host, gw.port), CLIENT_TIMEOUT)
            with sock:
                sock.settimeout(5)
                recv_line(sock)
                sock.sendall(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n")
                lines = [recv_line(sock), recv_line(sock)]
                sock.sendall(b"NOOP " + b"A" * 20000 + b"\r\nPWD\r\n")
                lines += [recv_line(sock), recv_line(sock)]
                return lines

        lines = yield in_thread(client)
        self.assertEqual(
            lines,
            [
                b"331 Password required\r\n",
                b"230 Login successful\r\n",
                b"500 Command line too long\r\n",
                b'257 "/" is the current directory\r\n',
            ],
        )
