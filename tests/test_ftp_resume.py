"""
Resume semantics that never lose data, through real sockets: ftplib and
curl against a gateway on the COS test store (and the local store for the
case that lost data), parts of 1 MiB so that interrupted uploads are quick
to make.  An upload is interrupted by resetting its data connection once
the store holds some of its parts, as a killed client does.

  - Issue 12 item 11: an interrupted STOR over an existing file keeps
    nothing; SIZE, MDTM, MLST and RETR agree on the old file; APPE (and
    curl -C -) appends to it.
  - Resume of a new file still works: FileZilla's SIZE + REST n + STOR,
    curl -C - (SIZE + APPE).
  - Issue 12 item 13: kept parts count against the quota; two concurrent
    uploads of one new name are one file.
"""

from __future__ import annotations

import ftplib
import io
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from cosgw.config import UserConfig
from cosgw.storage.sweeper import UploadSweeper
from tests.harness import PASSWORD, MiB, in_thread, random_bytes, sha256
from tests.test_policy import ftp_login, ftp_store, reply, start, user

OLD = bytes(range(100))


@defer.inlineCallbacks
def gateway(testcase: Any, kind: str, users: dict[str, UserConfig]) -> Any:
    """
    A gateway with 1 MiB parts, once its first sweep of stale uploads is
    over: moto dates every upload in 2010, so a sweep still running would
    take the uploads a test keeps for crashed ones.
    """
    gw = yield start(testcase, kind, part_size=MiB, users=users)
    [sweeper] = [s for s in gw.service if isinstance(s, UploadSweeper)]
    yield sweeper.last_sweep
    return gw


def interrupted_stor(gw: Any, ftp: ftplib.FTP, name: str, data: bytes) -> str:
    """
    STOR C{data} and reset the data connection once the store holds two
    parts (polled, bounded), or once all is sent: the final reply.
    """
    conn = ftp.transfercmd(f"STOR {name}")
    deadline = time.monotonic() + 20
    try:
        for at in range(0, len(data), MiB):
            conn.sendall(data[at : at + MiB])
            if gw.inspector.stored_parts() >= 2:
                break
        while gw.inspector.stored_parts() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST, as a killed client
    return reply(ftp.voidresp)


def retrieve(ftp: ftplib.FTP, name: str) -> bytes | str:
    """The file's bytes, or the error reply."""
    out = io.BytesIO()
    try:
        ftp.retrbinary(f"RETR {name}", out.write)
    except ftplib.Error as e:
        return str(e)
    return out.getvalue()


def facts(ftp: ftplib.FTP, name: str) -> dict[str, str] | str:
    """MLST's facts of C{name}, or the error reply."""
    try:
        lines = ftp.sendcmd(f"MLST {name}").splitlines()
    except ftplib.Error as e:
        return str(e)
    found = dict(re.findall(r"([\w.]+)=([^;]*);", lines[1]))
    return {k.lower(): v for k, v in found.items()}


class ItemElevenMixin:
    """A 100-byte file and an interrupted 17 MiB STOR of the same name."""

    kind = "cos"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield gateway(self, self.kind, {"alice": user("alice")})

    @defer.inlineCallbacks
    def test_interrupted_overwrite_then_appe(self) -> Any:
        big = random_bytes(17 * MiB)

        def run() -> list[Any]:
            ftp = ftp_login(self.gw, "alice")
            r: list[Any] = [ftp_store(ftp, "f.bin", OLD)]
            r.append(interrupted_stor(self.gw, ftp, "f.bin", big))
            r.append(list(self.gw.inspector.pending_uploads()))
            r.append(ftp.sendcmd("SIZE f.bin"))
            mlst = facts(ftp, "f.bin")
            assert isinstance(mlst, dict), mlst
            r.append(mlst["size"])
            r.append(ftp.sendcmd("MDTM f.bin") == f"213 {mlst['modify'][:14]}")
            r.append(retrieve(ftp, "f.bin"))
            r.append(reply(ftp.storbinary, "APPE f.bin", io.BytesIO(b"new!")))
            r.append(retrieve(ftp, "f.bin"))
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(r[0], "226 Transfer complete")
        self.assertTrue(r[1].startswith("426 "), r[1])
        self.assertNotIn("kept", r[1])
        self.assertEqual(r[2], [])  # the multipart upload was aborted
        self.assertEqual(r[3:7], ["213 100", "100", True, OLD])
        self.assertEqual(r[7], "226 Transfer complete")
        self.assertEqual(r[8], OLD + b"new!")
        self.assertEqual(self.gw.inspector.read("f.bin"), OLD + b"new!")
        self.assertEqual(self.gw.inspector.pending_uploads(), [])


class CosItemElevenTests(ItemElevenMixin, unittest.TestCase):
    kind = "cos"


class LocalItemElevenTests(ItemElevenMixin, unittest.TestCase):
    kind = "local"


