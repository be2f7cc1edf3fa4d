"""
Tests for L{cosgw.frontends.listener}: a gateway out of file descriptors
answers new clients with a clean refusal (FTP C{421}, an SSH DISCONNECT),
logs it at a bounded rate, never spins, and serves again once descriptors
are free.

The end-to-end test runs the real gateway (C{twistd cosftp}) in a child
process whose descriptor limit is lowered (C{RLIMIT_NOFILE} set in
C{preexec_fn}), connects until the limit is reached, and talks to it with
real sockets, OpenSSH's C{ssh}, ftplib and paramiko; it is stopped by its
PID.
"""

from __future__ import annotations

import ftplib
import io
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest

from cosgw.frontends.listener import FTP_REFUSAL, ReservingPort, ssh_refusal
from tests.harness import host_keys
from tests.logevents import LogEvents

ROOT = Path(__file__).resolve().parent.parent
#: The child's descriptor limit: about 15 are open when it is idle.
LIMIT = 40
TIMEOUT = 10
PASSWORD = "descriptors-pw"


def _poll(predicate: Callable[[], Any], bound: float, what: str) -> Any:
    """C{predicate()}'s first true value within C{bound} seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {bound} s: {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    """The gateway in a child process with at most C{limit} descriptors."""

    def __init__(self, testcase: unittest.TestCase, limit: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cosgw-nofile-"))
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        (self.dir / "data").mkdir()
        (self.dir / "data" / "hello.txt").write_bytes(b"hello")
        self.ftp_port, self.sftp_port = _free_port(), _free_port()
        keys = "\n    ".join(str(k) for k in host_keys())
        config = self.dir / "cosgw.ini"
        config.write_text(
            f"[server]\nstate_dir = {self.dir}/state\n"
            f"ftp_listen = tcp:{self.ftp_port}:interface=127.0.0.1\n"
            f"sftp_listen = tcp:{self.sftp_port}:interface=127.0.0.1\n"
            f"ssh_host_keys =\n    {keys}\n"
            "passive_ports = 62000-62999\nmax_connections_per_ip = 0\n"
            "login_failure_delay = 0\nlogin_max_failures = 0\nadmin_listen =\n"
            f"[storage:s]\ntype = local\npath = {self.dir}/data\n"
            f"[user:bob]\npassword = {PASSWORD}\nstorage = s\npermissions = all\n"
        )
        self.log = self.dir / "twistd.log"
        out = open(self.log, "wb")  # noqa: SIM115
        testcase.addCleanup(out.close)

        def lower_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "--logfile=-", "cosftp", "--config", config],
            cwd=self.dir,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lower_limit,
        )
        testcase.addCleanup(self.stop)
        _poll(self.serves_ftp, 30, "the gateway's FTP banner")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)

    def connect(self, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    def serves_ftp(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")
        try:
            with self.connect(self.ftp_port) as s:
                return s.recv(100).startswith(b"220 ")
        except OSError:
            return False

    def cpu_ticks(self) -> int:
        """User plus system time the child has used, in clock ticks."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return int(utime) + int(stime)

    def log_lines(self, text: str) -> list[str]:
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if text in line
        ]


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


class OutOfDescriptorsTests(unittest.SynchronousTestCase):
    """The whole gateway, run with a descriptor limit of L{LIMIT}."""

    def test_refuses_cleanly_then_serves_again(self) -> None:
        """
        Connections beyond the limit get C{421 Too many open files, try
        again later} (FTP) and an SSH DISCONNECT that OpenSSH shows; the
        gateway does not spin while out of descriptors, logs one warning
        for many refusals, and serves FTP and SFTP logins once the clients
        have gone.
        """
        child = _Child(self, LIMIT)
        held: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in held])
        refusal = b""
        for _ in range(LIMIT + 10):
            s = child.connect(child.ftp_port)
            held.append(s)
            first = s.recv(200)
            if not first.startswith(b"220 "):
                refusal = first + _read_until_closed(s)
                held.pop().close()  # the gateway waits for this close
                break
        self.assertEqual(refusal, FTP_REFUSAL)
        self.assertEqual(refusal, b"421 Too many open files, try again later\r\n")

        # OpenSSH says why it was refused.
        ssh = subprocess.run(
            ["ssh", "-p", str(child.sftp_port), "-o", "BatchMode=yes"]
            + ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
            + ["-o", f"ConnectTimeout={TIMEOUT}", "bob@127.0.0.1", "true"],
            capture_output=True,
            timeout=TIMEOUT * 2,
        )
        self.assertNotEqual(ssh.returncode, 0)
        self.assertIn(
            b"12: too many open files, try again later", ssh.stderr, ssh.stderr
        )

        # While out of descriptors, more clients cost next to no CPU.
        before = child.cpu_ticks()
        started = time.monotonic()
        for _ in range(5):
            with child.connect(child.ftp_port) as s:
                self.assertEqual(_read_until_closed(s), FTP_REFUSAL)
        time.sleep(1.0)  # measuring idle CPU, not waiting for an event
        spent = (child.cpu_ticks() - before) / os.sysconf("SC_CLK_TCK")
        self.assertLess(spent, 0.5 * (time.monotonic() - started))
        # One warning per listener so far, however many were refused.
        for port in (child.ftp_port, child.sftp_port):
            lines = child.log_lines(f"connections on port {port} ")
            self.assertEqual(len(lines), 1, lines)

        for s in held:
            s.close()
        held.clear()
        _poll(child.serves_ftp, 15, "FTP again after the clients left")
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", child.ftp_port, timeout=TIMEOUT)
        ftp.login("bob", PASSWORD)
        out = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", out.write)
        ftp.quit()
        self.assertEqual(out.getvalue(), b"hello")
        transport = paramiko.Transport(("127.0.0.1", child.sftp_port))
        try:
            transport.connect(username="bob", password=PASSWORD)
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            self.assertEqual(sftp.listdir("."), ["hello.txt"])
        finally:
            transport.close()


