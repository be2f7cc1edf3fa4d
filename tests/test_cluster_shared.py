"""
Rules shared by two replicas through a real redis-server (C{shared_state},
L{cosgw.policy.shared}), behind HAProxy: a ban earned on replica A refuses
logins on replica B; a user's max_sessions of 2 holds across replicas; a
quota holds with concurrent uploads on both; Redis stopped mid-test gives
what C{shared_state_failure = open} documents (each replica's own view
decides, logged, no hang).  HAProxy sends each replica the client's
address in a PROXY v2 header; the clients bind loopback addresses of their
own (127.0.0.2, ...) so that each has an address HAProxy's is not.
"""

from __future__ import annotations

import ftplib
import io
import os
import threading
import time
from typing import Any

from twisted.trial import unittest

from tests.clustertesting import (
    PASSWORD,
    PUBLIC,
    TIMEOUT,
    ClassCleanups,
    Cluster,
)
from tests.daemons import RedisServer
from tests.processtesting import poll, scratch
from tests.test_cluster_resume import sha

KiB = 1024
MiB = 1024 * KiB
QUOTA = 6 * MiB


def login_reply(cluster: Cluster, source: str, password: str) -> str:
    """What a login of bob from C{source}, through HAProxy, is answered."""
    ftp = ftplib.FTP()
    try:
        ftp.connect(PUBLIC, cluster.public.ftp, TIMEOUT, (source, 0))
        reply = ftp.login("bob", password)
    except ftplib.Error as e:
        reply = str(e)
    ftp.close()
    return reply


class SharedStateTests(unittest.SynchronousTestCase):
    cluster: Cluster
    redis: RedisServer
    cleanups: ClassCleanups

    @classmethod
    def setUpClass(cls) -> None:
        cls.cleanups = ClassCleanups()
        try:
            cls.redis = RedisServer(cls.cleanups, scratch(cls.cleanups, "cosgw-redis-"))
            cls.cluster = Cluster(
                cls.cleanups,
                server_lines=(
                    f"shared_state = {cls.redis.url}\n"
                    "login_max_failures = 3\nlogin_ban_time = 600\n"
                ),
                user_lines=f"max_sessions = 2\nquota_bytes = {QUOTA}\n",
            )
        except BaseException:
            cls.cleanups.run()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.cleanups.run()

    def test_ban_earned_on_a_refuses_on_b(self) -> None:
        """
        Three failed logins from 127.0.0.2 through HAProxy, spread over both
        replicas (round robin), ban it on both: its right password is
        refused on A and on B, while 127.0.0.3 logs in.  Each replica saw
        the client's own address (the PROXY header), not HAProxy's.
        """
        c = self.cluster
        self.assertTrue(login_reply(c, "127.0.0.2", PASSWORD).startswith("230"))
        for _ in range(3):
            self.assertTrue(login_reply(c, "127.0.0.2", "wrong").startswith("530"))
        for _ in c.replicas:
            refused = login_reply(c, "127.0.0.2", PASSWORD)
            self.assertFalse(refused.startswith("230"), refused)
        self.assertTrue(login_reply(c, "127.0.0.3", PASSWORD).startswith("230"))
        for replica in c.replicas:
            failed = {e["client_ip"] for e in replica.audit("login-failed")}
            self.assertEqual(failed, {"127.0.0.2"}, replica.name)

    def test_max_sessions_across_replicas(self) -> None:
        """
        bob's max_sessions is 2: one session on each replica, the third
        refused wherever it lands; once one ends, a new one is let in.
        """
        c = self.cluster
        first, second = c.ftp("bob"), c.ftp("bob")
        self.assertEqual(
            sorted(
                len([s for s in r.sessions() if s["user"] == "bob"]) for r in c.replicas
            ),
            [1, 1],
        )
        with self.assertRaises(ftplib.Error):
            c.ftp("bob")
        first.quit()
        poll(lambda: self.logs_in(c), TIMEOUT, "a session once one ended")
        second.quit()

    def logs_in(self, c: Cluster) -> bool:
        try:
            c.ftp("bob").quit()
        except ftplib.Error:
            return False
        return True

    def test_quota_with_concurrent_uploads_on_both(self) -> None:
        """
        alice's quota is 6 MiB; two 4 MiB uploads at once, one on each
        replica: one is refused (552) and the other stored whole; never
        more than the quota is stored.
        """
        c = self.cluster
        data = [os.urandom(4 * MiB), os.urandom(4 * MiB)]
        sessions = [c.ftp(), c.ftp()]
        self.assertEqual([len(r.sessions()) for r in c.replicas], [1, 1])
        results: list[Any] = [None, None]

        def upload(i: int) -> None:
            try:
                results[i] = sessions[i].storbinary(
                    f"STOR q{i}.bin", io.BytesIO(data[i]), blocksize=64 * KiB
                )
            except ftplib.Error as e:
                results[i] = e

        threads = [threading.Thread(target=upload, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
        ok = [i for i in (0, 1) if isinstance(results[i], str)]
        self.assertEqual(len(ok), 1, results)
        refused = results[1 - ok[0]]
        self.assertIn("552", str(refused))
        self.assertEqual(sha(c.stored(f"q{ok[0]}.bin")), sha(data[ok[0]]))
        stored = [k for k in c.store.keys(c.bucket) if k.startswith("q")]
        self.assertEqual(stored, [f"q{ok[0]}.bin"])
        for s in sessions:
            s.quit()
        for s in sessions:
            s.close()
        poll(lambda: not c.pending(), TIMEOUT, "the refused upload discarded")
        s3 = c.store.boto3_client()
        s3.delete_object(Bucket=c.bucket, Key=f"q{ok[0]}.bin")

    def test_redis_stopped_fails_open(self) -> None:
        """
        Redis stops: with shared_state_failure = open each replica's own
        view decides (logins go on through HAProxy on both replicas, each
        in well under the call timeout's few seconds, and a line says so);
        Redis back, the counts are shared again.
        """
        c = self.cluster
        self.redis.stop()
        self.addCleanup(lambda: self.redis.child or self.redis.start())
        for _ in c.replicas:
            started = time.monotonic()
            c.ftp(source="127.0.0.4").quit()
            self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([r.readyz()[0] for r in c.replicas], [200, 200])
        poll(
            lambda: all(
                any("Redis" in str(e.get("message")) for e in r.events()
                    if e.get("level") in ("warn", "error"))
                for r in c.replicas
            ),
            TIMEOUT,
            "each replica said Redis is away",
        )  # fmt: skip
        self.redis.start()
        first, second = c.ftp("bob"), c.ftp("bob")
        poll(lambda: not self.logs_in(c), TIMEOUT, "max_sessions shared again")
        first.quit()
        second.quit()