class ResumeClientTests(unittest.TestCase):
    """Clients that resume new files still do; curl's resume of an old file appends."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield gateway(self, "cos", {"alice": user("alice")})

    def source_file(self, data: bytes) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-client-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "payload.bin"
        path.write_bytes(data)
        return path

    def curl_resume(self, source: Path, name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "curl",
                "-s",
                "-S",
                "--max-time",
                "60",
                "-u",
                f"alice:{PASSWORD}",
                "-C",
                "-",
                "-T",
                str(source),
                f"ftp://127.0.0.1:{self.gw.port}/{name}",
            ],
            capture_output=True,
            timeout=90,
        )

    @defer.inlineCallbacks
    def test_filezilla_size_rest_stor(self) -> Any:
        """SIZE answers the kept bytes; MLST and RETR see no file; REST + STOR ends it."""
        data = random_bytes(3 * MiB + 4321)

        def run() -> list[Any]:
            ftp = ftp_login(self.gw, "alice")
            r: list[Any] = [interrupted_stor(self.gw, ftp, "new.bin", data)]
            size = ftp.size("new.bin")
            assert size is not None
            r += [size, facts(ftp, "new.bin"), retrieve(ftp, "new.bin")]
            r.append(ftp.storbinary("STOR new.bin", io.BytesIO(data[size:]), rest=size))
            ftp.quit()
            return r

        r = yield in_thread(run)
        kept = r[1]
        self.assertTrue(kept > 0 and kept % MiB == 0, kept)
        self.assertIn(f"{kept} bytes kept: resume with REST {kept}", r[0])
        self.assertTrue(r[2].startswith("550"), r[2])
        self.assertTrue(r[3].startswith("550"), r[3])
        self.assertEqual(r[4], "226 Transfer complete")
        self.assertEqual(sha256(self.gw.inspector.read("new.bin")), sha256(data))
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_curl_resumes_a_new_file_and_appends_to_an_old_one(self) -> Any:
        """
        curl -C - (SIZE, then APPE of the rest): a new file's kept upload is
        continued; for a file whose overwrite was interrupted, SIZE is the
        old file's and the rest is appended to it.
        """
        data = random_bytes(3 * MiB + 999)
        longer = OLD + b"new!"

        def interrupt() -> list[str]:
            ftp = ftp_login(self.gw, "alice")
            r = [
                interrupted_stor(self.gw, ftp, "new.bin", data),
                ftp_store(ftp, "old.bin", OLD),
                interrupted_stor(self.gw, ftp, "old.bin", random_bytes(3 * MiB)),
            ]
            ftp.quit()
            return r

        r = yield in_thread(interrupt)
        self.assertIn("bytes kept", r[0])
        self.assertEqual(r[1], "226 Transfer complete")
        self.assertNotIn("kept", r[2])
        self.assertEqual(len(self.gw.inspector.pending_uploads()), 1)
        for name, content in (("new.bin", data), ("old.bin", longer)):
            result = yield in_thread(self.curl_resume, self.source_file(content), name)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(sha256(self.gw.inspector.read(name)), sha256(content))
        self.assertEqual(self.gw.inspector.pending_uploads(), [])


class QuotaTests(unittest.TestCase):
    """User "bytes" has 3 MiB, user "files" 2 files, each in its own home."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {
            "bytes": user("bytes", home="bytes", quota_bytes=3 * MiB),
            "files": user("files", home="files", quota_files=2),
        }
        self.gw = yield gateway(self, "cos", users)

    @defer.inlineCallbacks
    def test_kept_parts_count(self) -> Any:
        """
        2 MiB kept of an interrupted upload leave 1 MiB: a 1.5 MiB upload is
        refused; the resume takes the claim over; the quota is exact after.
        """
        data = random_bytes(2 * MiB + MiB // 2)

        def run() -> list[str]:
            ftp = ftp_login(self.gw, "bytes")
            r = [
                interrupted_stor(self.gw, ftp, "a.bin", data),
                ftp.sendcmd("SIZE a.bin"),
                ftp_store(ftp, "b.bin", random_bytes(MiB + MiB // 2)),
                ftp.storbinary("STOR a.bin", io.BytesIO(data[2 * MiB :]), rest=2 * MiB),
                ftp_store(ftp, "c.bin", random_bytes(MiB // 2)),
                ftp_store(ftp, "d.bin", b"x"),
            ]
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertIn(f"{2 * MiB} bytes kept", r[0])
        self.assertEqual(
            r[1:],
            [
                f"213 {2 * MiB}",
                "552 /b.bin: quota exceeded",
                "226 Transfer complete",
                "226 Transfer complete",
                f"552 /d.bin: disk quota reached ({3 * MiB} bytes)",
            ],
        )
        self.assertEqual(sha256(self.gw.inspector.read("bytes/a.bin")), sha256(data))
        self.assertEqual(
            self.gw.inspector.keys("bytes/"), ["bytes/a.bin", "bytes/c.bin"]
        )
        self.assertEqual(self.gw.inspector.pending_uploads(), [])

    @defer.inlineCallbacks
    def test_concurrent_uploads_of_one_new_name(self) -> Any:
        """
        With room for one more file, two sessions upload the same new name
        at once: both are accepted and it is one file; a third name is not.
        """

        def run() -> list[str]:
            first, second = ftp_login(self.gw, "files"), ftp_login(self.gw, "files")
            r = [ftp_store(first, "one.txt", b"1")]
            a = first.transfercmd("STOR same.txt")
            b = second.transfercmd("STOR same.txt")
            a.sendall(b"first")
            b.sendall(b"second")
            a.close()
            r.append(reply(first.voidresp))
            b.close()
            r.append(reply(second.voidresp))
            r.append(ftp_store(first, "third.txt", b"3"))
            r.append(reply(first.delete, "same.txt"))
            r.append(ftp_store(second, "third.txt", b"3"))
            first.quit()
            second.quit()
            return r

        r = yield in_thread(run)
        self.assertEqual(
            r,
            [
                "226 Transfer complete",
                "226 Transfer complete",
                "226 Transfer complete",
                "552 /third.txt: file quota reached (2 files)",
                "250 File removed",
                "226 Transfer complete",
            ],
        )
        self.assertEqual(
            self.gw.inspector.keys("files/"), ["files/one.txt", "files/third.txt"]
        )
