"""
An upload's end of file, and a killed client (cosgw/frontends/ftp/transfers.py
C{_client_left}): a client killed mid-upload closes both connections, and
its data connection's end looks like an end of file.  What is committed at
once, what waits, and what is never made visible, through real sockets on
127.0.0.1 (ftplib, a real killed process), plus the kernel's view of a
connection (C{control_closed}) over a real loopback pair.
"""

from __future__ import annotations

import ftplib
import io
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.frontends.ftp.protocol import GatewayFTP
from cosgw.frontends.ftp.transfers import control_closed
from tests.harness import PASSWORD, Gateway, in_thread, random_bytes, start_gateway

#: A grace no test waits for: an upload that waits for it fails its test.
NEVER = 60.0

#: The client of the killed-process tests: logs in, starts a STOR, sends
#: 64 KiB, is quiet for a while, then kills itself (SIGKILL: the kernel
#: closes its sockets).  With "data-low", the data socket gets the lower
#: descriptor (a process's descriptors are closed last first at exit).
KILLED_CLIENT = r"""
import ftplib, os, signal, sys, time
port, password, name, order = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
spare = os.open(os.devnull, os.O_RDONLY)
ftp = ftplib.FTP()
ftp.connect("127.0.0.1", port, timeout=20)
ftp.login("alice", password)
ftp.voidcmd("TYPE I")
if order == "data-low":
    os.close(spare)
conn = ftp.transfercmd("STOR " + name)
conn.sendall(b"k" * 65536)
time.sleep(0.1)
os.kill(os.getpid(), signal.SIGKILL)
"""


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 15) -> Any:
    """Poll C{predicate} on the reactor until true, or fail after C{seconds}."""

    @defer.inlineCallbacks
    def poll() -> Any:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


class _Handle:
    """A transport as far as L{control_closed} looks: C{getHandle}."""

    def __init__(self, handle: Any, below: Any = None) -> None:
        self.handle = handle
        self.transport = below

    def getHandle(self) -> Any:
        if self.handle is None:
            raise AttributeError("socket")  # as tcp.Server once lost
        return self.handle


