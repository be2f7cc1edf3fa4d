"""
Descriptors held by FTP data connections, end to end on a real gateway
(tests/harness.py runs it in this process, so /proc/self/fd counts its
descriptors and the clients'): 400 PASV+connect on one session, in clear
and with PROT P but no TLS handshake, then QUIT, leave nothing open and the
gateway serving; running out of descriptors gets a 425 and the session
goes on.
"""

from __future__ import annotations

import errno
import ftplib
import io
import os
import re
import resource
import selectors
import socket
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.trial import unittest

from tests.harness import PASSWORD, in_thread
from tests.logevents import LogEvents
from tests.test_ftps import CLIENT_TIMEOUT, FTPSGatewayMixin, ftps, reply, secure_login

#: PASV+connect rounds in one session.
ROUNDS = 400


def open_descriptors() -> int:
    """Descriptors open in this process: the gateway's and the clients'."""
    return len(os.listdir("/proc/self/fd"))


def wait_closed(sockets: list[socket.socket], seconds: float) -> int:
    """
    Wait (bounded) until the gateway has closed each of C{sockets} (EOF or
    reset); how many it has not.
    """
    selector = selectors.DefaultSelector()
    for s in sockets:
        selector.register(s, selectors.EVENT_READ)
    left = len(sockets)
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            try:
                ended = key.fileobj.recv(1) == b""  # type: ignore[union-attr]
            except ConnectionResetError:
                ended = True
            if ended:
                selector.unregister(key.fileobj)
                left -= 1
    selector.close()
    return left


def wait_descriptors(at_most: int, seconds: float) -> int:
    """Wait (bounded) until at most C{at_most} are open; how many are."""
    deadline = time.monotonic() + seconds
    while open_descriptors() > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
    return open_descriptors()


class DescriptorTests(FTPSGatewayMixin, unittest.TestCase):
    def setUp(self) -> Any:
        d = self.start("local")
        d.addCallback(lambda _: in_thread(self.warm_up))
        return d

    def login(self, protect: bool) -> ftplib.FTP:
        if protect:
            ftp = ftps(self.gw, self.cert)
            secure_login(ftp)
            return ftp
        ftp = ftplib.FTP(timeout=CLIENT_TIMEOUT)
        ftp.connect(self.gw.host, self.gw.port)
        ftp.login("alice", PASSWORD)
        return ftp

    def warm_up(self) -> None:
        """A first session of each kind: what the gateway opens once is open."""
        for protect in (False, True):
            ftp = self.login(protect)
            ftp.storbinary("STOR kept.txt", io.BytesIO(b"kept\n"))
            ftp.nlst()
            ftp.quit()

    def flood(self, protect: bool) -> dict[str, Any]:
        """
        ROUNDS x (EPSV, connect and leave the connection open, with no TLS
        handshake), NLST, QUIT; then which of its connections the gateway
        closed, and the descriptors before and after.  Blocking.
        """
        baseline = open_descriptors()
        ftp = self.login(protect)
        sockets = []
        try:
            for _ in range(ROUNDS):
                answer = ftp.sendcmd("EPSV")
                match = re.search(r"\(\|\|\|(\d+)\|\)", answer)
                assert match is not None, answer
                address = (self.gw.host, int(match.group(1)))
                sockets.append(socket.create_connection(address, CLIENT_TIMEOUT))
            r: dict[str, Any] = {"busiest": open_descriptors() - baseline}
            r["nlst"] = ftp.nlst()
            r["quit"] = ftp.quit()
            r["left_open"] = wait_closed(sockets, 20)
        finally:
            for s in sockets:
                s.close()
        r["after"] = wait_descriptors(baseline, 10) - baseline
        again = self.login(protect)
        r["next"] = again.nlst()
        again.quit()
        return r

    @defer.inlineCallbacks
    def check_flood(self, protect: bool) -> Any:
        r = yield in_thread(self.flood, protect)
        self.assertEqual(r["nlst"], ["kept.txt"])
        self.assertTrue(r["quit"].startswith("221"), r["quit"])
        self.assertEqual(r["left_open"], 0, "data connections the gateway left open")
        self.assertLessEqual(r["after"], 0, "descriptors left open after QUIT")
        self.assertEqual(r["next"], ["kept.txt"])
        # The clients' 400 sockets, their control connection, and at most
        # the gateway's few (its one unused connection, a listener).
        self.assertLess(r["busiest"], ROUNDS + 10)
        count = self.gw.service.ftp.data_connections
        self.assertEqual(count.open, 0)
        self.assertLessEqual(count.peak, 2)

    def test_pasv_flood_clear(self) -> Any:
        return self.check_flood(protect=False)

    def test_pasv_flood_prot_p_without_handshake(self) -> Any:
        return self.check_flood(protect=True)

    @defer.inlineCallbacks
    def test_refused_transfer_closes_the_connection(self) -> Any:
        """
        EPSV under PROT P, a connection with no handshake, then PROT C and
        LIST: 425 (the listener spoke the old level), and the connection is
        closed, not left behind.
        """

        def run() -> dict[str, Any]:
            ftp = self.login(protect=True)
            answer = ftp.sendcmd("EPSV")
            match = re.search(r"\(\|\|\|(\d+)\|\)", answer)
            assert match is not None, answer
            address = (self.gw.host, int(match.group(1)))
            with socket.create_connection(address, CLIENT_TIMEOUT) as s:
                r = {"prot": reply(ftp, "PROT C"), "list": reply(ftp, "LIST")}
                r["left_open"] = wait_closed([s], 10)
            r["noop"] = reply(ftp, "NOOP")
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["prot"].startswith("200"), r["prot"])
        self.assertEqual(r["list"], "425 PROT changed after PASV; send PASV again")
        self.assertEqual(r["left_open"], 0)
        self.assertTrue(r["noop"].startswith("200"), r["noop"])
        self.assertEqual(self.gw.service.ftp.data_connections.open, 0)

    @defer.inlineCallbacks
    def test_out_of_descriptors(self) -> Any:
        """
        With every descriptor taken, EPSV gets a 425 (and a log line), NOOP
        works; once descriptors are free again, so does a listing.
        """
        logs = LogEvents(self, "cosgw.frontends.ftp")

        def run() -> dict[str, Any]:
            ftp = self.login(protect=False)
            r: dict[str, Any] = {}
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            fillers: list[int] = []
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 32, hard))
            try:
                for _ in range(highest + 32):
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as e:
                r["filled"] = e.errno
                r["epsv"] = reply(ftp, "EPSV")
                r["noop"] = reply(ftp, "NOOP")
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            r["nlst"] = ftp.nlst()
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["filled"], errno.EMFILE)
        self.assertEqual(
            r["epsv"], "425 Can't open passive connection: server busy, try later"
        )
        self.assertTrue(r["noop"].startswith("200"), r["noop"])
        self.assertEqual(r["nlst"], ["kept.txt"])
        errors = [e["log_format"] for e in logs.at(LogLevel.error)]
        self.assertEqual(
            errors, ["no passive port for {peer}: out of file descriptors"]
        )
