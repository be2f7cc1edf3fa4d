"""
Whether the gateway is ready to serve: what C{/readyz} answers, for load
balancers and service managers.

Ready means every listener of the gateway listens, every store answered
its last check, and the gateway is not draining.  A store is checked with
one cheap request (a LIST of one key at the bucket's top) every
L{CHECK_INTERVAL} seconds; an answer later than L{CHECK_TIMEOUT} seconds
counts as none.  Until its first check has answered, a store is not ready.

L{Readiness} holds all of it in one place, so that whatever stops the
gateway gracefully can set L{Readiness.draining} and be taken out of a
balancer before it closes its listeners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore

__all__ = ["CHECK_INTERVAL", "CHECK_TIMEOUT", "Readiness", "StoreChecks", "StoreHealth"]

log = Logger()

#: Seconds between two checks of a store.
CHECK_INTERVAL = 10.0
#: Seconds a store has to answer a check.
CHECK_TIMEOUT = 5.0


@dataclass
class StoreHealth:
    """What a store's last check found."""

    #: None: not checked yet; True: it answered; False: it did not.
    ok: Optional[bool] = None
    #: Why it is not ready (empty when it is).
    reason: str = "not checked yet"
    #: When the last check ended (the clock's seconds), and how long it took.
    checked: Optional[float] = None
    seconds: Optional[float] = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the status page."""
        return {
            "ok": self.ok,
            "reason": self.reason,
            "checked": self.checked,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
        }


class Readiness:
    """
    The gateway's readiness: its listeners, its stores' health and whether
    it drains.

    @ivar draining: empty, or why the gateway no longer takes clients;
        while it is set the gateway is not ready.
    @ivar stop: begins the gateway's drain and stop (C{POST /api/drain});
        given who asked, it returns what the drain found (JSON-ready).
        None: this gateway cannot be stopped from its admin listener.
    """

    def __init__(
        self, listeners: Callable[[], Iterable[Any]], stores: Iterable[str]
    ) -> None:
        """
        @param listeners: gives the gateway's listeners (each with a
            C{description} and a C{port}, None while it does not listen).
        @param stores: the names of the stores checked.
        """
        self._listeners = listeners
        self.stores = {name: StoreHealth() for name in stores}
        self.draining = ""
        self.stop: Optional[Callable[[str], dict[str, Any]]] = None
        #: The link to Redis (L{cosgw.policy.shared.SharedStore}) when the
        #: policy is shared; with C{shared_state_failure = closed}, the
        #: gateway is not ready while Redis cannot be reached (it refuses
        #: logins then), so a balancer sends clients elsewhere.
        self.shared: Optional[Any] = None

    def problems(self) -> list[str]:
        """Why the gateway is not ready, one reason each; empty: ready."""
        found = []
        if self.draining:
            found.append(f"draining: {self.draining}")
        for listener in self._listeners():
            if listener.port is None:
                found.append(f"listener {listener.description}: not listening")
        for name, health in self.stores.items():
            if not health.ok:
                found.append(f"store {name}: {health.reason}")
        shared = self.shared
        if shared is not None and shared.closed and shared.up is not True:
            found.append(
                f"shared state: Redis at {shared.where} cannot be reached"
                " (shared_state_failure = closed)"
            )
        return found


class StoreChecks(Service):
    """
    Checks every store every C{interval} seconds, from start to stop.

    @ivar timeout: seconds a store has to answer a check.
    """

    def __init__(
        self,
        readiness: Readiness,
        stores: Mapping[str, IObjectStore],
        clock: IReactorTime,
        interval: float = CHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self._readiness = readiness
        self._stores = dict(stores)
        self._clock = clock
        self.timeout = timeout
        self._interval = interval
        self._running: dict[str, Deferred[Any]] = {}
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        for d in list(self._running.values()):
            d.cancel()

    def check(self) -> None:
        """Check each store whose last check has ended (also at once, on demand)."""
        for name, store in self._stores.items():
            if name not in self._running:
                self._check(name, store)

    def _check(self, name: str, store: IObjectStore) -> None:
        started = self._clock.seconds()
        health = self._readiness.stores[name]
        d = store.list("", "/", "", 1)
        self._running[name] = d
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        timer = self._clock.callLater(self.timeout, give_up)

        def ended(result: Any) -> None:
            self._running.pop(name, None)
            if timer.active():
                timer.cancel()
            if not self.running:
                return  # cancelled by stopService: nothing was found
            now = self._clock.seconds()
            health.checked, health.seconds = now, now - started
            was = health.ok
            if not isinstance(result, Failure):
                health.ok, health.reason = True, ""
            elif timed_out:
                health.ok = False
                health.reason = f"no answer within {self.timeout:g} s"
            else:
                health.ok = False
                health.reason = str(result.value) or type(result.value).__name__
            if health.ok != was and (was is not None or not health.ok):
                self._logged(name, health)

        d.addBoth(ended)

    def _logged(self, name: str, health: StoreHealth) -> None:
        if health.ok:
            log.info("store {name} answers again", name=name)
        else:
            log.warn(
                "store {name} is not ready: {reason}", name=name, reason=health.reason
            )
