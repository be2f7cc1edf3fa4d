"""
The upload buffer budget through a real gateway: concurrent ftplib and
paramiko uploads share a budget far smaller than their parts would need,
all arrive whole, none fails, and another session's control channel keeps
answering while uploads wait their turn.  What the budget did is read in
process (its peak and how many claims waited), never from wall-clock
thresholds.
"""

from __future__ import annotations

import ftplib
import io
import threading
import time
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.transfer import UploadBuffers
from cosgw.transfer.buffers import UNCLAIMED
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256, start_gateway
from tests.test_ftp import connect

#: What one read of a data connection may bring (frontends/ftp/data.py).
READ = MiB
BUDGET = 4 * MiB
DEADLINE = 120.0


def ftp_upload(
    gw: Any, name: str, data: bytes, replies: dict[str, str], start: threading.Barrier
) -> None:
    """Log in, wait for the others to have logged in, then upload."""
    try:
        ftp = connect(gw)
        start.wait(DEADLINE)
        try:
            replies[name] = ftp.storbinary(
                f"STOR {name}", io.BytesIO(data), blocksize=256 * 1024
            )
        finally:
            ftp.close()
    except (ftplib.Error, OSError, threading.BrokenBarrierError) as e:
        replies[name] = str(e)


def sftp_upload(
    gw: Any, name: str, data: bytes, replies: dict[str, str], start: threading.Barrier
) -> None:
    """As L{ftp_upload}, over SFTP."""
    transport = paramiko.Transport((gw.host, gw.sftp_port))
    try:
        transport.connect(username="alice", password=PASSWORD)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.get_channel().settimeout(DEADLINE)
        start.wait(DEADLINE)
        client.putfo(io.BytesIO(data), name, confirm=False)
        replies[name] = "ok"
    except (OSError, paramiko.SSHException, threading.BrokenBarrierError) as e:
        replies[name] = repr(e)
    finally:
        transport.close()


class UploadBudgetGatewayTests(unittest.TestCase):
    timeout = DEADLINE + 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "local",
            part_size=MiB,
            parts_in_flight=2,
            transfer_overrides={"upload_buffer_budget": BUDGET},
        )
        buffers = self.gw.service.accounts.settings.buffers
        assert isinstance(buffers, UploadBuffers)
        self.buffers = buffers

    def probe_while(self, uploads: list[threading.Thread]) -> list[tuple[str, int]]:
        """
        Start C{uploads}, and send NOOPs on a session of its own, back to
        back, until they end: each reply with the number of claims waiting
        when it came.
        """
        probe = connect(self.gw)
        answers: list[tuple[str, int]] = []
        deadline = time.monotonic() + DEADLINE
        for t in uploads:
            t.start()
        try:
            while any(t.is_alive() for t in uploads):
                if time.monotonic() > deadline:
                    raise AssertionError("uploads did not end in time")
                reply = probe.voidcmd("NOOP")
                answers.append((reply, self.buffers.waiting))
            probe.quit()
        finally:
            probe.close()
        for t in uploads:
            t.join()
        return answers

    @defer.inlineCallbacks
    def test_ftp_uploads_share_a_small_budget(self) -> Any:
        """
        Eight 8 MiB uploads over a 4 MiB budget (parts of 1 MiB, two in
        flight each: 24 MiB without it): every upload gets 226 and its
        bytes; the budget's peak stays within it plus what each upload
        holds before its first claim; claims waited their turn, and the
        probe session's NOOPs were answered while they did.
        """
        files = {f"f{i}.bin": random_bytes(8 * MiB) for i in range(8)}
        replies: dict[str, str] = {}

        def run() -> list[tuple[str, int]]:
            start = threading.Barrier(len(files))
            uploads = [
                threading.Thread(
                    target=ftp_upload, args=(self.gw, n, d, replies, start)
                )
                for n, d in files.items()
            ]
            return self.probe_while(uploads)

        answers = yield in_thread(run)
        self.assertEqual(replies, {n: "226 Transfer complete" for n in files})
        for name, data in files.items():
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(data))
        self.assertGreater(self.buffers.waited, 0)
        self.assertTrue(all(reply.startswith("200") for reply, _ in answers))
        self.assertTrue(
            any(waiting for _, waiting in answers),
            "no NOOP was answered while an upload waited for the budget",
        )
        self.assertGreater(self.buffers.peak, BUDGET - MiB)
        self.assertLessEqual(self.buffers.peak, BUDGET + 8 * (UNCLAIMED + READ))
        self.assertEqual((self.buffers.used, self.buffers.waiting), (0, 0))

    @defer.inlineCallbacks
    def test_sftp_and_ftp_share_it(self) -> Any:
        """
        SFTP files (writes at offsets, acknowledgements held while their
        upload waits) and FTP streams wait in the same turns: all whole.
        """
        files = {f"s{i}.bin": random_bytes(6 * MiB) for i in range(3)}
        streams = {f"f{i}.bin": random_bytes(6 * MiB) for i in range(3)}
        replies: dict[str, str] = {}

        def run() -> list[tuple[str, int]]:
            start = threading.Barrier(len(files) + len(streams))
            uploads = [
                threading.Thread(
                    target=sftp_upload, args=(self.gw, n, d, replies, start)
                )
                for n, d in files.items()
            ] + [
                threading.Thread(
                    target=ftp_upload, args=(self.gw, n, d, replies, start)
                )
                for n, d in streams.items()
            ]
            return self.probe_while(uploads)

        yield in_thread(run)
        self.assertEqual(
            replies,
            {
                **{n: "ok" for n in files},
                **{n: "226 Transfer complete" for n in streams},
            },
        )
        for name, data in {**files, **streams}.items():
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(data))
        self.assertGreater(self.buffers.waited, 0)
        self.assertEqual((self.buffers.used, self.buffers.waiting), (0, 0))
