"""
Running blocking store work off the reactor thread, with a bounded queue.

Both stores do blocking work (SDK calls, file I/O).  Rule 2 of the house:
the reactor thread never blocks, and queues stay bounded.  Twisted's thread
pool queue is unbounded, so every call goes through a DeferredSemaphore that
admits at most C{max_pending} calls into the pool at once; the rest wait as
cheap Deferreds on the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class BlockingRunner:
    """Runs callables in a given thread pool, at most C{max_pending} at once."""

    def __init__(
        self, reactor: IReactorFromThreads, pool: ThreadPool, max_pending: int
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self._gate = DeferredSemaphore(max(1, max_pending))

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        @return: A Deferred firing with C{f(*args, **kwargs)} as computed in a
            pool thread, or failing with what it raised.
        """
        return self._gate.run(
            deferToThreadPool, self._reactor, self._pool, f, *args, **kwargs
        )