class RefusalTests(unittest.SynchronousTestCase):
    def test_ssh_refusal_is_a_valid_packet(self) -> None:
        """
        The version line, then an unencrypted binary packet (RFC 4253
        section 6: length, padding length >= 4, total a multiple of 8)
        holding DISCONNECT, reason 12, the description and no language.
        """
        data = ssh_refusal(b"SSH-2.0-cosgw", b"too many open files")
        line, _, packet = data.partition(b"\r\n")
        self.assertEqual(line, b"SSH-2.0-cosgw")
        length, padding = struct.unpack(">LB", packet[:5])
        self.assertEqual(len(packet), 4 + length)
        self.assertEqual(len(packet) % 8, 0)
        self.assertGreaterEqual(padding, 4)
        payload = packet[5 : 4 + length - padding]
        message, reason, size = struct.unpack(">BLL", payload[:9])
        self.assertEqual((message, reason), (1, 12))
        self.assertEqual(payload[9 : 9 + size], b"too many open files")
        self.assertEqual(payload[9 + size :], b"\0\0\0\0")


def _emfile() -> tuple[socket.socket, Any]:
    raise OSError(24, "Too many open files")


class PortTests(unittest.SynchronousTestCase):
    """L{ReservingPort} on a real socket, with a memory reactor's clock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.port = ReservingPort(
            0, Factory.forProtocol(Protocol), 5, "127.0.0.1", self.reactor, b"no\r\n"
        )
        self.port.startListening()
        self.addCleanup(self.port.connectionLost, Failure(ConnectionDone()))
        self.events = LogEvents(self, "cosgw.service")

    def test_no_spare_pauses_instead_of_spinning(self) -> None:
        """
        Out of descriptors with no spare to give up, the port stops
        reading for a moment and tries again, logging it once.
        """
        self.port._reserve.give_up()
        self.port._exhausted(_emfile)
        self.assertNotIn(self.port, self.reactor.getReaders())
        self.reactor.advance(0.25)
        self.assertIn(self.port, self.reactor.getReaders())
        (warning,) = self.events.at(LogLevel.warn)
        self.assertEqual(warning["refused"], 0)
        self.assertIn("paused", warning["paused"])

    def refuse_one(self) -> socket.socket:
        """A client connects while the port is out of descriptors."""
        client = socket.create_connection(self.port.socket.getsockname(), timeout=5)
        self.addCleanup(client.close)
        listening = self.port.socket
        self.port._exhausted(lambda: socket.socket.accept(listening))
        return client

    def test_refused_client_lingers_until_it_closes(self) -> None:
        """
        A waiting client is accepted with the spare's number, sent the
        refusal and our side closed; the port stops reading until the
        client has closed too (what it sent meanwhile is discarded), then
        takes the spare again and reads on.
        """
        client = self.refuse_one()
        self.assertEqual(_read_until_closed(client), b"no\r\n")
        self.assertNotIn(self.port, self.reactor.getReaders())
        lingering = self.port._lingering
        assert lingering is not None
        self.assertIn(lingering, self.reactor.getReaders())
        client.sendall(b"SSH-2.0-client\r\n" + b"x" * 10_000)
        client.close()
        _poll(lambda: lingering.doRead() or self.port._lingering is None, 5, "EOF")
        self.assertNotIn(lingering, self.reactor.getReaders())
        self.assertIn(self.port, self.reactor.getReaders())
        self.assertEqual(self.port.refused, 1)
        self.assertTrue(self.port._reserve.give_up())  # the spare is held

    def test_lingering_ends_at_the_deadline(self) -> None:
        """A refused client that never closes is closed after 2 seconds."""
        self.refuse_one()
        self.reactor.advance(2.0 - 2**-10)
        self.assertIsNotNone(self.port._lingering)
        self.reactor.advance(2**-10)
        self.assertIsNone(self.port._lingering)
        self.assertIn(self.port, self.reactor.getReaders())

    def test_warnings_are_rate_limited(self) -> None:
        """One warning per 10 seconds, with the count of refusals."""
        for _ in range(5):
            self.port._count(1, False)
        self.reactor.advance(5)
        self.port._count(2, False)
        self.assertEqual([e["refused"] for e in self.events.at(LogLevel.warn)], [1])
        self.reactor.advance(5)
        self.assertEqual([e["refused"] for e in self.events.at(LogLevel.warn)], [1, 6])
        self.reactor.advance(60)
        self.assertEqual(len(self.events.at(LogLevel.warn)), 2)
