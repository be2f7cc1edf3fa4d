"""
The gauges of the gateway's live state, read when Prometheus scrapes
(a custom collector on the gateway's registry): sessions and transfers now,
the thread pool, the upload buffers, store requests in flight, the login
defender, quota usage and readiness.

A scrape reads plain attributes on the reactor thread; nothing here waits
or walks more than the live sessions and the accounts.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.python.threadpool import ThreadPool

from cosgw.admin.health import Readiness
from cosgw.admin.metrics import GatewayMetrics
from cosgw.audit import SessionTable
from cosgw.policy.accounts import Accounts
from cosgw.policy.defender import LoginDefender

__all__ = ["LiveCollector", "LiveParts"]

#: Protocols shown even with no session, so their series always exist.
PROTOCOLS = ("ftp", "ftps", "sftp", "webdav", "webdavs")
DIRECTIONS = ("upload", "download")


@dataclass(frozen=True)
class LiveParts:
    """The live state of a gateway that the gauges read."""

    sessions: SessionTable
    accounts: Accounts
    pool: ThreadPool
    defender: LoginDefender
    readiness: Readiness
    metrics: GatewayMetrics


class LiveCollector(Collector):
    """Gauges (and the defender's ban count) read at each scrape."""

    def __init__(self, parts: LiveParts) -> None:
        self._parts = parts

    def describe(self) -> list[Metric]:
        # Without it the registry would collect once at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._sessions()
        yield from self._pool()
        yield from self._uploads()
        yield from self._defender()
        yield from self._quotas()
        yield from self._readiness()
        yield from self._shared()

    def _shared(self) -> Iterator[Metric]:
        shared = self._parts.readiness.shared
        if shared is None:
            return
        yield GaugeMetricFamily(
            "cosgw_shared_state_up",
            "1 while Redis (shared_state) answers, else 0.",
            value=1 if shared.up else 0,
        )
        yield CounterMetricFamily(
            "cosgw_shared_state_fallbacks",
            "Decisions taken without Redis (shared_state_failure) since start.",
            value=shared.fallbacks,
        )

    def _sessions(self) -> Iterator[Metric]:
        table = self._parts.sessions
        by_protocol = Tally({protocol: 0 for protocol in PROTOCOLS})
        by_protocol.update(s.protocol for s in table.sessions.values())
        sessions = GaugeMetricFamily(
            "cosgw_sessions", "Client sessions open now.", labels=["protocol"]
        )
        for protocol, count in sorted(by_protocol.items()):
            sessions.add_metric([protocol], count)
        yield sessions
        moving = Tally({(p, d): 0 for p in PROTOCOLS for d in DIRECTIONS})
        moving.update((t.session.protocol, t.direction) for t in table.transfers())
        transfers = GaugeMetricFamily(
            "cosgw_transfers_in_progress",
            "Uploads and downloads in progress now.",
            labels=["protocol", "direction"],
        )
        for (protocol, direction), count in sorted(moving.items()):
            transfers.add_metric([protocol, direction], count)
        yield transfers

    def _pool(self) -> Iterator[Metric]:
        pool = self._parts.pool
        # The team's statistics hold busy and queued together; ThreadPool's
        # public working and waiters build lists, and the queue has no
        # public count.
        stats = pool._team.statistics()
        yield GaugeMetricFamily(
            "cosgw_threadpool_busy_threads",
            "Threads of the gateway's pool running blocking work now.",
            value=stats.busyWorkerCount,
        )
        yield GaugeMetricFamily(
            "cosgw_threadpool_queued",
            "Blocking calls waiting for a thread of the pool.",
            value=stats.backloggedWorkCount,
        )
        yield GaugeMetricFamily(
            "cosgw_threadpool_max_threads",
            "The pool's size ([transfer] threads).",
            value=pool.max,
        )

    def _uploads(self) -> Iterator[Metric]:
        metrics = self._parts.metrics
        in_flight = GaugeMetricFamily(
            "cosgw_store_requests_in_flight",
            "Store requests asked for and not answered yet (waiting for a"
            " thread included), by store and operation.",
            labels=["store", "operation"],
        )
        parts = 0
        for (store, operation), count in sorted(metrics.in_flight.items()):
            in_flight.add_metric([store, operation], count)
            if operation == "upload_part":
                parts += count
        yield in_flight
        yield GaugeMetricFamily(
            "cosgw_upload_parts_in_flight",
            "Upload parts sent to a store and not acknowledged yet.",
            value=parts,
        )
        buffers = self._parts.accounts.settings.buffers
        if buffers is None:
            return
        yield GaugeMetricFamily(
            "cosgw_upload_buffer_bytes",
            "Bytes of upload parts held in memory now (upload_buffer_budget).",
            value=buffers.used,
        )
        yield GaugeMetricFamily(
            "cosgw_upload_buffer_limit_bytes",
            "The upload buffer budget ([transfer] upload_buffer_budget).",
            value=buffers.limit,
        )
        yield GaugeMetricFamily(
            "cosgw_upload_buffer_waiting",
            "Uploads paused until the budget has room for their next part.",
            value=buffers.waiting,
        )

    def _defender(self) -> Iterator[Metric]:
        defender = self._parts.defender
        yield CounterMetricFamily(
            "cosgw_defender_bans",
            "Client addresses banned by the login defender since start.",
            value=defender.bans,
        )
        yield GaugeMetricFamily(
            "cosgw_defender_tracked_addresses",
            "Client addresses whose failed logins the defender remembers.",
            value=defender.tracked,
        )

    def _quotas(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "cosgw_quota_used_bytes",
            "Bytes a user with a quota holds (uploads in progress and parts"
            " kept for a resume included).",
            labels=["user"],
        )
        limit = GaugeMetricFamily(
            "cosgw_quota_limit_bytes", "A user's byte quota.", labels=["user"]
        )
        files = GaugeMetricFamily(
            "cosgw_quota_used_files",
            "Files a user with a quota holds (new files being uploaded included).",
            labels=["user"],
        )
        files_limit = GaugeMetricFamily(
            "cosgw_quota_limit_files", "A user's file quota.", labels=["user"]
        )
        for name, account in sorted(self._parts.accounts.accounts.items()):
            usage = account.usage
            if usage is None or not usage.limited or not usage.ready:
                continue
            used.add_metric([name], usage.bytes + usage.reserved + usage.kept)
            files.add_metric([name], usage.files + usage.pending_files)
            if usage.max_bytes is not None:
                limit.add_metric([name], usage.max_bytes)
            if usage.max_files is not None:
                files_limit.add_metric([name], usage.max_files)
        yield from (used, limit, files, files_limit)

    def _readiness(self) -> Iterator[Metric]:
        readiness = self._parts.readiness
        up = GaugeMetricFamily(
            "cosgw_store_up",
            "1 when the store answered its last check, else 0.",
            labels=["store"],
        )
        for name, health in sorted(readiness.stores.items()):
            up.add_metric([name], 1 if health.ok else 0)
        yield up
        yield GaugeMetricFamily(
            "cosgw_ready",
            "1 when /readyz answers 200 (listening, stores answered, not"
            " draining), else 0.",
            value=0 if readiness.problems() else 1,
        )
