"""
The WebDAV frontend as one service: every C{webdav_listen} endpoint, over
the parts every frontend shares (the portal, realm, accounts, connection
limits, login defender and sessions), so that C{makeService} only
composes.

An endpoint is plain HTTP (C{tcp:}), or HTTPS: C{ssl:} with Twisted's own
C{privateKey=} and C{certKey=}, or C{ssl:} without them, which serves the
FTPS certificate (L{cosgw.frontends.ftp.tls}: the same context, ciphers and
protocol versions, the certificate a reload installs included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolNegotiationFactory
from zope.interface import implementer

from cosgw.config import Config
from cosgw.frontends.frontend import Frontend, SharedParts
from cosgw.frontends.ftp.tls import ServerTLS, wrap_current
from cosgw.frontends.webdav.auth import Authenticator, IWebDAVUser
from cosgw.frontends.webdav.channel import DAVSite, raw_response
from cosgw.frontends.webdav.resource import DAVResource, DAVServer

__all__ = ["WebDAVFrontend", "uses_gateway_certificate"]


def uses_gateway_certificate(description: str) -> bool:
    """An C{ssl:} endpoint naming no key of its own: the FTPS certificate's."""
    kind, _, rest = description.partition(":")
    return kind.lower() == "ssl" and "privatekey=" not in rest.lower()


@implementer(IProtocolNegotiationFactory)
class _GatewayTLS:
    """
    The site as L{wrap_current} wants it: with the current certificate,
    and HTTP/1.1 offered in ALPN (Twisted's TLS fails the handshake of a
    client that offers ALPN when the server offers nothing).
    """

    def __init__(self, site: DAVSite, current: Callable[[], ServerTLS]) -> None:
        self._site = site
        self._current = current

    @property
    def tls(self) -> ServerTLS:
        return self._current()

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> Any:
        return self._site.buildProtocol(addr)

    def doStart(self) -> None:
        self._site.doStart()

    def doStop(self) -> None:
        self._site.doStop()


class WebDAVFrontend(Frontend):
    """
    WebDAV on every C{webdav_listen} endpoint: the file system registered
    with the realm for L{IWebDAVUser}, one site (its lock and property
    tables shared by every listener), and a listener per endpoint.
    """

    def __init__(
        self,
        config: Config,
        parts: SharedParts,
        current_tls: Callable[[], ServerTLS],
    ) -> None:
        """
        @param current_tls: the FTPS certificate as it is now (a reload
            may change it), for C{ssl:} endpoints without a key.
        """
        super().__init__(parts)
        server = config.server
        parts.realm.register(IWebDAVUser, parts.accounts.session)
        authenticator = Authenticator(
            parts.portal, parts.defender, server.webdav_allow_plain_auth
        )
        self.dav = DAVServer(authenticator, parts.reactor)
        self.site = DAVSite(
            DAVResource(self.dav),
            self.dav,
            parts.sessions,
            parts.reactor,
            limits=parts.limits,
            login_timeout=server.login_timeout,
            idle_timeout=server.idle_timeout or None,
        )
        self.factories = [self.site]
        refusal = raw_response(503, "too many open files, try again later")
        self.listeners = []
        for description in server.webdav_listen:
            factory: Any = self.site
            if uses_gateway_certificate(description):
                factory = wrap_current(
                    _GatewayTLS(self.site, current_tls), parts.reactor
                )
                description = "tcp:" + description.partition(":")[2]
            self.listeners.append(
                self.listen(description, factory, refusal, "[server] webdav_listen")
            )

    def stopService(self) -> Deferred[None]:
        """Stop listening, then close the connections still open."""
        d = super().stopService()

        def closed(_: Any) -> None:
            self.site.close_all("server shutting down")

        return d.addCallback(closed)
