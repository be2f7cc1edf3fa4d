"""
The admin listener's metrics as Prometheus reads them (parsed with
prometheus_client's parser): counters from the audit events of this
gateway only, store latency and errors per operation through the storage
hook, gauges of live state.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from cosgw.admin.health import Readiness
from cosgw.admin.live import LiveCollector, LiveParts
from cosgw.admin.metrics import GatewayMetrics
from cosgw.audit import SessionTable
from cosgw.interfaces import NoSuchKey
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.quota import Usage
from cosgw.storage.local import LocalStore
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings, UploadBuffers
from tests.admintesting import request, samples, value
from tests.harness import in_thread, random_bytes, start_gateway
from tests.test_ftp import connect


def scrape(metrics: GatewayMetrics) -> dict[Any, float]:
    return samples(generate_latest(metrics.registry).decode())


async def _poll(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await deferLater(reactor, 0.02, lambda: None)


def _until(condition: Callable[[], bool], seconds: float = 15) -> defer.Deferred[None]:
    """Poll C{condition} on the reactor; fail after C{seconds}."""
    return defer.Deferred.fromCoroutine(_poll(condition, seconds))


class AuditCounterTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.table = SessionTable(self.clock)
        self.metrics = GatewayMetrics(self.table)
        globalLogPublisher.addObserver(self.metrics)
        self.addCleanup(globalLogPublisher.removeObserver, self.metrics)

    def test_transfers_logins_and_operations(self) -> None:
        session = self.table.open("ftp", "127.0.0.1", 40000, lambda reason: None)
        session.emit("login-failed", PermissionError("bad password"))
        session.user = "alice"
        session.emit("login")
        upload = session.start_transfer("upload", "/a.bin")
        upload.progress(1000)
        upload.progress(234)
        self.clock.advance(2)
        upload.finish()
        download = session.start_transfer("download", "/b.bin", size=800)
        download.progress(500)
        download.finish()
        cut = session.start_transfer("download", "/c.bin", size=800)
        cut.progress(100)
        session.emit("delete", path="/a.bin")
        session.emit("mkdir", FileExistsError("exists"), path="/d")
        self.table.close(session, "client quit")  # finishes `cut` as aborted

        s = scrape(self.metrics)
        self.assertEqual(value(s, "cosgw_sessions_opened_total", protocol="ftp"), 1)
        self.assertEqual(
            value(s, "cosgw_logins_total", protocol="ftp", outcome="ok"), 1
        )
        self.assertEqual(
            value(s, "cosgw_logins_total", protocol="ftp", outcome="failed"), 1
        )
        self.assertEqual(
            value(s, "cosgw_transfer_bytes_total", protocol="ftp", direction="upload"),
            1234,
        )
        self.assertEqual(
            value(
                s, "cosgw_transfer_bytes_total", protocol="ftp", direction="download"
            ),
            600,
        )
        for direction, outcome, count in (
            ("upload", "ok", 1),
            ("download", "ok", 1),
            ("download", "aborted", 1),
        ):
            self.assertEqual(
                value(
                    s,
                    "cosgw_transfers_total",
                    protocol="ftp",
                    direction=direction,
                    outcome=outcome,
                ),
                count,
            )
        self.assertEqual(
            value(
                s,
                "cosgw_transfer_duration_seconds_bucket",
                protocol="ftp",
                direction="upload",
                le="1.0",
            ),
            0,
        )
        self.assertEqual(
            value(
                s,
                "cosgw_transfer_duration_seconds_bucket",
                protocol="ftp",
                direction="upload",
                le="5.0",
            ),
            1,
        )
        self.assertEqual(
            value(
                s,
                "cosgw_operations_total",
                protocol="ftp",
                operation="delete",
                outcome="ok",
            ),
            1,
        )
        self.assertEqual(
            value(
                s,
                "cosgw_operations_total",
                protocol="ftp",
                operation="mkdir",
                outcome="error",
            ),
            1,
        )

    def test_other_gateways_events_not_counted(self) -> None:
        """The log publisher is global: a second gateway's events are not ours."""
        other = SessionTable(self.clock)
        session = other.open("sftp", "127.0.0.2", 40001, lambda reason: None)
        session.user = "bob"
        session.emit("login")
        transfer = session.start_transfer("upload", "/x")
        transfer.progress(5000)
        transfer.finish()
        other.close(session)
        s = scrape(self.metrics)
        self.assertEqual(value(s, "cosgw_sessions_opened_total", protocol="sftp"), 0)
        self.assertEqual(
            value(s, "cosgw_transfer_bytes_total", protocol="sftp", direction="upload"),
            0,
        )
        self.assertEqual(
            value(s, "cosgw_logins_total", protocol="sftp", outcome="ok"), 0
        )

    def test_closed_sessions_forgotten(self) -> None:
        for _ in range(3):
            session = self.table.open("ftp", "127.0.0.1", 1, lambda reason: None)
            self.table.close(session)
        self.assertEqual(self.metrics._mine, set())


