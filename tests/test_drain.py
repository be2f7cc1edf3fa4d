"""
The drain's state table (L{cosgw.lifecycle.drain.Drain}) on a memory clock,
over a real L{SessionTable}, L{Readiness} and L{UploadRegistry}: sessions
are told, busy ones get the timeout, what is left is interrupted, uploads
being written settle, and the log says so once at each step.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.trial import unittest

from cosgw.admin.health import Readiness
from cosgw.audit import Session, SessionTable
from cosgw.lifecycle.drain import (
    FORCE_GRACE,
    REASON,
    SETTLE_TIMEOUT,
    Drain,
    Phase,
    install_signal_handlers,
)
from cosgw.transfer.registry import UploadRegistry
from tests.logevents import LogEvents


class _Frontend:
    """What the drain asks of a frontend."""

    def __init__(self) -> None:
        self.refusing: Optional[str] = None
        self.refused = 0

    def refuse_new(self, reason: str) -> None:
        self.refusing = reason


class _Notifier:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def stopping(self, status: str = "stopping") -> None:
        self.statuses.append(status)


class DrainTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.table = SessionTable(self.clock)
        self.frontend = _Frontend()
        self.readiness = Readiness(lambda: [], [])
        self.notifier = _Notifier()
        self.registry = UploadRegistry()
        self.stops: list[str] = []
        self.log = LogEvents(self, "cosgw.lifecycle")
        #: (session id, now) of every drain call a session got.
        self.told: list[tuple[str, bool]] = []

    def drain(self, timeout: float = 60, stop: Any = None) -> Drain:
        return Drain(
            self.clock,
            self.table,
            timeout,
            frontends=[self.frontend],
            readiness=self.readiness,
            notifier=self.notifier,  # type: ignore[arg-type]  # its stopping() alone
            registry=self.registry,
            stop=stop or (lambda: self.stops.append("stop")),
        )

    def session(self, busy: bool = False, ends_when_told: bool = True) -> Session:
        """
        A session that, told to drain, ends at once when idle (or forced) if
        C{ends_when_told}, as the frontends do; C{busy}: one upload runs.
        """
        session = self.table.open("ftp", "192.0.2.1", 5000, lambda reason: None)
        if busy:
            session.start_transfer("upload", "/big.bin")

        def drain(reason: str, now: bool) -> None:
            self.assertEqual(reason, REASON)
            self.told.append((session.id, now))
            if ends_when_told and (now or not session.transfers):
                self.table.close(session, reason)

        session.drain = drain
        return session

    def finish(self, session: Session) -> None:
        """A busy session's transfer ends and the session with it."""
        for transfer in list(session.transfers.values()):
            transfer.finish()
        self.table.close(session, REASON)

    def messages(self, level: LogLevel = LogLevel.info) -> list[str]:
        return [e["log_format"] for e in self.log.at(level)]

    def test_nothing_open_is_done_at_once(self) -> None:
        drain = self.drain()
        done = drain.begin("SIGTERM")
        self.assertIsNone(self.successResultOf(done))
        self.assertIs(drain.phase, Phase.DONE)
        self.assertEqual(
            self.readiness.problems(), ["draining: shutting down (SIGTERM)"]
        )
        self.assertEqual(self.frontend.refusing, REASON)
        self.assertEqual(
            self.notifier.statuses, ["draining: 0 sessions, 0 transfers in progress"]
        )
        self.assertEqual(drain.timeline, {"empty": 0.0, "done": 0.0})
        self.assertEqual(len(self.messages()), 2)  # the start and the end
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_sessions_end_at_once_busy_ones_after_their_transfer(self) -> None:
        idle = self.session()
        busy = self.session(busy=True)
        drain = self.drain()
        done = drain.begin("SIGTERM")
        self.assertEqual(self.told, [(idle.id, False), (busy.id, False)])
        self.assertEqual(list(self.table.sessions), [busy.id])
        self.clock.advance(5)
        self.assertNoResult(done)
        self.finish(busy)
        self.assertNoResult(done)  # not inside the last session's close
        self.clock.advance(0)
        self.successResultOf(done)
        self.assertEqual(drain.timeline, {"empty": 5.0, "done": 5.0})
        self.assertEqual(drain.counts, {"sessions": 2, "transfers": 1, "forced": 0})
        start, end = self.log.at(LogLevel.info)
        self.assertEqual(start["what"], "2 sessions, 1 transfers in progress")
        self.assertEqual(start["cause"], "SIGTERM")
        self.assertEqual(
            end["timeline"],
            "1 transfers ended, the last at +5.000 s; no session interrupted;"
            " the last session ended at +5.000 s; 0 new connections refused",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_interrupts_what_is_left(self) -> None:
        busy = self.session(busy=True)
        drain = self.drain(timeout=2)
        done = drain.begin("SIGTERM")
        self.clock.advance(1.9)
        self.assertEqual(self.told, [(busy.id, False)])
        self.clock.advance(0.1)
        self.assertEqual(self.told, [(busy.id, False), (busy.id, True)])
        self.successResultOf(done)
        self.assertEqual(drain.timeline, {"forced": 2.0, "empty": 2.0, "done": 2.0})
        [interrupted] = [
            e for e in self.log.events if "interrupting" in e["log_format"]
        ]
        self.assertEqual(
            (interrupted["cause"], interrupted["what"], interrupted["elapsed"]),
            ("timeout", "upload of /big.bin at 0 bytes", 2.0),
        )
        self.assertEqual(drain.counts["forced"], 1)

    def test_sessions_that_do_not_end_after_the_interruption(self) -> None:
        stuck = self.session(busy=True, ends_when_told=False)
        drain = self.drain(timeout=2)
        done = drain.begin("SIGTERM")
        self.clock.advance(2)
        self.clock.advance(FORCE_GRACE - 0.1)
        self.assertNoResult(done)
        self.clock.advance(0.1)
        self.successResultOf(done)
        self.assertIn(stuck.id, self.table.sessions)  # ends with the process
        [warning] = self.log.at(LogLevel.warn)
        self.assertEqual(warning["left"], 1)
        self.assertNotIn("empty", drain.timeline)

    def test_a_second_signal_forces_at_once(self) -> None:
        busy = self.session(busy=True)
        drain = self.drain()
        drain.signalled("SIGTERM")
        self.assertIs(drain.phase, Phase.DRAINING)
        self.assertEqual(self.stops, [])
        self.clock.advance(0)
        self.assertEqual(self.stops, ["stop"])  # the reactor's stop, once
        self.clock.advance(1)
        drain.signalled("SIGINT")
        self.assertEqual(self.told, [(busy.id, False), (busy.id, True)])
        self.clock.advance(0)
        self.assertIs(drain.phase, Phase.DONE)
        self.assertEqual(drain.timeline["forced"], 1.0)
        self.assertEqual(drain.cause, "SIGTERM")
        drain.signalled("SIGTERM")  # after the end: only a log line
        self.assertEqual(self.stops, ["stop"])

    def test_zero_timeout_interrupts_at_once(self) -> None:
        busy = self.session(busy=True)
        drain = self.drain(timeout=0)
        done = drain.begin("SIGTERM")
        self.assertEqual(self.told, [(busy.id, False), (busy.id, True)])
        self.clock.advance(0)
        self.successResultOf(done)

    def test_uploads_being_written_settle_first(self) -> None:
        self.registry.add("upload-1")
        drain = self.drain()
        done = drain.begin("SIGTERM")
        self.assertIs(drain.phase, Phase.SETTLING)
        self.clock.advance(1)
        self.assertNoResult(done)
        self.registry.discard("upload-1")
        self.clock.advance(0.05)
        self.successResultOf(done)

    def test_settling_is_bounded(self) -> None:
        self.registry.add("upload-1")
        done = self.drain().begin("SIGTERM")
        self.clock.pump([0.05] * int(SETTLE_TIMEOUT / 0.05 - 1))
        self.assertNoResult(done)
        self.clock.pump([0.05] * 3)
        self.successResultOf(done)
        [warning] = self.log.at(LogLevel.warn)
        self.assertEqual(warning["count"], 1)

    def test_begin_twice_is_one_drain(self) -> None:
        busy = self.session(busy=True)
        drain = self.drain()
        first = drain.begin("SIGTERM")
        second = drain.begin("the service was stopped")
        self.assertEqual(drain.cause, "SIGTERM")
        self.finish(busy)
        self.clock.advance(0)
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(drain.begin("later"))  # done: at once
        self.assertEqual(len(self.messages()), 2)

    def test_request_stop_answers_what_it_found(self) -> None:
        self.session(busy=True)

        def stopped_already() -> None:
            raise ReactorNotRunning()

        drain = self.drain(timeout=30, stop=stopped_already)
        found = drain.request_stop("cosgw stop by admin - from local")
        self.assertEqual(
            found,
            {
                "draining": True,
                "phase": "draining",
                "cause": "cosgw stop by admin - from local",
                "sessions": 1,
                "transfers": 1,
                "timeout": 30,
            },
        )
        self.clock.advance(0)  # the reactor stopping already is no error
        self.assertEqual(drain.request_stop("again")["cause"], found["cause"])

    def test_a_frontend_that_fails_to_tell_its_session(self) -> None:
        broken = self.table.open("sftp", "192.0.2.2", 22, lambda reason: None)

        def fails(reason: str, now: bool) -> None:
            raise RuntimeError("frontend bug")

        broken.drain = fails
        idle = self.session()
        drain = self.drain(timeout=1)
        drain.begin("SIGTERM")
        self.assertEqual(self.told, [(idle.id, False)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(FORCE_GRACE)
        self.assertIs(drain.phase, Phase.DONE)

    def test_a_session_without_a_drain_hook_is_kicked_when_idle(self) -> None:
        kicks: list[str] = []
        self.table.open("ftp", "192.0.2.3", 21, kicks.append)
        self.drain().begin("SIGTERM")
        self.assertEqual(kicks, [REASON])


class SignalTests(unittest.SynchronousTestCase):
    """The handlers L{install_signal_handlers} sets once the reactor runs."""

    def setUp(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        self.clock = MemoryReactorClock()
        self.table = SessionTable(self.clock)
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []

    def install(self) -> Drain:
        drain = Drain(self.clock, self.table, 60)
        reactor = MemoryReactorClock()
        reactor.callFromThread = lambda f, *a: self.calls.append((f, a))  # type: ignore[method-assign]  # recorded
        install_signal_handlers(drain, reactor)
        self.assertEqual(self.calls, [])
        reactor.run()  # callWhenRunning: the reactor set its own by then
        return drain

    def test_signals_go_through_the_reactor(self) -> None:
        signal.signal(signal.SIGTERM, lambda *a: None)
        signal.signal(signal.SIGINT, lambda *a: None)
        drain = self.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        self.assertEqual(
            self.calls,
            [(drain.signalled, ("SIGTERM",)), (drain.signalled, ("SIGINT",))],
        )

    def test_an_ignored_signal_stays_ignored(self) -> None:
        signal.signal(signal.SIGTERM, lambda *a: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.install()
        self.assertIs(signal.getsignal(signal.SIGINT), signal.SIG_IGN)
