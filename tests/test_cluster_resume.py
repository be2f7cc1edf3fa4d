"""
Resume on any replica: the state of an interrupted upload is in COS (its
multipart upload, kept), so an upload cut on replica A, by SIGKILL of A or
by the client's reset, is resumed through replica B with REST + STOR, APPE
or SFTP (an APPEND open, or an open without TRUNC and a write at the
offset its FSTAT gives), and the object is byte-identical.  Each test has its own
two replicas behind HAProxy (L{tests.clustertesting}).
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
from typing import Any

import paramiko
from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile
from twisted.trial import unittest

from cosgw import vfs
from tests.clustertesting import TIMEOUT, Cluster, Replica, end_sftp
from tests.processtesting import poll
from tests.test_resume_semantics import ResumeTestCase, blob

KiB = 1024
MiB = 1024 * KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_parts(cluster: Cluster, key: str) -> int:
    """Whole parts stored in the pending uploads of C{key}."""
    s3 = cluster.store.boto3_client()
    return sum(
        len(s3.list_parts(Bucket=cluster.bucket, Key=k, UploadId=u).get("Parts", []))
        for k, u in cluster.pending()
        if k == key
    )


def serving(cluster: Cluster, user: str = "alice") -> Replica:
    """The one replica with a session of C{user} open now."""
    return poll(
        lambda: next(
            iter(
                [r for r in cluster.replicas if r.child and r.child.proc.poll() is None
                 and any(s["user"] == user for s in r.sessions())]
            ),
            None,
        ),
        TIMEOUT,
        "the replica serving the session",
    )  # fmt: skip


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the client went away, not EOF."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def open_without_trunc(sftp: paramiko.SFTPClient, name: str) -> SFTPFile:
    """OPEN with WRITE|CREAT alone, which paramiko's modes cannot ask for."""
    kind, message = sftp._request(
        CMD_OPEN, name, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE, SFTPAttributes()
    )
    assert kind == CMD_HANDLE
    return SFTPFile(sftp, message.get_binary(), "w")


class ResumeTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Cluster(self)
        self.data = os.urandom(4 * MiB + 12345)

    def cut_ftp(self, name: str, sent: int) -> tuple[Any, socket.socket, Replica]:
        """
        Start an FTP upload of C{name} through HAProxy, send C{sent} bytes
        and wait until two whole parts are stored: (control, data socket,
        the replica writing it).
        """
        ftp = self.cluster.ftp()
        replica = serving(self.cluster)
        data = ftp.transfercmd(f"STOR {name}")
        data.sendall(self.data[:sent])
        poll(lambda: stored_parts(self.cluster, name) >= 2, TIMEOUT, "2 parts stored")
        return ftp, data, replica

    def test_sigkill_then_rest_stor_on_the_other_replica(self) -> None:
        """
        Replica A is killed (SIGKILL) in the middle of an FTP upload: through
        HAProxy the client lands on B, SIZE says the 2 MiB A stored, REST +
        STOR sends the rest, and the object is the whole file.
        """
        c = self.cluster
        ftp, data, a = self.cut_ftp("big.bin", 2 * MiB + 300 * KiB)
        a.kill()
        data.close()
        ftp.close()
        b = next(r for r in c.replicas if r is not a)
        c.wait_states({a.name: "DOWN", b.name: "UP"})
        again = c.ftp()
        self.assertEqual(serving(c), b)
        self.assertEqual(again.size("big.bin"), 2 * MiB)
        again.storbinary("STOR big.bin", io.BytesIO(self.data[2 * MiB :]), rest=2 * MiB)
        again.quit()
        self.assertEqual(sha(c.stored("big.bin")), sha(self.data))
        self.assertEqual(c.pending(), [])
        [upload] = [e for e in b.audit("upload") if e["outcome"] == "ok"]
        self.assertEqual(
            (upload["offset"], upload["bytes"]), (2 * MiB, len(self.data) - 2 * MiB)
        )

    def test_client_reset_then_appe_on_the_other_replica(self) -> None:
        """
        The client resets its data connection and leaves in the middle of an
        upload through A; its next session lands on B (round robin), whose
        APPE continues the upload A kept.
        """
        c = self.cluster
        ftp, data, a = self.cut_ftp("reset.bin", 3 * MiB + 1)
        reset(data)
        ftp.file.close()  # else closing the socket leaves its descriptor open
        reset(ftp.sock)
        poll(lambda: not a.sessions(), TIMEOUT, "A saw the client go")
        again = c.ftp()
        b = serving(c)
        self.assertIsNot(b, a)
        kept = again.size("reset.bin")
        self.assertIn(kept, (2 * MiB, 3 * MiB))
        again.storbinary("APPE reset.bin", io.BytesIO(self.data[kept:]))
        again.quit()
        self.assertEqual(sha(c.stored("reset.bin")), sha(self.data))
        self.assertEqual(c.pending(), [])

    def test_sigkill_then_sftp_resume_on_the_other_replica(self) -> None:
        """
        An SFTP upload (paramiko) through A, A killed: through HAProxy the
        client lands on B and appends the rest (an APPEND open, whose FSTAT
        gives the kept bytes); then, A back and one replica killed again, an
        open without TRUNC and a write at the kept end on the other.
        """
        c = self.cluster
        sftp = c.sftp()
        a = serving(c)
        handle = sftp.open("sftp.bin", "w")
        handle.set_pipelined(True)
        handle.write(self.data[: 2 * MiB + 5000])
        poll(lambda: stored_parts(c, "sftp.bin") >= 2, TIMEOUT, "2 parts stored")
        a.kill()
        try:
            end_sftp(sftp)
        except Exception:
            pass
        b = next(r for r in c.replicas if r is not a)
        c.wait_states({a.name: "DOWN", b.name: "UP"}, backend="sftp")
        # paramiko's append: the handle's FSTAT gives the kept size.
        sftp = c.sftp()
        self.assertEqual(serving(c), b)
        with sftp.open("sftp.bin", "a") as f:
            self.assertEqual(f.tell(), 2 * MiB)
            f.write(self.data[2 * MiB :])
        end_sftp(sftp)
        self.assertEqual(sha(c.stored("sftp.bin")), sha(self.data))
        self.assertEqual(c.pending(), [])
        [resumed] = [e for e in b.audit("upload") if e["path"] == "/sftp.bin"]
        self.assertEqual(resumed["offset"], 2 * MiB)

        # Again, with paramiko opening without TRUNC and writing at the
        # offset its stat gives: A is back, one of the two is killed.
        a.start()
        c.wait_states({a.name: "UP", b.name: "UP"}, backend="sftp")
        sftp = c.sftp()
        cut = serving(c)
        handle = sftp.open("again.bin", "w")
        handle.set_pipelined(True)
        handle.write(self.data[: 3 * MiB + 5])
        poll(lambda: stored_parts(c, "again.bin") >= 3, TIMEOUT, "3 parts stored")
        cut.kill()
        other = next(r for r in c.replicas if r is not cut)
        c.wait_states({cut.name: "DOWN"}, backend="sftp")
        sftp = c.sftp()
        self.assertEqual(serving(c), other)
        with open_without_trunc(sftp, "again.bin") as f:
            offset = f.stat().st_size
            self.assertEqual(offset, 3 * MiB)
            f.seek(offset)
            f.write(self.data[offset:])
        end_sftp(sftp)
        self.assertEqual(sha(c.stored("again.bin")), sha(self.data))
        self.assertEqual(c.pending(), [])