class StoreHookTests(unittest.TestCase):
    """Every store request, timed by operation, through ThreadedStore."""

    def setUp(self) -> None:
        self.pool = ThreadPool(0, 2, "test-admin")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        root = Path(tempfile.mkdtemp(prefix="cosgw-admin-store-"))
        self.store = LocalStore(root / "data", reactor, self.pool)
        self.store.prepare()
        self.metrics = GatewayMetrics(SessionTable(reactor))
        self.metrics.watch_stores({"local": self.store})

    @defer.inlineCallbacks
    def test_latency_and_errors_by_operation(self) -> Any:
        d = self.store.put("k", b"12345")
        self.assertEqual(self.metrics.in_flight[("local", "put")], 1)
        yield d
        yield self.store.head("k")
        with self.assertRaises(NoSuchKey):
            yield self.store.head("missing")
        self.assertEqual(dict(self.metrics.in_flight), {})
        s = scrape(self.metrics)
        self.assertEqual(
            value(
                s, "cosgw_store_request_seconds_count", store="local", operation="put"
            ),
            1,
        )
        self.assertEqual(
            value(
                s, "cosgw_store_request_seconds_count", store="local", operation="head"
            ),
            2,
        )
        self.assertEqual(
            value(
                s,
                "cosgw_store_errors_total",
                store="local",
                operation="head",
                error="NoSuchKey",
            ),
            1,
        )
        self.assertEqual(
            value(
                s, "cosgw_store_errors_total", store="local", operation="put", error="x"
            ),
            0,
        )

    @defer.inlineCallbacks
    def test_unwatched_store_not_timed(self) -> Any:
        self.metrics.unwatch_stores({"local": self.store})
        yield self.store.put("k", b"1")
        s = scrape(self.metrics)
        self.assertEqual(
            value(
                s, "cosgw_store_request_seconds_count", store="local", operation="put"
            ),
            0,
        )


