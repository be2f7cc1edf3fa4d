"""
Taking turns, per key, at something shared and costly: the login
defender's per-address share of password verification.

Each key (a client address) may have at most C{max_running} calls running
at once; further calls wait, first come first served, in a queue of their
own key, so one key never holds more of the shared resource than that, and
the others are never queued behind it.  The queue does not decide alone
when the next call may start: before each start it asks the C{verdict}
callable about the key, which answers

  - an exception: every waiting call of the key fails with it at once, and
    none starts (the defender's L{cosgw.policy.defender.LoginBanned});
  - a number of seconds to wait first (0: start now); a timer on the
    injected clock asks again then (the defender's failure delay).

So the verdict is taken when a call is about to run, not when it arrived:
a ban that falls while calls wait stops every one of them.  When a running
call ends, its outcome is delivered first and the queue moves on after, so
whatever the outcome's callbacks record (a failure, a ban) already holds
for the next verdict.

A queue exists only while its key has calls waiting or running.  Bounding
how many may wait is the caller's policy (L{Turns.counts} says how many
are).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar, Union

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

__all__ = ["Abandoned", "Turns"]

T = TypeVar("T")

#: What the verdict callable answers for a key: fail every waiting call
#: with this exception, or wait this many seconds before the next starts.
Verdict = Union[BaseException, float]


class Abandoned(CancelledError):
    """
    A call was cancelled while it was running: unlike one cancelled while
    it waited, its work may have been done.
    """


class _Turn(Generic[T]):
    """One call: waiting, then running, then delivered."""

    def __init__(self, start: Callable[[], Deferred[T]]) -> None:
        self.start = start
        self.result: Deferred[T] = Deferred()
        #: The running call's Deferred.
        self.inner: Optional[Deferred[T]] = None
        self.abandoned = False


@dataclass
class _Queue:
    """The calls of one key under way."""

    waiting: deque[_Turn[Any]] = field(default_factory=deque)
    running: int = 0
    #: Asks the verdict again when the wait it gave is over.
    timer: Optional[IDelayedCall] = None
    #: Re-entrance guard of L{Turns._pump}: a call that ends at once ends
    #: inside the loop that started it, which then goes round again.
    pumping: bool = False
    again: bool = False


class Turns:
    """Per-key turns: at most C{max_running} calls of a key at once."""

    def __init__(
        self,
        clock: IReactorTime,
        max_running: int,
        verdict: Callable[[str], Verdict],
    ) -> None:
        """
        @param clock: runs the timers of waits.
        @param max_running: most calls of one key running at once.
        @param verdict: asked about a key before each start (see the module
            docstring); called on the reactor thread, must not block.
        @raise ValueError: C{max_running} is below 1.
        """
        if max_running < 1:
            raise ValueError(f"max_running must be at least 1: {max_running!r}")
        self._clock = clock
        self._max_running = max_running
        self._verdict = verdict
        self._queues: dict[str, _Queue] = {}

    def counts(self, key: str) -> tuple[int, int]:
        """(running, waiting) calls of C{key} now."""
        queue = self._queues.get(key)
        return (0, 0) if queue is None else (queue.running, len(queue.waiting))

    def run(self, key: str, start: Callable[[], Deferred[T]]) -> Deferred[T]:
        """
        Call C{start} when it is C{key}'s turn.

        @return: a L{Deferred} with C{start}'s outcome; or failing with the
            verdict's exception, C{start} not called.  Cancelling it takes
            a waiting call out of its queue (L{CancelledError}) or cancels
            a running one (L{Abandoned}, once its Deferred has fired).
        """
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        turn = _Turn(start)
        turn.result = Deferred(lambda _: self._cancel(key, queue, turn))
        queue.waiting.append(turn)
        self._pump(key, queue)
        return turn.result

    def poke(self, key: str) -> None:
        """Ask the verdict about C{key} again now (its state changed)."""
        queue = self._queues.get(key)
        if queue is not None:
            self._pump(key, queue)

    def _pump(self, key: str, queue: _Queue) -> None:
        """Start or fail the waiting calls of C{key} as the verdict says."""
        if queue.pumping:
            queue.again = True
            return
        queue.pumping = True
        try:
            queue.again = True
            while queue.again:
                queue.again = False
                self._pump_once(key, queue)
        finally:
            queue.pumping = False
        self._forget(key, queue)

    def _pump_once(self, key: str, queue: _Queue) -> None:
        while queue.waiting:
            verdict = self._verdict(key)
            if isinstance(verdict, BaseException):
                queue.waiting.popleft().result.errback(verdict)
                continue
            if queue.running >= self._max_running:
                return
            if verdict > 0:
                if queue.timer is None:
                    queue.timer = self._clock.callLater(verdict, self._wake, key, queue)
                return
            self._start(key, queue, queue.waiting.popleft())

    def _wake(self, key: str, queue: _Queue) -> None:
        queue.timer = None
        self._pump(key, queue)

    def _forget(self, key: str, queue: _Queue) -> None:
        """Drop C{key}'s queue once nothing of it is under way."""
        if queue.running or queue.waiting:
            return
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if self._queues.get(key) is queue:
            del self._queues[key]

    def _start(self, key: str, queue: _Queue, turn: _Turn[Any]) -> None:
        queue.running += 1
        turn.inner = maybeDeferred(turn.start)
        turn.inner.addBoth(self._done, key, queue, turn)

    def _done(self, outcome: Any, key: str, queue: _Queue, turn: _Turn[Any]) -> None:
        """Deliver C{turn}'s outcome, then let the next call of C{key} go."""
        queue.running -= 1
        turn.inner = None
        if turn.result.called:
            pass  # cancelled, and a Deferred that ignored it fired later
        elif turn.abandoned:
            turn.result.errback(Abandoned())
        elif isinstance(outcome, Failure):
            turn.result.errback(outcome)
        else:
            turn.result.callback(outcome)
        self._pump(key, queue)

    def _cancel(self, key: str, queue: _Queue, turn: _Turn[Any]) -> None:
        """The canceller of a call's result."""
        if turn.inner is not None:
            turn.abandoned = True
            turn.inner.cancel()
        elif turn in queue.waiting:
            queue.waiting.remove(turn)
            self._forget(key, queue)