class KeptUploadOpenTests(ResumeTestCase):
    """
    SFTP's OPEN of a name with no file but a kept upload (cut here or on
    another replica), over a memory store: what the resumes above rely on.
    """

    def setUp(self) -> None:
        super().setUp()
        self.data = blob(2 * MiB + 10)
        self.assertEqual(self.interrupted("n.bin", self.data[: 2 * MiB + 5]), 2 * MiB)

    def open_file(self, **flags: bool) -> vfs.RandomAccessFile:
        d = self.fs.open_file(["n.bin"], settings=None, producer=None, **flags)
        return self.ok(d)  # type: ignore[return-value]

    def write(self, file: vfs.RandomAccessFile, offset: int, data: bytes) -> None:
        ack = file.write(offset, data)
        if ack is not None:
            self.ok(ack)

    def test_write_at_the_kept_end_resumes(self) -> None:
        """Without TRUNC: FSTAT shows the kept bytes; a write there goes on."""
        file = self.open_file(write=True, create=True)
        self.assertEqual(file.entry.size, 2 * MiB)
        self.write(file, 2 * MiB, self.data[2 * MiB :])
        self.ok(file.close())
        self.assertEqual(self.stored("n.bin"), self.data)
        self.assertNothingLeft()

    def test_append_resumes(self) -> None:
        file = self.open_file(write=True, create=True, append=True)
        self.assertEqual(file.entry.size, 2 * MiB)
        self.write(file, 0, self.data[2 * MiB :])  # APPEND: the offset is ignored
        self.ok(file.close())
        self.assertEqual(self.stored("n.bin"), self.data)
        self.assertNothingLeft()

    def test_write_at_zero_begins_anew(self) -> None:
        file = self.open_file(write=True, create=True)
        self.write(file, 0, b"new")
        self.ok(file.close())
        self.assertEqual(self.stored("n.bin"), b"new")
        self.assertNothingLeft()

    def test_close_without_writes_keeps_the_upload(self) -> None:
        self.ok(self.open_file(write=True, create=True).close())
        self.assertEqual(self.ok(self.fs.restart_size(["n.bin"])), 2 * MiB)
        self.assertEqual(len(self.store.stored_uploads()), 1)

    def test_truncate_begins_anew(self) -> None:
        file = self.open_file(write=True, create=True, truncate=True)
        self.assertEqual(file.entry.size, 0)
        self.write(file, 0, b"t")
        self.ok(file.close())
        self.assertEqual(self.stored("n.bin"), b"t")
        self.assertNothingLeft()
