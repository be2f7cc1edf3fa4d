"""
SFTP clients that try to make the gateway buffer, hold or open without
limit, through real sockets against a real gateway (local store): READs
whose replies are never read (the client's SSH window closed, or its socket
not read at all), a packet declaring 100 MiB, more handles than
C{max_handles}, and a process out of file descriptors.  Memory is judged by
what the gateway's own objects hold (TCP, SSH and SFTP buffers), and every
abuse is followed by a second session that must be served, and by the
abusing session getting every reply right once it reads.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import paramiko
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from cosgw.frontends.sftp.flow import RequestGate
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, start_gateway

KiB = 1024
#: Bound on every blocking client call and every wait.
TIMEOUT = 30.0
#: The abusing session's READs: 2,000 of 32 KiB (64 MiB of replies).
READS = 2000
CHUNK = 32 * KiB
#: What the gateway may hold for one abusing session, all buffers together.
BOUND = 8 * MiB


class StallingSocket:
    """
    A client socket whose reading can be stopped: paramiko's reader thread
    then sees timeouts, the client stops reading its socket, and the
    gateway's replies pile up in the kernel and then in the gateway.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.reading = threading.Event()
        self.reading.set()

    def recv(self, n: int) -> bytes:
        if not self.reading.wait(0.1):
            raise TimeoutError()
        return self._sock.recv(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class RawSFTP:
    """SFTP spoken by hand over a paramiko channel (paramiko only for SSH)."""

    def __init__(
        self, port: int, window: Optional[int] = None, user: str = "alice"
    ) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = StallingSocket(raw)
        self.transport = paramiko.Transport(self.sock)
        self.transport.connect(username=user, password=PASSWORD)
        kwargs = {} if window is None else {"window_size": window}
        self.channel = self.transport.open_session(timeout=TIMEOUT, **kwargs)
        self.channel.settimeout(TIMEOUT)
        self.channel.invoke_subsystem("sftp")
        self.send(1, struct.pack("!L", 3))
        assert self.receive()[0] == 2  # VERSION

    def send(self, kind: int, body: bytes) -> None:
        self.channel.sendall(struct.pack("!LB", len(body) + 1, kind) + body)

    def exactly(self, n: int) -> bytes:
        pieces = []
        while n:
            block = self.channel.recv(n)
            if not block:
                raise EOFError("the server closed the channel")
            pieces.append(block)
            n -= len(block)
        return b"".join(pieces)

    def receive(self) -> tuple[int, bytes]:
        (length,) = struct.unpack("!L", self.exactly(4))
        body = self.exactly(length)
        return body[0], body[1:]

    def open(self, name: bytes) -> bytes:
        self.send(3, struct.pack("!L", 1) + NS(name) + struct.pack("!LL", 1, 0))
        kind, body = self.receive()
        assert kind == 102, (kind, body)  # HANDLE
        return getNS(body[4:])[0]

    def send_reads(self, handle: bytes, size: int) -> None:
        """READ_S requests, ids 100.., offsets cycling through the file."""
        self.channel.sendall(
            b"".join(
                struct.pack("!LBL", 4 + 1 + 4 + len(handle) + 12, 5, 100 + i)
                + NS(handle)
                + struct.pack("!QL", (i * CHUNK) % size, CHUNK)
                for i in range(READS)
            )
        )

    def read_replies(self, data: bytes) -> list[int]:
        """Read the READs' replies; the ids whose data was wrong."""
        wrong = []
        for _ in range(READS):
            kind, body = self.receive()
            (request,) = struct.unpack("!L", body[:4])
            offset = ((request - 100) * CHUNK) % len(data)
            if kind != 103 or getNS(body[4:])[0] != data[offset : offset + CHUNK]:
                wrong.append(request)
        return wrong

    def close(self) -> None:
        self.sock.reading.set()
        self.transport.close()


def gateway_buffers(gw: Any) -> dict[str, int]:
    """The bytes the gateway holds for its SSH connections, by where."""
    held = {"tcp": 0, "ssh input": 0, "sftp output": 0, "sftp input": 0}
    for ssh in gw.service.sftp.factory.connections:
        tcp = ssh.transport
        # Twisted's write buffer (abstract.FileDescriptor): no public count.
        held["tcp"] += len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
        held["ssh input"] += ssh.input_waiting
        for channel in getattr(ssh.service, "channels", {}).values():
            held["sftp output"] += channel.output_waiting
            held["sftp input"] += channel.input_held() + len(channel.buf or b"")
    return held


def window_left(gw: Any) -> int:
    """The room left in the clients' SSH windows, all channels together."""
    return sum(
        channel.remoteWindowLeft
        for ssh in gw.service.sftp.factory.connections
        for channel in getattr(ssh.service, "channels", {}).values()
    )


def sessions(gw: Any) -> Iterator[Any]:
    """The SFTP protocols of the gateway's open sessions."""
    for ssh in gw.service.sftp.factory.connections:
        for channel in getattr(ssh.service, "channels", {}).values():
            client = channel.client
            if client is not None:
                yield client.transport.proto


def second_session(port: int, name: str) -> bytes:
    """Another user's ordinary session: a stat and a download."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(username="alice", password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        sftp.get_channel().settimeout(TIMEOUT)
        sftp.stat(name)
        with sftp.open(name, "rb") as f:
            return f.read()
    finally:
        transport.close()


class AbuseTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.gw = yield start_gateway(self, "local", max_handles=3)
        self.data = random_bytes(MiB)
        self.small = random_bytes(10 * KiB)
        root = self.gw.inspector.root
        root.mkdir(parents=True, exist_ok=True)
        (root / "big.bin").write_bytes(self.data)
        (root / "small.bin").write_bytes(self.small)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    @defer.inlineCallbacks
    def poll(self, predicate: Callable[[], bool], what: str) -> Any:
        deadline = reactor.seconds() + TIMEOUT
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def unread_replies(self, window: Optional[int], stall: bool) -> Any:
        client = yield in_thread(RawSFTP, self.gw.sftp_port, window)
        self.addCleanup(client.close)
        handle = yield in_thread(client.open, b"big.bin")
        if stall:
            client.sock.reading.clear()
        yield in_thread(client.send_reads, handle, len(self.data))
        peak: dict[str, int] = {}

        def steady() -> bool:
            for where, size in gateway_buffers(self.gw).items():
                peak[where] = max(peak.get(where, 0), size)
            [p] = sessions(self.gw)
            # Without a stall the client's window is what stops the replies:
            # wait until it is full, not only the TCP buffers (1 MiB may
            # wait there first while a loaded client is slow to take it).
            closed = stall or window_left(self.gw) == 0
            return closed and p.gate.in_flight == 0 and p.input_waiting > 0

        yield self.poll(steady, "the gateway to stop taking READs")
        self.assertLess(sum(peak.values()), BOUND, peak)
        got = yield in_thread(second_session, self.gw.sftp_port, "small.bin")
        self.assertEqual(got, self.small)
        self.assertLess(sum(gateway_buffers(self.gw).values()), BOUND)
        client.sock.reading.set()
        wrong = yield in_thread(client.read_replies, self.data)
        self.assertEqual(wrong, [])
        return peak

    @defer.inlineCallbacks
    def test_unread_replies_window_closed(self) -> Any:
        """
        2,000 READs whose replies the client takes into its SSH window but
        never reads from it: once the window is full, the replies wait in
        the gateway up to its reply limit (512 KiB), the rest of the requests
        wait unread, and the connection is still read (for the client's
        window adjustments).
        """
        peak = yield self.unread_replies(window=None, stall=False)
        self.assertGreater(peak["sftp output"], 256 * KiB)

    @defer.inlineCallbacks
    def test_unread_replies_socket_not_read(self) -> Any:
        """
        2,000 READs from a client that opens a 1 GiB window and then stops
        reading its socket: once the TCP buffers are full the session stops
        taking requests and the gateway stops reading the connection.
        """
        peak = yield self.unread_replies(window=1 << 30, stall=True)
        # Nothing waits for the window; what waits for the full TCP buffers
        # is the replies of the requests taken before they filled, which
        # the session's gate bounds (its high water and one more request).
        self.assertLessEqual(peak["sftp output"], RequestGate().high_water + CHUNK)

    @defer.inlineCallbacks
    def test_oversized_packet(self) -> Any:
        """
        A WRITE declaring 100 MiB: BAD_MESSAGE for its id, a log line, and
        the connection ends at once, without waiting for (or keeping) the
        rest of the packet.
        """

        def abuse() -> tuple[Any, bool]:
            client = RawSFTP(self.gw.sftp_port)
            try:
                client.channel.sendall(struct.pack("!LBL", 100 * MiB, 6, 77))
                try:
                    client.channel.sendall(bytes(64 * KiB))
                except (EOFError, OSError):
                    pass  # the gateway already hung up, as it should
                kind, body = client.receive()
                deadline = time.monotonic() + TIMEOUT
                while client.transport.is_active() and time.monotonic() < deadline:
                    time.sleep(0.05)
                return (
                    kind,
                    struct.unpack("!LL", body[:8]),
                ), client.transport.is_active()
            finally:
                client.close()

        reply, active = yield in_thread(abuse)
        self.assertEqual(reply, (101, (77, 5)))  # STATUS, id 77, BAD_MESSAGE
        self.assertFalse(active)
        self.assertIn("SFTP packet of 104857600 bytes from alice", self.log_text())
        got = yield in_thread(second_session, self.gw.sftp_port, "small.bin")
        self.assertEqual(got, self.small)

    @defer.inlineCallbacks
    def test_max_handles(self) -> Any:
        """
        With max_handles = 3, a fourth file or directory handle fails with
        "too many open handles (max 3)"; closing one frees its place.
        """

        def client() -> list[str]:
            transport = paramiko.Transport(("127.0.0.1", self.gw.sftp_port))
            transport.connect(username="alice", password=PASSWORD)
            try:
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None
                sftp.get_channel().settimeout(TIMEOUT)
                errors = []
                a = sftp.open("a.bin", "wb")
                b = sftp.open("small.bin", "rb")
                d = sftp._request(paramiko.sftp.CMD_OPENDIR, "/")  # a directory handle
                for attempt in (
                    lambda: sftp.open("c.bin", "wb"),
                    lambda: sftp.listdir("/"),
                ):
                    try:
                        attempt()
                    except OSError as e:
                        errors.append(str(e))
                a.write(b"first")
                a.close()
                with sftp.open("c.bin", "wb") as c:
                    c.write(b"third")
                self.assertEqual(b.read(), self.small)
                b.close()
                sftp._request(paramiko.sftp.CMD_CLOSE, d[1].get_binary())
                self.assertIn("small.bin", sftp.listdir("/"))
                return errors
            finally:
                transport.close()

        errors = yield in_thread(client)
        self.assertEqual(errors, ["too many open handles (max 3)"] * 2)
        self.assertEqual(self.gw.inspector.read("a.bin"), b"first")
        self.assertEqual(self.gw.inspector.read("c.bin"), b"third")
        self.assertIn("SFTP open refused, 3 handles open (max 3)", self.log_text())

    @defer.inlineCallbacks
    def test_out_of_descriptors(self) -> Any:
        """
        Opening and reading a file needs a descriptor (the local store opens
        the file): while the process has none left, FAILURE saying so and a
        log line, no traceback; once descriptors are back, it reads.
        """
        transport = yield in_thread(
            paramiko.Transport, ("127.0.0.1", self.gw.sftp_port)
        )
        self.addCleanup(transport.close)
        yield in_thread(transport.connect, username="alice", password=PASSWORD)
        sftp = yield in_thread(paramiko.SFTPClient.from_transport, transport)
        sftp.get_channel().settimeout(TIMEOUT)

        def read() -> bytes:
            with sftp.open("small.bin", "rb") as f:
                return f.read()

        with exhausted_descriptors():
            failure = yield in_thread(attempt, read)
        self.assertEqual(failure, "the server has too many open files; try again later")
        self.assertIn("no file descriptor left", self.log_text())
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual((yield in_thread(read)), self.small)


def attempt(f: Callable[[], Any]) -> str:
    """Run C{f}; the message of the OSError it raises."""
    try:
        f()
    except OSError as e:
        return str(e)
    raise AssertionError("no error")


class exhausted_descriptors:
    """
    While inside, the process can open no file: the soft descriptor limit
    is lowered to just above the highest open descriptor and every free
    number below it is taken.
    """

    def __enter__(self) -> None:
        self.limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, self.limits[1]))
        self.taken: list[int] = []
        try:
            for _ in range(highest + 2):
                self.taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            if e.errno != errno.EMFILE:
                self.__exit__()
                raise

    def __exit__(self, *exc: Any) -> None:
        for fd in self.taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)
