"""
What one replica's lifecycle does to the others (L{tests.clustertesting}):
its stale-upload sweeper never aborts an upload another replica is still
writing (and still sweeps what nobody writes), and its drain on SIGTERM
takes it out of HAProxy at once while its transfer finishes and commits.
The sweeper's rule itself over a memory store, with a clock, first.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from cosgw.storage.sweeper import UploadSweeper
from cosgw.testing import MemoryStore
from tests.clustertesting import TIMEOUT, Cluster, Replica, end_sftp
from tests.processtesting import poll
from tests.test_cluster_resume import serving, sha, stored_parts

KiB = 1024
MiB = 1024 * KiB
DAY = 86400


class SweeperRuleTests(unittest.TestCase):
    """Age from the newest sign of life: the start or the newest part."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = MemoryStore(clock=self.clock)
        self.sweeper = UploadSweeper({"s": self.store}, DAY, self.clock)

    def sweep(self) -> int:
        return self.successResultOf(ensureDeferred(self.sweeper.sweep()))

    def begin(self, key: str) -> str:
        return self.successResultOf(self.store.create_multipart(key))

    def part(self, key: str, upload_id: str, number: int) -> None:
        self.successResultOf(self.store.upload_part(key, upload_id, number, b"x"))

    def pending(self) -> list[str]:
        uploads = self.successResultOf(self.store.list_multipart(""))
        return sorted(u.key for u in uploads)

    def test_a_part_keeps_an_old_upload(self) -> None:
        """
        Begun two days ago, a part an hour ago: another gateway writes it.
        A day after its last part it is stale.
        """
        writing = self.begin("writing.bin")
        self.part("writing.bin", writing, 1)
        abandoned = self.begin("abandoned.bin")
        self.part("abandoned.bin", abandoned, 1)
        self.clock.advance(DAY + 3600)
        self.part("writing.bin", writing, 2)
        self.clock.advance(3600)
        self.store.reset_requests()
        self.assertEqual(self.sweep(), 1)
        # One LIST UPLOADS, one LIST PARTS for each old upload, the abort.
        self.assertEqual(
            dict(self.store.reset_requests()),
            {"list_multipart": 1, "list_parts": 2, "abort_multipart": 1},
        )
        self.assertEqual(self.pending(), ["writing.bin"])
        self.clock.advance(DAY)
        self.assertEqual(self.sweep(), 1)
        self.assertEqual(self.pending(), [])

    def test_young_uploads_cost_no_list_parts(self) -> None:
        self.begin("young.bin")
        self.clock.advance(DAY - 1)
        self.store.reset_requests()
        self.assertEqual(self.sweep(), 0)
        self.assertEqual(dict(self.store.reset_requests()), {"list_multipart": 1})

    def test_an_upload_without_parts_ages_from_its_start(self) -> None:
        self.begin("empty.bin")
        self.clock.advance(DAY)
        self.assertEqual(self.sweep(), 1)
        self.assertEqual(self.pending(), [])


def trickle(
    cluster: Cluster, name: str, data: bytes, first: int
) -> tuple[Any, socket.socket, Replica]:
    """
    An FTP upload of C{name} through HAProxy, C{first} bytes sent and two
    parts stored: (control, data socket, its replica).
    """
    ftp = cluster.ftp()
    replica = serving(cluster)
    sock = ftp.transfercmd(f"STOR {name}")
    sock.sendall(data[:first])
    poll(lambda: stored_parts(cluster, name) >= 2, TIMEOUT, "2 parts stored")
    return ftp, sock, replica


def finish(ftp: Any, sock: socket.socket, rest: bytes) -> str:
    sock.sendall(rest)
    sock.close()
    return str(ftp.voidresp())


class SweeperAcrossReplicasTests(unittest.TestCase):
    def test_restarted_replica_spares_the_others_upload(self) -> None:
        """
        While replica A writes an upload, replica B restarts (a rolling
        restart) with stale_upload_age = 60 and sweeps at start.  The store
        dates the upload's start long ago (moto says 2010), its parts now:
        B leaves it alone and A commits it whole; an upload nobody writes
        (begun long ago, no part) is swept.
        """
        c = Cluster(self, transfer_lines="stale_upload_age = 60\n")
        s3 = c.store.boto3_client()
        left = s3.create_multipart_upload(Bucket=c.bucket, Key="left.bin")["UploadId"]
        data = os.urandom(3 * MiB + 99)
        ftp, sock, a = trickle(c, "busy.bin", data, 2 * MiB + 10)
        b = next(r for r in c.replicas if r is not a)
        b.terminate()
        self.assertEqual(b.child.wait(TIMEOUT) if b.child else None, 0)
        b.start()
        poll(
            lambda: any("left.bin" in str(e.get("message")) for e in b.events()),
            TIMEOUT,
            "B swept the abandoned upload",
        )
        self.assertEqual([k for k, _ in c.pending()], ["busy.bin"])
        self.assertNotIn(left, [u for _, u in c.pending()])
        self.assertIn("226", finish(ftp, sock, data[2 * MiB + 10 :]))
        ftp.quit()
        self.assertEqual(sha(c.stored("busy.bin")), sha(data))
        self.assertEqual(c.pending(), [])


class DrainAcrossTheClusterTests(unittest.TestCase):
    def test_sigterm_takes_a_replica_out_and_finishes_its_upload(self) -> None:
        """
        SIGTERM to the replica writing an upload: its /readyz fails at once,
        HAProxy's check takes it out, new FTP and SFTP sessions all land on
        the other one; the upload then finishes and commits, and the
        drained replica exits 0.
        """
        c = Cluster(self, server_lines="drain_timeout = 30\n")
        data = os.urandom(3 * MiB + 1)
        ftp, sock, a = trickle(c, "drained.bin", data, 2 * MiB + 1)
        b = next(r for r in c.replicas if r is not a)
        a.terminate()
        poll(lambda: a.readyz()[0] == 503, 5, "A not ready")
        c.wait_states({a.name: "DOWN", b.name: "UP"})
        c.wait_states({a.name: "DOWN", b.name: "UP"}, backend="sftp")
        others = [c.ftp(), c.ftp(), c.ftp(tls=True)]
        sftp = c.sftp()
        self.assertEqual(
            sorted(s["protocol"] for s in b.sessions()), ["ftp", "ftp", "ftps", "sftp"]
        )
        self.assertEqual([s["protocol"] for s in a.sessions()], ["ftp"])
        done: list[str] = []
        writer = threading.Thread(
            target=lambda: done.append(finish(ftp, sock, data[2 * MiB + 1 :]))
        )
        writer.start()
        writer.join(TIMEOUT)
        self.assertIn("226", done[0])
        self.assertEqual(a.child.wait(TIMEOUT) if a.child else None, 0)
        self.assertEqual(sha(c.stored("drained.bin")), sha(data))
        others[0].storbinary("STOR after.bin", io.BytesIO(b"after"))
        self.assertEqual(c.stored("after.bin"), b"after")
        for other in others:
            other.quit()
        end_sftp(sftp)
