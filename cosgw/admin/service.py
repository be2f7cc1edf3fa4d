"""
The admin listener as a service of the gateway: the web site, its
listener, the store checks, and the metrics' audit observer and store
watchers, which live only while the service runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, Optional

from twisted.application.service import IService, MultiService
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger, LogPublisher, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from cosgw.admin.access import AdminAccess, Guard, client_host
from cosgw.admin.api import ReloadAnswer, api_resource
from cosgw.admin.health import CHECK_INTERVAL, CHECK_TIMEOUT, Readiness, StoreChecks
from cosgw.admin.live import LiveCollector, LiveParts
from cosgw.admin.metrics import GatewayMetrics
from cosgw.admin.pages import (
    SECURITY_HEADERS,
    Healthz,
    MetricsPage,
    Readyz,
    status_files,
)
from cosgw.audit import SessionTable
from cosgw.escaping import for_log
from cosgw.frontends.listener import ListenerService
from cosgw.interfaces import IObjectStore
from cosgw.policy.accounts import Accounts
from cosgw.policy.defender import LoginDefender

__all__ = ["AdminService", "listeners_of"]

log = Logger()

#: The largest request body the admin listener reads (a kick has none).
MAX_BODY = 64 * 1024
#: Seconds an idle admin connection is kept.
IDLE_TIMEOUT = 60


def listeners_of(service: IService) -> Iterator[ListenerService]:
    """Every listener below C{service}, the admin listener's included."""
    if isinstance(service, ListenerService):
        yield service
    if isinstance(service, MultiService):
        for child in service:
            yield from listeners_of(child)


class AdminService(MultiService):
    """
    The admin listener of one gateway: C{/} (status page), C{/metrics},
    C{/healthz}, C{/readyz} and C{/api/...} on the C{description} endpoint.

    @ivar metrics: the gateway's metrics (C{metrics.registry}).
    @ivar readiness: what C{/readyz} answers from.
    @ivar checks: the periodic store checks.
    @ivar listener: the listener (C{listener.listening} fires with the port).
    """

    def __init__(
        self,
        description: str,
        gateway: IService,
        sessions: SessionTable,
        accounts: Accounts,
        pool: ThreadPool,
        defender: LoginDefender,
        stores: Mapping[str, IObjectStore],
        reactor: Any,
        users: Collection[str] = (),
        checker: Optional[ICredentialsChecker] = None,
        reload: Optional[ReloadAnswer] = None,
        check_interval: float = CHECK_INTERVAL,
        check_timeout: float = CHECK_TIMEOUT,
        publisher: Optional[LogPublisher] = None,
    ) -> None:
        """
        @param gateway: the service whose listeners must listen for the
            gateway to be ready.
        @param users: who may log in (basic auth); empty: loopback only.
        @param checker: checks their passwords (needed with C{users}).
        @param reload: reloads the gateway's config (C{POST /api/reload});
            None: not offered.
        @param publisher: where audit events are published; the global
            log publisher by default.
        """
        super().__init__()
        self._stores = dict(stores)
        self._publisher = publisher if publisher is not None else globalLogPublisher
        self.metrics = GatewayMetrics(sessions)
        self.readiness = Readiness(lambda: listeners_of(gateway), self._stores)
        self.readiness.shared = getattr(gateway, "shared", None)
        self.metrics.registry.register(
            LiveCollector(
                LiveParts(
                    sessions, accounts, pool, defender, self.readiness, self.metrics
                )
            )
        )
        root = Resource()
        for name, page in status_files().items():
            root.putChild(name, page)
        root.putChild(b"metrics", MetricsPage(self.metrics.registry))
        root.putChild(b"healthz", Healthz())
        root.putChild(b"readyz", Readyz(self.readiness))
        root.putChild(b"api", api_resource(sessions, self.readiness, reload))
        #: Who may ask; a reload makes it forget the passwords it verified.
        self.access = AdminAccess(users, checker, defender, reactor)
        site = _AdminSite(
            Guard(root, self.access), reactor=reactor, timeout=IDLE_TIMEOUT
        )
        self.checks = StoreChecks(
            self.readiness, self._stores, reactor, check_interval, check_timeout
        )
        self.checks.setServiceParent(self)
        self.listener = ListenerService(
            reactor, description, site, key="[server] admin_listen"
        )
        self.listener.setServiceParent(self)

    @property
    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once the listener listens."""
        return self.listener.listening

    def startService(self) -> None:
        self._publisher.addObserver(self.metrics)
        self.metrics.watch_stores(self._stores)
        super().startService()

    def stopService(self) -> Deferred[None]:
        self._publisher.removeObserver(self.metrics)
        self.metrics.unwatch_stores(self._stores)
        d: Deferred[None] = super().stopService()
        return d


class _AdminRequest(Request):
    """A request whose body, never needed, is cut off at L{MAX_BODY}."""

    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.loseConnection()
            return
        super().handleContentChunk(data)


class _AdminSite(Site):
    """Quiet (requests logged at debug only), with the security headers."""

    noisy = False
    requestFactory = _AdminRequest
    displayTracebacks = False

    def getResourceFor(self, request: IRequest) -> IResource:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return super().getResourceFor(request)

    def log(self, request: Any) -> None:
        log.debug(
            "admin: {method} {uri} {code} from {client}",
            method=for_log(request.method.decode("latin-1")),
            uri=for_log(request.uri.decode("latin-1")),
            code=request.code,
            client=client_host(request) or "local",
        )
