"""
The download buffer budget through a real gateway: concurrent ftplib RETRs
and paramiko gets over a budget of one chunk (64 KiB chunks) all arrive
whole, none waits for another to end, and what they read ahead of their
clients together never passed the budget: what each needs to go on, its
next chunk or the bytes its reads wait for, is read without it (the SFTP
reads charge theirs, at most the session's promised bytes and a chunk
more each; the unit tests in test_download_budget measure that too).
What the budget saw is read in process, never from wall-clock thresholds.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.frontends.sftp.flow import RequestGate
from cosgw.frontends.sftp.handles import MAX_READ
from cosgw.transfer import DownloadBuffers
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, start_gateway
from tests.test_ftp import connect

KiB = 1024
CHUNK = 64 * KiB
BUDGET = 64 * KiB
DEADLINE = 60.0


def ftp_get(gw: Any, name: str, got: dict[str, str], start: threading.Barrier) -> None:
    """Log in, wait for the others, download C{name}: its SHA-256 in C{got}."""
    digest = hashlib.sha256()
    try:
        ftp = connect(gw)
        start.wait(DEADLINE)
        try:
            ftp.retrbinary(f"RETR {name}", digest.update, blocksize=32 * KiB)
            got[name] = digest.hexdigest()
        finally:
            ftp.close()
    except (OSError, EOFError, threading.BrokenBarrierError) as e:
        got[name] = repr(e)


def sftp_get(gw: Any, name: str, got: dict[str, str], start: threading.Barrier) -> None:
    """As L{ftp_get}, with paramiko's get (every read sent at once)."""
    digest = hashlib.sha256()
    transport = paramiko.Transport((gw.host, gw.sftp_port))
    try:
        transport.connect(username="alice", password=PASSWORD)
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        client.get_channel().settimeout(DEADLINE)
        start.wait(DEADLINE)
        client.getfo(name, _Sink(digest))
        got[name] = digest.hexdigest()
    except (OSError, paramiko.SSHException, threading.BrokenBarrierError) as e:
        got[name] = repr(e)
    finally:
        transport.close()


class _Sink:
    """A file object that hashes what is written to it."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


class DownloadBudgetGatewayTests(unittest.TestCase):
    timeout = DEADLINE + 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self,
            "local",
            transfer_overrides={
                "read_chunk": CHUNK,
                "download_buffer_budget": BUDGET,
            },
        )
        buffers = self.gw.service.accounts.settings.download_buffers
        assert isinstance(buffers, DownloadBuffers)
        self.buffers = buffers
        self.files = {f"f{i}.bin": random_bytes(3 * MiB + i) for i in range(6)}
        for name, data in self.files.items():
            yield self.gw.store.put(name, data)

    def run_all(self, getters: dict[str, Any]) -> dict[str, str]:
        got: dict[str, str] = {}
        start = threading.Barrier(len(getters))
        threads = [
            threading.Thread(target=get, args=(self.gw, name, got, start), daemon=True)
            for name, get in getters.items()
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DEADLINE
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return got

    @defer.inlineCallbacks
    def test_streams_and_reads_at_offsets_share_it(self) -> Any:
        names = sorted(self.files)
        getters = {n: ftp_get for n in names[:4]} | {n: sftp_get for n in names[4:]}
        got = yield in_thread(self.run_all, getters)
        self.assertEqual(
            got, {n: hashlib.sha256(self.files[n]).hexdigest() for n in getters}
        )
        needed = RequestGate().high_water + MAX_READ + 2 * CHUNK
        self.assertLessEqual(self.buffers.peak, BUDGET + 2 * needed)
        self.assertEqual((self.buffers.used, self.buffers.waiting), (0, 0))
