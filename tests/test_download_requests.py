"""
One GET per download, whatever the client: whole-file downloads through
real clients (paramiko's get(), OpenSSH's sftp, rclone, lftp and curl over
SFTP; ftplib's RETR, with and without REST) against a gateway on the COS
test store, counting the store's requests (C{GET /__test__/stats}): the
GET, and a HEAD and a LIST for a client's STAT before it (L{STAT_AND_GET}).
Each file is checked byte for byte.  A batch of gets in one directory: a
HEAD and a GET each, and one LIST of the directory's markers of times for
them all (L{cosgw.vfs.timecache}).

paramiko's get() sends a READ for every block of the file at once, OpenSSH
keeps 64 in flight: the reads ahead of the stream must wait for it, never
move it (each move used to strand the reads it passed into GETs of their
own, about 390 for a 64 MiB file).  Random reads, and a file replaced
between two streams of one handle, go on working as before.
"""

from __future__ import annotations

import dataclasses
import ftplib
import random
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.vfs import timecache
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256
from tests.test_sftp_clients import ClientTestsBase, lftp_sftp, run

KiB = 1024
#: A client that STATs the file before opening it (paramiko, OpenSSH,
#: rclone): the STAT's HEAD and the LIST of the markers of times clients
#: set in its directory (the time is the file's), then the GET; the STATs
#: after it (OpenSSH's second, rclone's after the open) are answered by
#: what the session saw.  lftp and curl open at once: the GET alone (curl
#: stats after it: that stat asks the markers' LIST alone).
STAT_AND_GET = {"HeadObject": 1, "ListObjects": 1, "GetObject": 1}
#: Three read windows and an odd tail.
SIZE = 24 * MiB + 12345


def paramiko_client(port: int) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    transport = paramiko.Transport(("127.0.0.1", port))
    transport.connect(username="alice", password=PASSWORD)
    client = paramiko.SFTPClient.from_transport(transport)
    assert client is not None
    return transport, client


def paramiko_get(port: int, local: Path) -> None:
    transport, client = paramiko_client(port)
    try:
        client.get("big.bin", str(local))
    finally:
        transport.close()