class ControlClosedTests(unittest.SynchronousTestCase):
    """The kernel's view of a connection, over a real loopback pair."""

    def setUp(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.client = socket.create_connection(listener.getsockname())
        self.addCleanup(self.client.close)
        self.server, _ = listener.accept()
        self.addCleanup(self.server.close)

    def closed_within(self, transport: Any, seconds: float = 5) -> bool:
        deadline = time.monotonic() + seconds
        while not control_closed(transport) and time.monotonic() < deadline:
            time.sleep(0.001)
        return bool(control_closed(transport))

    def test_established(self) -> None:
        self.assertIs(control_closed(_Handle(self.server)), False)

    def test_peer_fin_unread(self) -> None:
        """The peer's FIN, unread by anyone: closed, data pending or not."""
        self.client.sendall(b"QUIT\r\n")
        self.client.close()
        self.assertTrue(self.closed_within(_Handle(self.server)))

    def test_peer_reset(self) -> None:
        self.client.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.client.close()
        self.assertTrue(self.closed_within(_Handle(self.server)))

    def test_under_tls(self) -> None:
        """A TLS layer's handle is no socket: the transport below it is asked."""
        tls = _Handle(object(), below=_Handle(self.server))
        self.assertIs(control_closed(tls), False)
        self.client.close()
        self.assertTrue(self.closed_within(tls))

    def test_lost(self) -> None:
        """A TCP transport whose connection is lost has dropped its socket."""
        self.assertIs(control_closed(_Handle(None)), True)

    def test_cannot_tell(self) -> None:
        """No socket (a test transport): the caller waits its grace instead."""
        self.assertIsNone(control_closed(object()))
        self.assertIsNone(control_closed(_Handle(object())))


class EndOfFileTests(unittest.TestCase):
    """Uploads ending cleanly, with the client alive or killed."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw: Gateway = yield start_gateway(self, "local")
        self.factory = self.gw.service.ftp.listeners[0].factory
        self.protocols: list[GatewayFTP] = []
        build = self.factory.buildProtocol

        def capture(addr: Any) -> Any:
            p = build(addr)
            if isinstance(p, GatewayFTP):
                self.protocols.append(p)
            return p

        self.factory.buildProtocol = capture

    def login(self) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect(self.gw.host, self.gw.port, timeout=20)
        ftp.login("alice", PASSWORD)
        ftp.voidcmd("TYPE I")
        return ftp

    def transfers_done(self) -> bool:
        return all(p.transfer is None for p in self.protocols)

    @defer.inlineCallbacks
    def test_finished_upload_waits_no_grace(self) -> Any:
        """
        A client that closes its data connection after its last bytes and
        waits for the reply gets its 226 at once, without the grace of an
        end in doubt: with a grace of a minute, 20 uploads would take 20
        minutes.
        """
        self.factory.eof_grace = NEVER
        self.factory.eof_quiet = 1.0  # a loaded machine is never this slow
        data = random_bytes(16 * 1024)

        def run() -> list[str]:
            ftp = self.login()
            try:
                return [
                    ftp.storbinary(f"STOR f{i}.bin", io.BytesIO(data))
                    for i in range(20)
                ]
            finally:
                ftp.close()

        replies = yield in_thread(run)
        self.assertEqual(replies, ["226 Transfer complete"] * 20)
        self.assertEqual(self.gw.inspector.read("f19.bin"), data)

    @defer.inlineCallbacks
    def test_control_end_in_the_kernel_commits_nothing(self) -> Any:
        """
        The control connection's end is in the kernel, not yet read by the
        reactor (its reading is paused here), when the data connection
        ends right after its last bytes: the upload is not committed, and
        nothing is waited for.
        """
        self.factory.eof_grace = NEVER
        self.factory.eof_quiet = 1.0

        def start() -> tuple[ftplib.FTP, socket.socket]:
            ftp = self.login()
            conn = ftp.transfercmd("STOR cut.bin")
            conn.sendall(b"partial" * 1000)
            return ftp, conn

        ftp, conn = yield in_thread(start)
        yield wait_for(
            lambda: any(p.transfer is not None for p in self.protocols),
            "the transfer",
        )
        [control] = [p for p in self.protocols if p.transfer is not None]
        control.transport.stopReading()

        def kill() -> None:
            ftp.close()  # the control connection's FIN first
            conn.close()

        yield in_thread(kill)
        yield wait_for(self.transfers_done, "the upload to end")
        self.assertNotIn("cut.bin", self.gw.inspector.keys())
        control.transport.startReading()  # let the reactor see the end
        yield wait_for(lambda: control.transport.disconnected, "the close")

    def run_killed_client(self, name: str, order: str) -> Any:
        return in_thread(
            subprocess.run,
            [sys.executable, "-c", KILLED_CLIENT, str(self.gw.port), PASSWORD]
            + [name, order],
            timeout=60,
            capture_output=True,
        )

    @defer.inlineCallbacks
    def test_killed_client_commits_nothing(self) -> Any:
        """
        A client killed while quiet, whichever of its sockets closes first:
        its 64 KiB are never made visible (the end is in doubt, so the
        grace is waited for and the kernel asked again).
        """
        self.factory.eof_grace = 0.5  # well past the dying client's last close
        for order in ("control-low", "data-low"):
            name = f"killed-{order}.bin"
            done = yield self.run_killed_client(name, order)
            self.assertEqual(done.returncode, -signal.SIGKILL, done.stderr)
            yield wait_for(self.transfers_done, "the upload to end")
            self.assertNotIn(name, self.gw.inspector.keys())
        self.assertEqual(self.gw.inspector.pending_uploads(), [])
