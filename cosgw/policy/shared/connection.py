"""
The one connection to Redis that every shared rule of a replica uses, and
what the rules do while Redis is away.

The connection is txredisapi's, made with the injected reactor and kept
up by txredisapi (reconnecting with backoff, at most L{RECONNECT_MAX}
seconds apart, also after Redis refused its AUTH or SELECT, which
txredisapi alone would take as final).  The URL's user and password are
used for AUTH and never logged (L{RedisURL.where} is what log lines name).  It is a single connection, so the calls of a replica
reach Redis in the order they were made: a later publication of a count
always overwrites an earlier one.

No call waits for Redis longer than C{timeout} seconds: a call made while
the connection is down fails at once with L{SharedStateUnavailable}, and
one that gets no answer in time fails with it then (txredisapi drops the
connection and reconnects).  The first such failure of an outage is
logged as a warning that says what the rules do meanwhile
(C{shared_state_failure}); the first answer after it is logged too, and
then the replica publishes its counts again (L{SharedStore.on_connected}),
since Redis may have lost them or missed changes.

This module is the only importer of txredisapi, and nothing imports it
unless C{[server] shared_state} is set.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import txredisapi  # type: ignore[import-untyped]
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.policy.shared.keys import Keys
from cosgw.policy.shared.scripts import HEARTBEAT, LEAVE, Script

__all__ = [
    "RECONNECT_MAX",
    "RedisURL",
    "SharedStateUnavailable",
    "SharedStore",
    "endpoint",
    "parse_url",
    "probe",
]

log = Logger(namespace="cosgw.policy.shared")

#: Most seconds between two attempts to reach Redis again.
RECONNECT_MAX = 2.0


class SharedStateUnavailable(Exception):
    """Redis is not connected, or did not answer within the timeout."""


@dataclass(frozen=True)
class RedisURL:
    """
    A C{redis://} or C{rediss://} URL, as C{[server] shared_state}
    validated it: C{redis://[[user]:password@]host[:port][/db]}.  Only
    L{where} is ever logged.
    """

    host: str
    port: int
    database: int
    #: The ACL user (Redis 6 and later); None: the default user.
    username: Optional[str]
    password: Optional[str]
    tls: bool

    @property
    def where(self) -> str:
        """The server as log lines name it: no user, no password."""
        return f"{self.host}:{self.port}/{self.database}" + (
            " (TLS)" if self.tls else ""
        )


def parse_url(url: str) -> RedisURL:
    """The parts of C{url} (see L{RedisURL})."""
    parts = urlsplit(url)
    database = parts.path.strip("/")
    return RedisURL(
        parts.hostname or "localhost",
        parts.port or 6379,
        int(database) if database else 0,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        parts.scheme == "rediss",
    )


def endpoint(url: RedisURL, reactor: Any, timeout: float) -> Any:
    """
    Where to connect: TCP, or TLS whose certificate must be valid for the
    URL's host and signed by an authority the system trusts (OpenSSL's
    default paths: C{SSL_CERT_FILE} names another bundle).
    """
    tcp: Any = HostnameEndpoint(reactor, url.host, url.port, timeout=timeout)
    if url.tls:
        return wrapClientTLS(optionsForClientTLS(url.host), tcp)
    return tcp


class _Factory(txredisapi.RedisFactory):
    """
    txredisapi's factory, telling the store when a connection comes and
    goes, with a short reconnection backoff, and never giving up.
    """

    maxDelay = RECONNECT_MAX
    initialDelay = 0.1

    def __init__(self, store: SharedStore, url: RedisURL):
        super().__init__(
            store.where,
            url.database,
            1,
            password=url.password,
            username=url.username,
            replyTimeout=store.timeout,
            convertNumbers=True,
        )
        self.store = store

    def stopTrying(self) -> Deferred[None]:
        """
        Keep trying.  txredisapi stops reconnecting for good when AUTH or
        SELECT fails, and also when the connection merely dropped before
        their answer (a Redis restarting, a TLS certificate refused, a
        proxy in front of Redis with no server yet): a replica would stay
        cut off until restarted.  It retries at most every
        L{RECONNECT_MAX} seconds instead (L{connectionError} says why).
        """
        return succeed(None)

    def connectionError(self, why: str) -> None:
        """A connection was made but AUTH or SELECT failed: say why, once."""
        self.store._refused(why)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.store._connected()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.size and not self.disconnectCalled:
            self.store._lost("the connection was lost")


class SharedStore(Service):
    """
    A replica's link to the shared state: its id, its lease, its calls.

    @ivar replica: this process's id in the cluster (host, PID and a random
        part: a restarted process is a new replica).
    @ivar up: whether Redis answered last (None: not yet connected).
    @ivar fallbacks: decisions taken without Redis since start (each a
        rule that fell back to this process's own view, or refused).
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        failure: str = "open",
        clock: Optional[IReactorTime] = None,
        timeout: float = 1.0,
        lease: float = 15.0,
        heartbeat: float = 5.0,
        replica: Optional[str] = None,
        prefix: str = "cosgw:",
    ) -> None:
        """
        @param url: C{[server] shared_state}.
        @param reactor: connects to Redis and times the calls out.
        @param failure: C{[server] shared_state_failure}: C{open} or
            C{closed}.
        @param clock: tells the time of counts, failures, bans and leases
            (and runs the heartbeat); the reactor by default.  Replicas'
            clocks must agree (NTP) to well under C{lease}.
        @param timeout: seconds any call may wait for Redis.
        @param lease: seconds this replica's counts stay in force without
            a heartbeat: how soon a crashed replica's sessions, connections
            and quota claims are released.
        @param heartbeat: seconds between two renewals of the lease.
        @raise ValueError: C{failure} is neither, or the times are wrong.
        """
        super().__init__()
        if failure not in ("open", "closed"):
            raise ValueError(f"failure must be 'open' or 'closed': {failure!r}")
        if not 0 < heartbeat < lease or not timeout > 0:
            raise ValueError("need 0 < heartbeat < lease and timeout > 0")
        self._url = parse_url(url)
        #: Redis as log lines name it (never with the URL's credentials).
        self.where = self._url.where
        self._reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.failure = failure
        self.timeout = timeout
        self.lease = lease
        self.heartbeat = heartbeat
        self.replica = replica or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.keys = Keys(prefix, self.replica)
        self.up: Optional[bool] = None
        self.fallbacks = 0
        self._outage: Optional[str] = None
        self._refusal: Optional[str] = None
        self._factory: Optional[_Factory] = None
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self.clock
        #: Called (without arguments) whenever Redis is reached again.
        self._on_connected: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        """Whether a connection to Redis is open now."""
        return self._factory is not None and bool(self._factory.size)

    @property
    def closed(self) -> bool:
        """Whether rules refuse what needs Redis while it is away."""
        return self.failure == "closed"

    def on_connected(self, republish: Callable[[], None]) -> None:
        """Call C{republish} each time the connection is (re)made."""
        self._on_connected.append(republish)

    def now(self) -> int:
        """The clock's time in milliseconds, as every key stores it."""
        return int(self.clock.seconds() * 1000)

    def startService(self) -> None:
        super().startService()
        factory = _Factory(self, self._url)
        factory.startConnecting(endpoint(self._url, self._reactor, self.timeout))
        self._factory = factory
        log.info(
            "shared state in Redis at {where}, replica {replica},"
            " failing {failure} while it is away",
            where=self.where,
            replica=self.replica,
            failure=self.failure,
        )
        self._loop.start(self.heartbeat, now=False)

    def stopService(self) -> Deferred[None]:
        """
        Leave the cluster (this replica's counts and claims released at
        once, not when its lease ends), then disconnect; bounded by the
        timeout.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        factory, self._factory = self._factory, None
        if factory is None:
            return Deferred.fromCoroutine(_nothing())
        left: Deferred[Any]
        if factory.size:
            left = self._run(factory, LEAVE, self.keys.leave(), [self.replica])
        else:
            left = Deferred.fromCoroutine(_nothing())
        left.addErrback(lambda _: None)

        def disconnect(_: Any) -> Deferred[Any]:
            gone: Deferred[Any] = factory.disconnect()
            return gone.addTimeout(self.timeout, self._reactor).addErrback(
                lambda _: None
            )

        return left.addCallback(disconnect).addCallback(lambda _: None)

    def call(
        self, script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> Deferred[Any]:
        """
        Run C{script} in Redis.

        @return: a Deferred with its answer, or failing with
            L{SharedStateUnavailable} at once when Redis is not connected,
            or within C{timeout} seconds when it does not answer.
        """
        factory = self._factory
        if factory is None or not factory.size:
            if self._factory is not None:
                self._lost("not connected")
            return fail(
                SharedStateUnavailable(f"Redis at {self.where} is not connected")
            )
        return self._run(factory, script, keys, args).addCallbacks(
            self._answered, self._unanswered
        )

    def _run(
        self,
        factory: _Factory,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
    ) -> Deferred[Any]:
        d: Deferred[Any] = factory.handler.eval(script.text, list(keys), list(args))
        return d.addTimeout(self.timeout, self._reactor)

    def _answered(self, result: Any) -> Any:
        if self.up is not True:
            self._back()
        return result

    def _unanswered(self, failure: Failure) -> Failure:
        if failure.check(txredisapi.ResponseError):
            # Redis answered: a bug in a script, not an outage.
            log.failure("a shared-state script failed", failure)
            return failure
        reason = failure.getErrorMessage() or type(failure.value).__name__
        self._lost(reason)
        return Failure(SharedStateUnavailable(f"Redis at {self.where}: {reason}"))

    def fallback(self, rule: str) -> bool:
        """
        A rule could not reach Redis: count it, and say what it does.

        @param rule: what was being decided, for the log.
        @return: True when the rule goes on with this process's own view
            (C{open}); False when it refuses (C{closed}).
        """
        self.fallbacks += 1
        if self._outage is None:
            self._lost("no answer")
        return not self.closed

    def _connected(self) -> None:
        """txredisapi made the connection: republish, then call it up."""
        for republish in self._on_connected:
            republish()
        self.beat()
        self._back()

    def _back(self) -> None:
        was, self.up = self._outage, True
        self._outage = self._refusal = None
        if was is not None:
            log.warn(
                "Redis at {where} answers again: shared rules hold across"
                " replicas again",
                where=self.where,
            )

    def _refused(self, why: str) -> None:
        """
        Redis (or what stands at its address) took the connection but
        refused AUTH or SELECT, or dropped it before answering: logged as an
        error once per reason until Redis answers (a wrong password is
        retried every few seconds, and must not fill the log).
        """
        if why == self._refusal:
            return
        self._refusal = why
        log.error(
            "Redis at {where}: {why}; trying again every {every} s"
            " (check the password, database and TLS of shared_state)",
            where=self.where,
            why=why.removeprefix("Redis error: "),
            every=RECONNECT_MAX,
        )
        self._lost(why.removeprefix("Redis error: "))

    def _lost(self, reason: str) -> None:
        self.up = False
        if self._outage is not None:
            return
        self._outage = reason
        if self.closed:
            effect = "logins, connections and uploads that need it are refused"
        else:
            effect = "each rule is decided by this process alone"
        log.warn(
            "Redis at {where} cannot be reached ({reason}): until it is back,"
            " {effect} (shared_state_failure = {failure})",
            where=self.where,
            reason=reason,
            effect=effect,
            failure=self.failure,
        )

    def beat(self) -> None:
        """Renew this replica's lease (and let Redis forget long-dead ones)."""
        factory = self._factory
        if factory is None or not factory.size:
            return
        ms = self.now()
        lease = int(self.lease * 1000)
        d = self._run(
            factory, HEARTBEAT, self.keys.heartbeat(), [self.replica, ms, lease]
        )
        d.addCallbacks(self._answered, self._unanswered).addErrback(lambda _: None)

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the status page and /readyz."""
        return {
            "where": self.where,
            "replica": self.replica,
            "up": self.up,
            "failure": self.failure,
            "fallbacks": self.fallbacks,
        }


async def _nothing() -> None:
    return None


async def probe(url: str, reactor: Any, timeout: float) -> str:
    """
    Connect to the Redis of C{url} once, as a replica would (TLS, AUTH,
    SELECT), and ask its version: C{cosgw check-config --probe}.  Nothing
    is written, and no replica joins the cluster.

    @return: what answered, for one line of the probe's report.
    @raise SharedStateUnavailable: with why (refused, timed out, AUTH or
        SELECT refused), never with the URL's credentials.
    """
    parsed = parse_url(url)
    factory = txredisapi.RedisFactory(
        parsed.where,
        parsed.database,
        1,
        password=parsed.password,
        username=parsed.username,
        replyTimeout=timeout,
    )
    factory.reconnect = False
    factory.startConnecting(endpoint(parsed, reactor, timeout))
    ready: Deferred[Any] = factory.deferred
    try:
        handler = await ready.addTimeout(timeout, reactor)
        info = await handler.execute_command("INFO", "server")
    except Exception as e:
        why = str(e).removeprefix("Redis error: ") or type(e).__name__
        raise SharedStateUnavailable(f"Redis at {parsed.where}: {why}") from None
    finally:
        gone: Deferred[Any] = factory.disconnect()
        await gone.addTimeout(timeout, reactor).addErrback(lambda _: None)
    version = next(
        (
            line.partition(":")[2].strip()
            for line in str(info).splitlines()
            if line.startswith("redis_version:")
        ),
        "?",
    )
    return f"Redis {version} at {parsed.where} answered"
