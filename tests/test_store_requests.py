"""
Store requests per operation, end to end (house rule 10, issue 11): real
clients (ftplib, paramiko) against a gateway on the COS test server, whose
C{/__test__/stats} counts the COS requests the gateway makes for each
command.  On COS each request is billed and costs a round trip; the
targets are a PUT and at most one check for an upload of a new file (in a
directory the session knows), one request for SIZE, MDTM, CWD and a
listing.  The same counts, and why, over a memory store:
tests/test_vfs_directories.py and tests/test_vfs.py.
"""

from __future__ import annotations

import ftplib
import io
from collections.abc import Callable
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.storage.sweeper import UploadSweeper
from tests.harness import PASSWORD, Gateway, in_thread, start_gateway

SMALL = b"x" * (16 * 1024)


def ftp_login(gw: Gateway) -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port, timeout=30)
    ftp.login("alice", PASSWORD)
    ftp.voidcmd("TYPE I")
    return ftp


class StoreRequestTests(unittest.TestCase):
    """Each client command, and the COS requests it costs."""

    maxDiff = None

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, "cos")
        [sweeper] = [s for s in self.gw.service if isinstance(s, UploadSweeper)]
        yield sweeper.last_sweep  # its LIST of uploads is not the commands'
        self.server = self.gw.inspector.server

    def counted(self, action: Callable[[], Any]) -> dict[str, int]:
        """
        The COS requests made while C{action} ran (in this thread); a
        refusal (FTP's 5xx) is counted as well.
        """
        self.server.reset_stats()
        try:
            action()
        except ftplib.error_perm:
            pass
        return {k: v for k, v in self.server.stats().items() if not k.startswith("_")}

    def ftp_counts(self, ftp: ftplib.FTP, *commands: str) -> list[dict[str, int]]:
        """Requests per command; C{STOR name} sends L{SMALL}."""

        def send(command: str) -> None:
            if command.startswith("STOR "):
                ftp.storbinary(command, io.BytesIO(SMALL))
            elif command.startswith("LIST"):
                ftp.retrlines(command, lambda _: None)
            else:
                ftp.sendcmd(command)

        return [self.counted(lambda c=c: send(c)) for c in commands]

    @defer.inlineCallbacks
    def test_ftp_uploads(self) -> Any:
        """
        A new file at the home, or in a directory the session made, went
        into or listed: one LIST and the PUT; the first upload into a
        directory the session has not seen adds one LIST, at the same time;
        an overwrite costs the same as a new file.
        """

        def run() -> list[dict[str, int]]:
            ftp = ftp_login(self.gw)
            try:
                return self.ftp_counts(
                    ftp,
                    "STOR new.bin",
                    "MKD made",
                    "STOR made/a.bin",
                    "STOR made/b.bin",
                    "STOR new.bin",
                    "STOR made/b.bin",
                    "STOR made/none/x.bin",  # 550: no such directory
                )
            finally:
                ftp.close()

        one_check = {"ListObjects": 1, "PutObject": 1}
        counts = yield in_thread(run)
        self.assertEqual(counts, [one_check] * 6 + [{"ListObjects": 2}])
        self.assertEqual(self.gw.inspector.read("made/b.bin"), SMALL)

    @defer.inlineCallbacks
    def test_ftp_commands(self) -> Any:
        """
        STOR into a directory the session has not seen (two LISTs at once),
        the next one (one), CWD, LIST, SIZE, MDTM, DELE, RMD.
        """
        self.server.reset_stats()

        def setup() -> None:
            ftp = ftp_login(self.gw)
            ftp.mkd("d")
            ftp.quit()

        yield in_thread(setup)

        def run() -> list[dict[str, int]]:
            ftp = ftp_login(self.gw)
            try:
                counts = self.ftp_counts(ftp, "STOR d/first.bin", "STOR d/second.bin")
                counts += self.ftp_counts(
                    ftp,
                    "CWD d",
                    "LIST",
                    "SIZE first.bin",
                    "MDTM first.bin",
                    "DELE first.bin",
                    "DELE second.bin",
                    "CWD /",
                    "RMD d",
                )
                return counts
            finally:
                ftp.close()

        counts = yield in_thread(run)
        self.assertEqual(
            counts,
            [
                {"ListObjects": 2, "PutObject": 1},  # STOR, d not seen yet
                {"ListObjects": 1, "PutObject": 1},  # STOR, d known
                {"ListObjects": 1},  # CWD d
                {"ListObjects": 1},  # LIST: no index of times, no GET
                {"ListObjects": 1},  # SIZE: file, directory or nothing
                {"HeadObject": 1},  # MDTM
                # DELE: its size (quota), the delete, is the directory kept?
                {"HeadObject": 1, "DeleteObject": 1, "ListObjects": 1},
                {"HeadObject": 1, "DeleteObject": 1, "ListObjects": 1},
                {},  # CWD / : the home
                {"ListObjects": 1, "DeleteObject": 1},  # RMD
            ],
        )

    @defer.inlineCallbacks
    def test_sftp_put(self) -> Any:
        """
        SFTP's upload of a new file (OPEN with CREAT|TRUNC, WRITE, CLOSE) at
        the home or in a directory the session listed: one LIST, the PUT.
        """
        self.server.reset_stats()

        def run() -> list[dict[str, int]]:
            transport = paramiko.Transport((self.gw.host, self.gw.sftp_port))
            try:
                transport.connect(username="alice", password=PASSWORD)
                sftp = paramiko.SFTPClient.from_transport(transport)
                assert sftp is not None

                def put(path: str) -> None:
                    with sftp.open(path, "wb") as f:
                        f.write(SMALL)

                counts = [self.counted(lambda: put("s.bin"))]
                counts.append(self.counted(lambda: sftp.mkdir("sd")))
                counts.append(self.counted(lambda: put("sd/a.bin")))
                counts.append(self.counted(lambda: put("sd/b.bin")))
                return counts
            finally:
                transport.close()

        one_check = {"ListObjects": 1, "PutObject": 1}
        counts = yield in_thread(run)
        self.assertEqual(counts, [one_check] * 4)
        self.assertEqual(self.gw.inspector.read("sd/b.bin"), SMALL)
