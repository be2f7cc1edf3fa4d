"""
The service as an operator meets it: the log file, what it says and what it
must never say (secrets), through a real session.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import PASSWORD, in_thread, start_gateway
from tests.test_ftp import connect


class LogFileTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_log_dir_gets_transfers_and_no_secrets(self) -> Any:
        logs = Path(tempfile.mkdtemp(prefix="cosgw-logs-"))
        self.addCleanup(shutil.rmtree, logs, True)
        gw = yield start_gateway(self, "cos", log_dir=logs, log_level="info")

        def run() -> None:
            ftp = connect(gw)
            ftp.storbinary("STOR logged.txt", io.BytesIO(b"x" * 1000))
            ftp.quit()
            bad = connect.__globals__["ftplib"].FTP()
            bad.connect(gw.host, gw.port, timeout=20)
            try:
                bad.login("alice", "not-the-password")
            except Exception:
                pass
            bad.close()

        yield in_thread(run)
        yield gw.service.stopService()
        text = (logs / "cosgw.log").read_text()
        self.assertIn("ftp login of alice from 127.0.0.1:", text)
        self.assertIn("ftp upload of /logged.txt by alice from 127.0.0.1:", text)
        self.assertIn(": ok, 1000 bytes in", text)
        self.assertIn("alice", text)
        for secret in (PASSWORD, "not-the-password", gw.inspector.server.secret_key):
            self.assertNotIn(secret, text)
        self.assertNotIn("#debug]", text)


class UploadSweeperTests(unittest.TestCase):
    """
    Unfinished multipart uploads older than the configured age (a crashed
    gateway's) are aborted; younger ones (uploads in progress) are not.
    """

    kind = "local"

    @defer.inlineCallbacks
    def test_sweeps_only_stale_uploads(self) -> Any:
        from twisted.internet.task import Clock

        from cosgw.storage.sweeper import UploadSweeper
        from cosgw.transfer import UploadRegistry

        gw = yield start_gateway(self, self.kind)
        # The gateway's own sweeper lists the store's uploads as it starts;
        # let that sweep end first, or it may take this test's upload for a
        # crashed gateway's (moto dates every upload in 2010).
        [own] = [s for s in gw.service if isinstance(s, UploadSweeper)]
        self.assertEqual((yield own.last_sweep), 0)
        store = gw.store
        key = "crashed/left-behind.bin"
        upload_id = yield store.create_multipart(key)
        yield store.upload_part(key, upload_id, 1, b"x" * 1024)
        [pending] = yield store.list_multipart("")
        busy_key = "busy/being-written.bin"
        busy = yield store.create_multipart(busy_key)
        active = UploadRegistry()
        active.add(busy)
        clock = Clock()
        clock.advance(pending.initiated + 3600)  # an hour later: in progress
        sweeper = UploadSweeper(
            {"store": store}, max_age=86400, clock=clock, active=active
        )
        sweeper.startService()  # sweeps at once, then every hour
        self.addCleanup(sweeper.stopService)
        self.assertEqual((yield sweeper.last_sweep), 0)
        still = yield store.list_multipart("")
        self.assertEqual(
            sorted((u.key, u.upload_id) for u in still),
            sorted([(key, upload_id), (busy_key, busy)]),
        )
        first = sweeper.last_sweep
        # A day after its part, which the store dates by the wall clock
        # (moto dates every upload's start in 2010): stale, swept hourly.
        clock.advance(max(86400, time.time() + 86400 - clock.seconds()))
        self.assertIsNot(sweeper.last_sweep, first)
        self.assertEqual((yield sweeper.last_sweep), 1)
        # The stale one is gone; the one this gateway is writing is not,
        # however old it is.
        remaining = yield store.list_multipart("")
        self.assertEqual([(u.key, u.upload_id) for u in remaining], [(busy_key, busy)])
        self.assertEqual(gw.inspector.keys(), [])


class CosUploadSweeperTests(UploadSweeperTests):
    kind = "cos"


class LoginPolicyWiringTests(unittest.TestCase):
    """makeService gives the defender and the connection limits the config."""

    @defer.inlineCallbacks
    def test_ipv6_prefix_delays_and_queue(self) -> Any:
        """
        ipv6_prefix groups IPv6 clients for both; the longest delay is 16
        times login_failure_delay; an address may have as many logins
        waiting as it may hold connections.
        """
        gw = yield start_gateway(
            self,
            "local",
            ipv6_prefix=56,
            max_connections_per_ip=1,
            login_failure_delay=0.25,
            login_max_failures=0,
        )
        limits, defender = gw.service.limits, gw.service.defender
        self.assertIsNone(limits.open("2001:db8:0:1::1"))
        self.assertEqual(
            limits.open("2001:db8:0:ff::2"),
            "too many connections from your address (1)",
        )
        self.assertIsNone(limits.open("2001:db8:0:100::1"))
        limits.close("2001:db8:0:1::1")
        limits.close("2001:db8:0:100::1")
        delays = [defender.failed("2001:db8:0:1::1", "a") for _ in range(3)]
        delays += [defender.failed("2001:db8:0:ff::1", "a") for _ in range(4)]
        self.assertEqual(delays, [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
        self.assertEqual(defender._max_waiting, 1)
