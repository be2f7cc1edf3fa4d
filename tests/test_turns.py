"""
Tests for L{cosgw.policy.turns}: per-key turns with a verdict asked before
each start, on a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Union

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw.policy.turns import Abandoned, Turns


class _Calls:
    """Start callables that record their calls and return Deferreds."""

    def __init__(self) -> None:
        self.started: list[tuple[str, Deferred[Any]]] = []
        self.cancelled: list[str] = []

    def start(self, name: str) -> Any:
        def start() -> Deferred[Any]:
            d: Deferred[Any] = Deferred(lambda _: self.cancelled.append(name))
            self.started.append((name, d))
            return d

        return start

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.started]

    def finish(self, name: str, result: Any = "done") -> None:
        [d] = [d for n, d in self.started if n == name]
        d.callback(result)


class TurnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.verdicts: dict[str, Union[BaseException, float]] = {}
        self.turns = Turns(self.clock, 2, lambda key: self.verdicts.get(key, 0.0))
        self.calls = _Calls()

    def run_(self, key: str, name: str) -> Deferred[Any]:
        return self.turns.run(key, self.calls.start(name))

    def test_at_most_max_running_per_key(self) -> None:
        """
        Two calls of a key run; the third waits until one ends, its outcome
        delivered first; another key is not held up.
        """
        a1, a2, a3 = (self.run_("a", f"a{n}") for n in (1, 2, 3))
        b1 = self.run_("b", "b1")
        self.assertEqual(self.calls.names, ["a1", "a2", "b1"])
        self.assertEqual(self.turns.counts("a"), (2, 1))
        order: list[str] = []
        a1.addCallback(lambda r: order.append(f"a1 {r} {self.calls.names}"))
        self.calls.finish("a1", "ok")
        self.assertEqual(order, ["a1 ok ['a1', 'a2', 'b1']"])
        self.assertEqual(self.calls.names, ["a1", "a2", "b1", "a3"])
        for name in ("a2", "a3", "b1"):
            self.calls.finish(name)
        for d in (a2, a3, b1):
            self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(self.turns.counts("a"), (0, 0))
        self.assertEqual(self.turns._queues, {})

    def test_synchronous_calls_do_not_recurse(self) -> None:
        """A thousand waiting calls that end at once all run, in order."""
        ran: list[int] = []

        def start(n: int) -> Any:
            return lambda: succeed(ran.append(n))

        blocker = self.run_("a", "blocker")
        self.run_("a", "blocker2")
        results = [self.turns.run("a", start(n)) for n in range(1000)]
        self.calls.finish("blocker")
        self.assertEqual(ran, list(range(1000)))
        for d in results:
            self.successResultOf(d)
        self.successResultOf(blocker)

    def test_verdict_exception_fails_every_waiting_call(self) -> None:
        """Calls waiting when the verdict turns to an error fail, unstarted."""
        self.run_("a", "a1")
        self.run_("a", "a2")
        waiting = [self.run_("a", f"w{n}") for n in range(3)]
        self.verdicts["a"] = ValueError("banned")
        self.calls.finish("a1")
        for d in waiting:
            self.assertEqual(str(self.failureResultOf(d, ValueError).value), "banned")
        self.assertEqual(self.calls.names, ["a1", "a2"])

    def test_wait_then_start(self) -> None:
        """A wait from the verdict is a timer; the call starts when it ends."""
        self.verdicts["a"] = 3.0
        d = self.run_("a", "a1")
        self.assertEqual(self.calls.names, [])
        self.clock.advance(2.0)
        self.assertEqual(self.calls.names, [])
        self.verdicts["a"] = 0.0
        self.clock.advance(1.0)
        self.assertEqual(self.calls.names, ["a1"])
        self.calls.finish("a1")
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_poke_asks_again(self) -> None:
        """L{Turns.poke} applies a changed verdict to the waiting calls."""
        self.verdicts["a"] = 60.0
        d = self.run_("a", "a1")
        self.verdicts["a"] = KeyError("now")
        self.turns.poke("a")
        self.failureResultOf(d, KeyError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.turns.poke("nothing")

    def test_cancel_waiting(self) -> None:
        """A waiting call cancelled never starts and leaves no queue."""
        self.verdicts["a"] = 5.0
        d = self.run_("a", "a1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(5.0)
        self.assertEqual(self.calls.names, [])
        self.assertEqual(self.turns._queues, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_running(self) -> None:
        """A running call cancelled is cancelled itself and fails Abandoned."""
        d = self.run_("a", "a1")
        d.cancel()
        self.failureResultOf(d, Abandoned)
        self.assertEqual(self.calls.cancelled, ["a1"])
        self.assertEqual(self.turns.counts("a"), (0, 0))

    def test_failures_are_delivered(self) -> None:
        """A call's failure is the result's failure."""
        d = self.run_("a", "a1")
        self.calls.started[0][1].errback(RuntimeError("x"))
        self.failureResultOf(d, RuntimeError)

    def test_max_running_checked(self) -> None:
        self.assertRaises(ValueError, Turns, self.clock, 0, lambda key: 0.0)
