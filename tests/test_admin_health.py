"""
/healthz and /readyz: alive, and ready only while every listener listens,
every store answered its last check and the gateway is not draining.
Units over a Clock and a MemoryStore; end to end over the COS test server,
whose faults make the store refuse, then stop answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from cosgw.admin.health import Readiness, StoreChecks
from cosgw.interfaces import ListPage
from cosgw.testing import MemoryStore
from tests.admintesting import Answer, request
from tests.harness import in_thread, start_gateway
from tests.logevents import LogEvents

ADMIN = "tcp:0:interface=127.0.0.1"


class _Listener:
    def __init__(self, description: str, port: Optional[object]) -> None:
        self.description = description
        self.port = port


class _SilentStore(MemoryStore):
    """A store whose LIST, while C{silent}, is never answered."""

    silent = False
    asked = 0

    def list(self, *args: Any, **kwargs: Any) -> Deferred[ListPage]:
        self.asked += 1
        if self.silent:
            return Deferred()
        return super().list(*args, **kwargs)


class ReadinessTests(unittest.SynchronousTestCase):
    def test_reasons(self) -> None:
        listeners = [_Listener("tcp:21", object()), _Listener("tcp:22", None)]
        readiness = Readiness(lambda: listeners, ["a", "b"])
        readiness.stores["a"].ok = True
        readiness.stores["b"].ok = False
        readiness.stores["b"].reason = "AccessDenied"
        self.assertEqual(
            readiness.problems(),
            ["listener tcp:22: not listening", "store b: AccessDenied"],
        )
        listeners[1].port = object()
        readiness.stores["b"].ok = True
        self.assertEqual(readiness.problems(), [])
        readiness.draining = "stopping"
        self.assertEqual(readiness.problems(), ["draining: stopping"])

    def test_store_not_checked_is_not_ready(self) -> None:
        readiness = Readiness(list, ["a"])
        self.assertEqual(readiness.problems(), ["store a: not checked yet"])


class StoreCheckTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = _SilentStore(self.clock)
        self.readiness = Readiness(list, ["s"])
        self.checks = StoreChecks(
            self.readiness, {"s": self.store}, self.clock, interval=10, timeout=2
        )
        self.events = LogEvents(self, "cosgw.admin.health")
        self.checks.startService()
        self.addCleanup(self.checks.stopService)

    def test_checked_at_start_and_every_interval(self) -> None:
        self.assertEqual(self.store.requests["list"], 1)
        self.assertEqual(self.readiness.problems(), [])
        self.clock.advance(10)
        self.assertEqual(self.store.requests["list"], 2)

    def test_failure_then_recovery(self) -> None:
        self.store.fail_next("list")
        self.clock.advance(10)
        self.assertEqual(self.readiness.problems(), ["store s: list: injected fault"])
        self.clock.advance(10)
        self.assertEqual(self.readiness.problems(), [])
        texts = [e["log_format"] for e in self.events.events]
        self.assertEqual(
            texts,
            ["store {name} is not ready: {reason}", "store {name} answers again"],
        )

    def test_no_answer_within_timeout(self) -> None:
        self.store.silent = True
        self.clock.advance(10)
        self.assertEqual(self.readiness.problems(), [])  # still the last answer
        self.clock.advance(2)
        self.assertEqual(self.readiness.problems(), ["store s: no answer within 2 s"])

    def test_one_check_at_a_time(self) -> None:
        self.store.silent = True
        self.checks.timeout = 100
        for _ in range(5):
            self.clock.advance(10)
        self.assertEqual(self.store.asked, 2)  # at start, then one left waiting

    def test_stop_cancels_quietly(self) -> None:
        self.store.silent = True
        self.clock.advance(10)
        self.checks.stopService()
        self.assertEqual(self.readiness.stores["s"].ok, True)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def _poll(
    check: Callable[[], Deferred[Answer]],
    want: Callable[[Answer], bool],
    seconds: float = 15,
) -> Deferred[Answer]:
    """Ask until the answer is C{want}ed; fail after C{seconds}."""

    async def poll() -> Answer:
        from twisted.internet import reactor

        deadline = time.monotonic() + seconds
        while True:
            answer = await check()
            if want(answer) or time.monotonic() > deadline:
                return answer
            await deferLater(reactor, 0.05, lambda: None)

    return Deferred.fromCoroutine(poll())


class GatewayHealthTests(unittest.TestCase):
    """The real gateway over the COS test server."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, "cos", admin_listen=ADMIN)
        self.server = self.gw.inspector.server
        self.addCleanup(self.server.reset_faults)

    def get(self, path: str) -> Deferred[Answer]:
        return in_thread(request, self.gw.admin_port, path)

    @defer.inlineCallbacks
    def test_healthz(self) -> Any:
        answer = yield self.get("/healthz")
        self.assertEqual((answer.status, answer.text), (200, "ok\n"))

    @defer.inlineCallbacks
    def test_store_refuses_then_answers(self) -> Any:
        answer = yield _poll(lambda: self.get("/readyz"), lambda a: a.status == 200)
        self.assertEqual((answer.status, answer.text), (200, "ready\n"))
        self.server.inject(
            "fail", op="ListObjects", count=-1, status=403, code="AccessDenied"
        )
        self.gw.service.admin.checks.check()
        answer = yield _poll(lambda: self.get("/readyz"), lambda a: a.status != 200)
        self.assertEqual(answer.status, 503)
        self.assertIn("store store: ", answer.text)
        self.assertIn("AccessDenied", answer.text)
        self.server.reset_faults()
        self.gw.service.admin.checks.check()
        answer = yield _poll(lambda: self.get("/readyz"), lambda a: a.status == 200)
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_store_stops_answering(self) -> Any:
        yield _poll(lambda: self.get("/readyz"), lambda a: a.status == 200)
        checks = self.gw.service.admin.checks
        checks.timeout = 0.3
        self.server.inject("delay", op="ListObjects", count=1, seconds=1.5)
        checks.check()
        answer = yield _poll(lambda: self.get("/readyz"), lambda a: a.status != 200)
        self.assertEqual(
            (answer.status, answer.text),
            (503, "store store: no answer within 0.3 s\n"),
        )

    @defer.inlineCallbacks
    def test_listener_not_listening(self) -> Any:
        yield _poll(lambda: self.get("/readyz"), lambda a: a.status == 200)
        listener = self.gw.service.ftp.listeners[0]
        yield listener.stopService()
        answer = yield self.get("/readyz")
        self.assertEqual(answer.status, 503)
        self.assertEqual(
            answer.text, f"listener {listener.description}: not listening\n"
        )