class LiveGaugeTests(unittest.SynchronousTestCase):
    """Gauges read the live state at each scrape."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.table = SessionTable(self.clock)
        store = MemoryStore(self.clock)
        store.put("users/carol/one", b"x" * 300)
        self.usage = Usage(store, "users/carol/", 1000, 10)
        defer.ensureDeferred(self.usage.ensure())
        self.buffers = UploadBuffers(4096)
        settings = TransferSettings(buffers=self.buffers)
        accounts = {
            "carol": Account(
                "carol", store, "users/carol", frozenset(), usage=self.usage
            ),
            "dave": Account("dave", store, "users/dave", frozenset()),
        }
        self.pool = ThreadPool(0, 3, "test-gauges")
        self.defender = LoginDefender(self.clock, max_failures=2, base_delay=0)
        self.readiness = Readiness(lambda: [], ["s"])
        self.metrics = GatewayMetrics(self.table)
        self.metrics.registry.register(
            LiveCollector(
                LiveParts(
                    self.table,
                    Accounts(accounts, settings),
                    self.pool,
                    self.defender,
                    self.readiness,
                    self.metrics,
                )
            )
        )

    def test_gauges(self) -> None:
        ftp = self.table.open("ftp", "127.0.0.1", 1, lambda reason: None)
        sftp = self.table.open("sftp", "127.0.0.1", 2, lambda reason: None)
        self.table.open("sftp", "127.0.0.1", 3, lambda reason: None)
        ftp.start_transfer("upload", "/a")
        sftp.start_transfer("download", "/b", size=10)
        self.buffers.claim(1000, lambda claim: None)
        for _ in range(2):
            self.defender.failed("192.0.2.1", "mallory")
        self.metrics.in_flight[("s", "upload_part")] = 2
        s = scrape(self.metrics)
        self.assertEqual(value(s, "cosgw_sessions", protocol="ftp"), 1)
        self.assertEqual(value(s, "cosgw_sessions", protocol="sftp"), 2)
        self.assertEqual(value(s, "cosgw_sessions", protocol="ftps"), 0)
        self.assertEqual(
            value(s, "cosgw_transfers_in_progress", protocol="ftp", direction="upload"),
            1,
        )
        self.assertEqual(
            value(
                s,
                "cosgw_transfers_in_progress",
                protocol="sftp",
                direction="download",
            ),
            1,
        )
        self.assertEqual(value(s, "cosgw_threadpool_max_threads"), 3)
        self.assertEqual(value(s, "cosgw_threadpool_busy_threads"), 0)
        self.assertEqual(value(s, "cosgw_upload_buffer_bytes"), 1000)
        self.assertEqual(value(s, "cosgw_upload_buffer_limit_bytes"), 4096)
        self.assertEqual(value(s, "cosgw_upload_parts_in_flight"), 2)
        self.assertEqual(value(s, "cosgw_defender_bans_total"), 1)
        self.assertEqual(value(s, "cosgw_quota_used_bytes", user="carol"), 300)
        self.assertEqual(value(s, "cosgw_quota_limit_bytes", user="carol"), 1000)
        self.assertEqual(value(s, "cosgw_quota_used_files", user="carol"), 1)
        self.assertEqual(value(s, "cosgw_quota_limit_files", user="carol"), 10)
        self.assertNotIn(
            ("cosgw_quota_used_bytes", (("user", "dave"),)), s, "no quota, no series"
        )
        self.assertEqual(value(s, "cosgw_store_up", store="s"), 0)
        self.assertEqual(value(s, "cosgw_ready"), 0)
        self.readiness.stores["s"].ok = True
        s = scrape(self.metrics)
        self.assertEqual(value(s, "cosgw_store_up", store="s"), 1)
        self.assertEqual(value(s, "cosgw_ready"), 1)

    def test_queued_pool_work(self) -> None:
        """Work given to a pool that has not started waits: it is queued."""
        self.pool.callInThread(lambda: None)
        self.addCleanup(self.pool.stop)
        s = scrape(self.metrics)
        self.assertEqual(value(s, "cosgw_threadpool_queued"), 1)


class RegistryTests(unittest.SynchronousTestCase):
    def test_each_gateway_has_its_own_registry(self) -> None:
        first = GatewayMetrics(SessionTable(Clock()))
        second = GatewayMetrics(SessionTable(Clock()))
        self.assertIsNot(first.registry, second.registry)
        first.bytes.labels("ftp", "upload").inc(5)
        self.assertEqual(
            value(
                scrape(second),
                "cosgw_transfer_bytes_total",
                protocol="ftp",
                direction="upload",
            ),
            0,
        )
        # Nothing reaches the global registry.
        from prometheus_client import REGISTRY

        self.assertIsNone(REGISTRY.get_sample_value("cosgw_transfer_bytes_total"))


class GatewayMetricsTests(unittest.TestCase):
    """A real gateway's /metrics after real FTP and SFTP transfers."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(
            self, "cos", admin_listen="tcp:0:interface=127.0.0.1"
        )

    @defer.inlineCallbacks
    def scrape(self) -> Any:
        answer = yield in_thread(request, self.gw.admin_port, "/metrics")
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.headers["Content-Type"].startswith("text/plain"))
        return samples(answer.text)

    @defer.inlineCallbacks
    def test_byte_counters_rise_by_the_sizes_moved(self) -> Any:
        before = yield self.scrape()
        up, down = random_bytes(1_234_567), random_bytes(345_678)
        self.gw.inspector.server.boto3_client().put_object(
            Bucket=self.gw.inspector.bucket, Key="down.bin", Body=down
        )

        def ftp_session() -> bytes:
            ftp = connect(self.gw)
            ftp.storbinary("STOR up.bin", io.BytesIO(up))
            got = io.BytesIO()
            ftp.retrbinary("RETR down.bin", got.write)
            ftp.quit()
            return got.getvalue()

        self.assertEqual((yield in_thread(ftp_session)), down)
        self.assertEqual(self.gw.inspector.read("up.bin"), up)
        # The session's end is seen by the gateway after QUIT's reply.
        yield _until(lambda: not self.gw.service.sessions.sessions)
        after = yield self.scrape()

        def rise(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(
            rise("cosgw_transfer_bytes_total", protocol="ftp", direction="upload"),
            len(up),
        )
        self.assertEqual(
            rise("cosgw_transfer_bytes_total", protocol="ftp", direction="download"),
            len(down),
        )
        for direction in ("upload", "download"):
            self.assertEqual(
                rise(
                    "cosgw_transfers_total",
                    protocol="ftp",
                    direction=direction,
                    outcome="ok",
                ),
                1,
            )
            self.assertEqual(
                rise(
                    "cosgw_transfer_duration_seconds_count",
                    protocol="ftp",
                    direction=direction,
                ),
                1,
            )
        self.assertEqual(rise("cosgw_logins_total", protocol="ftp", outcome="ok"), 1)
        self.assertEqual(rise("cosgw_sessions_opened_total", protocol="ftp"), 1)
        self.assertEqual(value(after, "cosgw_sessions", protocol="ftp"), 0)
        # The upload's parts (1 MiB) and the download's GET reached the store.
        for operation in ("upload_part", "complete_multipart", "open"):
            self.assertGreaterEqual(
                rise(
                    "cosgw_store_request_seconds_count",
                    store="store",
                    operation=operation,
                ),
                1,
                operation,
            )
        self.assertEqual(value(after, "cosgw_store_up", store="store"), 1)
