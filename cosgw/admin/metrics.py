"""
The gateway's Prometheus metrics, on a registry of its own.

Two sources feed them, so that nothing in the protocols or the transfer
code knows metrics exist:

  - counters and histograms of what clients did come from the audit events
    (L{cosgw.audit}): L{GatewayMetrics.observe} is a twisted.logger
    observer.  The log publisher is global and a process may run several
    gateways (tests do), so an event counts only when its session is one
    this gateway opened (its C{session-open} found the session in this
    gateway's table);
  - the store's request latency and errors come from a
    L{cosgw.storage._runner.StoreObserver} per store (L{StoreWatch});
  - gauges of live state (sessions, threads, buffers, quotas) are read when
    Prometheus scrapes, by L{cosgw.admin.live.LiveCollector}.

Everything here runs on the reactor thread.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.logger import ILogObserver
from zope.interface import implementer

from cosgw.audit import TRANSFER_EVENTS, SessionTable, audit_fields

__all__ = ["GatewayMetrics", "StoreWatch"]

#: Seconds a transfer may take, from a small file to a large upload.
TRANSFER_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400)

#: Seconds one store request may take: a HEAD on a near region to a part
#: upload over a slow link (or with the store's retries).
STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: The audit events counted as file operations (the rest are sessions,
#: logins and transfers).
OPERATION_EVENTS = frozenset(
    {"delete", "rename", "mkdir", "rmdir", "mtime", "list", "resume"}
)


@implementer(ILogObserver)
class GatewayMetrics:
    """
    The counters and histograms of one gateway, and the audit observer (the
    instance itself) and store watchers that feed them.

    @ivar registry: this gateway's own registry (never the global one).
    @ivar in_flight: store requests asked for and not answered yet, by
        (store, operation).
    """

    def __init__(self, sessions: SessionTable) -> None:
        self.sessions = sessions
        self.registry = CollectorRegistry()
        self.in_flight: Tally[tuple[str, str]] = Tally()
        #: Ids of this gateway's sessions, from their open to their close.
        self._mine: set[str] = set()
        registry = self.registry
        self.sessions_opened = Counter(
            "cosgw_sessions_opened",
            "Client connections accepted, by protocol at connect.",
            ["protocol"],
            registry=registry,
        )
        self.logins = Counter(
            "cosgw_logins",
            "Logins, by protocol and outcome (ok, failed).",
            ["protocol", "outcome"],
            registry=registry,
        )
        self.bytes = Counter(
            "cosgw_transfer_bytes",
            "Bytes moved between clients and the gateway by finished"
            " transfers (aborted ones included), by protocol and direction.",
            ["protocol", "direction"],
            registry=registry,
        )
        self.transfers = Counter(
            "cosgw_transfers",
            "Finished transfers, by protocol, direction and outcome (ok,"
            " error, aborted).",
            ["protocol", "direction", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "cosgw_transfer_duration_seconds",
            "How long finished transfers took, by protocol and direction.",
            ["protocol", "direction"],
            buckets=TRANSFER_BUCKETS,
            registry=registry,
        )
        self.operations = Counter(
            "cosgw_operations",
            "File operations other than transfers (delete, rename, mkdir,"
            " rmdir, mtime, list, resume), by protocol and outcome.",
            ["protocol", "operation", "outcome"],
            registry=registry,
        )
        self.store_seconds = Histogram(
            "cosgw_store_request_seconds",
            "Time one store request took in its pool thread (the store's"
            " retries included), by store and operation.",
            ["store", "operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "cosgw_store_errors",
            "Store requests that failed, by store, operation and error kind"
            " (NoSuchKey is an answer the gateway often expects).",
            ["store", "operation", "error"],
            registry=registry,
        )

    def watch_stores(self, stores: Mapping[str, Any]) -> None:
        """Time every request of the stores that can be watched."""
        for name, store in stores.items():
            if hasattr(store, "observer"):
                store.observer = StoreWatch(self, name)

    def unwatch_stores(self, stores: Mapping[str, Any]) -> None:
        for store in stores.values():
            if isinstance(getattr(store, "observer", None), StoreWatch):
                store.observer = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        """A twisted.logger observer: count this gateway's audit events."""
        fields = audit_fields(event)
        if fields is None:
            return
        session = fields.get("session")
        name = fields.get("event")
        protocol = str(fields.get("protocol", ""))
        if name == "session-open":
            if self.sessions.get(str(session)) is not None:
                self._mine.add(str(session))
                self.sessions_opened.labels(protocol).inc()
            return
        if session not in self._mine:
            return
        outcome = str(fields.get("outcome", ""))
        if name == "session-close":
            self._mine.discard(str(session))
        elif name == "login":
            self.logins.labels(protocol, "ok").inc()
        elif name == "login-failed":
            self.logins.labels(protocol, "failed").inc()
        elif name in TRANSFER_EVENTS:
            self._transfer(fields, protocol, "aborted" if name == "abort" else outcome)
        elif name in OPERATION_EVENTS:
            self.operations.labels(protocol, name, outcome).inc()

    def _transfer(self, fields: Mapping[str, Any], protocol: str, outcome: str) -> None:
        direction = str(fields.get("direction", ""))
        self.transfers.labels(protocol, direction, outcome).inc()
        moved = fields.get("bytes")
        if isinstance(moved, int) and moved > 0:
            self.bytes.labels(protocol, direction).inc(moved)
        duration = fields.get("duration")
        if isinstance(duration, (int, float)):
            self.duration.labels(protocol, direction).observe(duration)


class StoreWatch:
    """One store's requests, timed into the gateway's metrics."""

    def __init__(self, metrics: GatewayMetrics, store: str) -> None:
        self._metrics = metrics
        self._store = store

    def request_started(self, operation: str) -> None:
        self._metrics.in_flight[(self._store, operation)] += 1

    def request_finished(
        self, operation: str, seconds: Optional[float], error: Optional[BaseException]
    ) -> None:
        metrics = self._metrics
        key = (self._store, operation)
        metrics.in_flight[key] -= 1
        if metrics.in_flight[key] <= 0:
            del metrics.in_flight[key]
        if seconds is None:
            return
        metrics.store_seconds.labels(self._store, operation).observe(seconds)
        if error is not None:
            metrics.store_errors.labels(
                self._store, operation, type(error).__name__
            ).inc()