class DownloadRequestTests(ClientTestsBase, unittest.TestCase):
    kind = "cos"
    timeout = 120

    @defer.inlineCallbacks
    def upload(self, data: bytes) -> Any:
        """A gateway whose store holds C{data} as big.bin, stats zeroed."""
        gw = yield self.start()
        server = gw.inspector.server
        cos = server.cos_client()
        yield in_thread(
            cos.put_object, Bucket=gw.inspector.bucket, Key="big.bin", Body=data
        )
        server.reset_stats()
        self.fetched = self.work / "fetched.bin"
        return gw

    def gets(self, gw: Any) -> int:
        return int(gw.inspector.server.stats().get("GetObject", 0))

    def requests(self, gw: Any) -> dict[str, int]:
        """Every COS request since the upload (not the adapter's own counters)."""
        stats = gw.inspector.server.stats()
        return {k: v for k, v in stats.items() if not k.startswith("_")}

    def assertFetched(self, data: bytes) -> None:
        self.assertEqual(sha256(self.fetched.read_bytes()), sha256(data))

    # -- SFTP ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_paramiko_get(self) -> Any:
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        yield in_thread(paramiko_get, gw.sftp_port, self.fetched)
        self.assertFetched(data)
        self.assertEqual(self.requests(gw), STAT_AND_GET)

    @defer.inlineCallbacks
    def test_paramiko_get_with_reads_past_the_window(self) -> Any:
        """
        A read window of 1 MiB, smaller than the 4 MiB of READs a session
        may have in flight: reads beyond the window still wait for the
        stream (the old reader moved it, and made 715 GETs here).
        """
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        sftp = gw.service.sftp
        sftp.settings = dataclasses.replace(sftp.settings, read_window=MiB)
        yield in_thread(paramiko_get, gw.sftp_port, self.fetched)
        self.assertFetched(data)
        self.assertEqual(self.requests(gw), STAT_AND_GET)

    @defer.inlineCallbacks
    def test_openssh_sftp_get(self) -> Any:
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        result = yield self.password_sftp(gw, f"get big.bin {self.fetched}\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFetched(data)
        self.assertEqual(self.requests(gw), STAT_AND_GET)

    @defer.inlineCallbacks
    def test_rclone_copy(self) -> Any:
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        result = yield run(["rclone", "obscure", PASSWORD], self.env, self.work)
        self.assertEqual(result.returncode, 0, result.stderr)
        env = {
            **self.env,
            "RCLONE_SFTP_HOST": "127.0.0.1",
            "RCLONE_SFTP_PORT": str(gw.sftp_port),
            "RCLONE_SFTP_USER": "alice",
            "RCLONE_SFTP_PASS": result.stdout.decode().strip(),
        }
        result = yield run(
            [
                "rclone",
                "copyto",
                ":sftp:big.bin",
                str(self.fetched),
                "--sftp-disable-hashcheck",
                "--sftp-shell-type",
                "none",
                "--retries",
                "1",
                "--low-level-retries",
                "1",
                "--contimeout",
                "15s",
                "--timeout",
                "15s",
            ],
            env,
            self.work,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFetched(data)
        self.assertEqual(self.requests(gw), STAT_AND_GET)

    @defer.inlineCallbacks
    def test_openssh_sftp_batch_of_gets(self) -> Any:
        """
        OpenSSH's sftp gets 30 small files another client stored in one
        directory: a HEAD and a GET each, and one LIST of the directory's
        markers for them all (30 before the markers were known per
        directory).  The window is stretched to a minute, so a loaded
        machine cannot split the batch.
        """
        self.patch(timecache, "TIMES_TTL", 60.0)
        gw = yield self.upload(b"")
        cos = gw.inspector.server.cos_client()
        files = {f"batch/f{i:02d}.bin": random_bytes(16 * KiB) for i in range(30)}
        for key, data in files.items():
            yield in_thread(
                cos.put_object, Bucket=gw.inspector.bucket, Key=key, Body=data
            )
        gw.inspector.server.reset_stats()
        out = self.work / "batch"
        out.mkdir()
        commands = "".join(f"get {key} {out}/\n" for key in files)
        result = yield self.password_sftp(gw, commands)
        self.assertEqual(result.returncode, 0, result.stderr)
        for key, data in files.items():
            self.assertEqual((out / key.split("/")[1]).read_bytes(), data, key)
        self.assertEqual(
            self.requests(gw), {"HeadObject": 30, "ListObjects": 1, "GetObject": 30}
        )

    @defer.inlineCallbacks
    def test_lftp_get(self) -> Any:
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        result = yield lftp_sftp(
            gw.sftp_port, f"get big.bin -o {self.fetched}", self.env, self.work
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFetched(data)
        self.assertEqual(self.requests(gw), {"GetObject": 1})

    @defer.inlineCallbacks
    def test_curl_get(self) -> Any:
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        result = yield run(
            [
                "curl",
                "-sS",
                "--insecure",
                "-u",
                f"alice:{PASSWORD}",
                "-o",
                str(self.fetched),
                f"sftp://127.0.0.1:{gw.sftp_port}/big.bin",
            ],
            self.env,
            self.work,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFetched(data)
        # curl opens first and stats after: the GET, then the LIST of the
        # directory's markers of client times (a marker may hold the
        # file's time; the GET told all else).
        self.assertEqual(self.requests(gw), {"GetObject": 1, "ListObjects": 1})

    @defer.inlineCallbacks
    def test_random_reads_are_a_get_each_at_most(self) -> Any:
        """
        30 reads of 40 KiB at random offsets: each right, and no read costs
        more than its own bounded GET (jumps strand nothing).
        """
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        rng = random.Random(12)
        offsets = [rng.randrange(0, len(data)) for _ in range(30)]

        def client() -> list[bytes]:
            transport, sftp = paramiko_client(gw.sftp_port)
            try:
                with sftp.open("big.bin", "rb") as f:
                    got = []
                    for at in offsets:
                        f.seek(at)
                        got.append(f.read(40 * KiB))
                    return got
            finally:
                transport.close()

        got = yield in_thread(client)
        self.assertEqual(got, [data[at : at + 40 * KiB] for at in offsets])
        self.assertLessEqual(self.gets(gw), 1 + len(offsets))

    @defer.inlineCallbacks
    def test_a_file_replaced_between_streams_fails_the_reads(self) -> Any:
        """
        A handle read at its start, then the file replaced by one of the
        same size, then a read far on (a new stream): the read fails with
        the integrity error, never the new file's bytes.
        """
        data = random_bytes(SIZE)
        gw = yield self.upload(data)
        cos = gw.inspector.server.cos_client()

        def client() -> tuple[bytes, str]:
            transport, sftp = paramiko_client(gw.sftp_port)
            try:
                with sftp.open("big.bin", "rb") as f:
                    head = f.read(32 * KiB)
                    cos.put_object(
                        Bucket=gw.inspector.bucket,
                        Key="big.bin",
                        Body=random_bytes(SIZE),
                    )
                    f.seek(20 * MiB)
                    try:
                        f.read(32 * KiB)
                    except OSError as e:
                        return head, str(e)
                    return head, "read succeeded"
            finally:
                transport.close()

        head, error = yield in_thread(client)
        self.assertEqual(head, data[: 32 * KiB])
        self.assertIn("data integrity check failed", error)

    # -- FTP ------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_retr_is_one_get(self) -> Any:
        """
        RETR is the GET alone (its reply has the size, CRC-64 and time a
        HEAD would give), and REST n + RETR one GET from n.
        """
        data = random_bytes(3 * MiB + 5)
        gw = yield self.upload(data)
        server = gw.inspector.server

        def retr(rest: int | None) -> tuple[bytes, dict[str, int]]:
            ftp = ftplib.FTP()
            ftp.connect("127.0.0.1", gw.port, timeout=30)
            ftp.login("alice", PASSWORD)
            ftp.voidcmd("TYPE I")
            server.reset_stats()
            chunks: list[bytes] = []
            ftp.retrbinary("RETR big.bin", chunks.append, rest=rest)
            stats = server.stats()
            ftp.quit()
            return b"".join(chunks), stats

        for rest in (None, 1000):
            got, stats = yield in_thread(retr, rest)
            self.assertEqual(sha256(got), sha256(data[rest or 0 :]), rest)
            self.assertEqual(stats, {"GetObject": 1}, rest)
