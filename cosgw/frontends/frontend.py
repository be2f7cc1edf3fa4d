"""
What every frontend is built from, and the one thing every frontend does
with it: listen on the endpoints the config names.  A new protocol
(WebDAV, ...) subclasses L{Frontend} and is composed in
L{cosgw.service.makeService} like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import MultiService
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IProtocolFactory

from cosgw.audit import SessionTable
from cosgw.auth.realm import Realm
from cosgw.frontends.listener import ListenerService
from cosgw.frontends.proxied import ProxySettings
from cosgw.policy.accounts import Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits

__all__ = ["Frontend", "SharedParts"]


@dataclass(frozen=True)
class SharedParts:
    """
    The parts every frontend shares, built once by C{makeService}: one
    portal and realm (each frontend registers its kind of avatar), the
    accounts (sessions, quotas, rates), and the connection limits and login
    defender that hold across every listener and protocol.
    """

    portal: Portal
    realm: Realm
    accounts: Accounts
    limits: ConnectionLimits
    defender: LoginDefender
    #: A clock, TCP and a resolver: injected, never the global reactor.
    reactor: Any
    #: Every live session and transfer, across protocols (audit events, the
    #: status page, kicks).
    sessions: SessionTable
    #: Which listeners expect a PROXY header, and whose headers are believed.
    proxy: ProxySettings = ProxySettings()


class Frontend(MultiService):
    """A protocol's service: its listeners are its children."""

    def __init__(self, parts: SharedParts) -> None:
        super().__init__()
        self.parts = parts
        #: The protocol factories of its listeners, each with C{refusing}
        #: (why new connections are refused, or None) and C{refused}.
        self.factories: list[Any] = []

    def refuse_new(self, reason: str) -> None:
        """
        From now on every new connection is told C{reason} and closed (the
        gateway drains).  The listening sockets stay open: a client gets
        the reason instead of a refused connection, and nothing else may
        take the port while the gateway stops.
        """
        for factory in self.factories:
            factory.refusing = reason

    @property
    def refused(self) -> int:
        """New connections refused so far (see L{refuse_new})."""
        return sum(factory.refused for factory in self.factories)

    def listen(
        self,
        description: str,
        factory: IProtocolFactory,
        refusal: bytes = b"",
        key: str | None = None,
    ) -> ListenerService:
        """
        A child L{ListenerService} serving C{factory} on C{description}.

        @param refusal: what a client is sent, before the connection is
            closed, when the gateway is out of file descriptors (see
            L{cosgw.frontends.listener}); empty: nothing.
        @param key: the config key naming C{description}, for the one-line
            error when it cannot listen.
        """
        listener = ListenerService(
            self.parts.reactor, description, factory, refusal, key, self.parts.proxy
        )
        listener.setServiceParent(self)
        return listener
