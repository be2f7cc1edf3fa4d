"""
The SSH factory: builds L{GatewaySSHTransport}s over one portal and one set
of host keys, keeps the open ones so a stopping service can end them, and
computes the algorithm lists once instead of once per connection.  Group
exchange hands out the fixed groups of L{GEX_GROUPS}, whose cost on the
reactor is measured and small; it never reads /etc/ssh/moduli.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, cast

from twisted.conch.ssh import keys, transport
from twisted.conch.ssh.factory import SSHFactory
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory

from cosgw.audit import SessionTable
from cosgw.frontends.sftp.algorithms import GEX_GROUPS, host_key_algorithms
from cosgw.frontends.sftp.session import GatewayConnection
from cosgw.frontends.sftp.transport import GatewaySSHTransport
from cosgw.frontends.sftp.userauth import GatewayUserAuthServer

__all__ = ["GatewaySSHFactory"]


class GatewaySSHFactory(SSHFactory):
    """
    Builds L{GatewaySSHTransport}s over one portal and one set of host keys.
    """

    protocol = GatewaySSHTransport
    # No "Starting factory" line: the listener is the gateway's to report.
    noisy = False
    services = {
        b"ssh-userauth": GatewayUserAuthServer,
        b"ssh-connection": GatewayConnection,
    }

    def __init__(
        self,
        portal: Portal,
        host_keys: dict[bytes, keys.Key],
        reactor: IReactorTime,
        *,
        login_timeout: float = 60,
        idle_timeout: Optional[float] = 600,
        admission: Any = None,
        login_guard: Any = None,
        sessions: Optional[SessionTable] = None,
    ) -> None:
        """
        @param portal: logs users in; its realm answers for L{IConchUser}.
        @param host_keys: private keys as L{load_host_keys} returns them.
        @param reactor: every timer of every connection runs on it.
        @param login_timeout: seconds from TCP connect to a completed login.
        @param idle_timeout: seconds without data from an authenticated
            client before it is disconnected; None for no limit.
        @param admission: an object with C{open(ip) -> Optional[str]} and
            C{close(ip)}, such as L{cosgw.policy.limits.ConnectionLimits}; None to
            admit everyone.
        @param login_guard: an object with C{guard(ip, user, login,
            session)}, such as L{cosgw.policy.defender.LoginDefender}; None
            for no guard.
        @param sessions: the gateway's live sessions, where every admitted
            connection opens its own; by default a table of this factory's.
        @raise ValueError: no usable host key, or a non-positive timeout.
        """
        if login_timeout <= 0:
            raise ValueError(f"login_timeout must be positive: {login_timeout!r}")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive or None: {idle_timeout!r}")
        private = {key_type: key for key_type, key in host_keys.items()}
        for key_type, key in private.items():
            if key.isPublic():
                raise ValueError(f"{key_type.decode('ascii')} host key is not private")
        if not self._host_key_algorithms(private.values()):
            raise ValueError("no usable SSH host key (ed25519, ecdsa or RSA)")
        self.portal = portal
        self.privateKeys = private
        self.publicKeys = {key_type: key.public() for key_type, key in private.items()}
        self.reactor = reactor
        self.login_timeout = login_timeout
        self.idle_timeout = idle_timeout
        self.admission = admission
        self.login_guard = login_guard
        self.sessions = sessions if sessions is not None else SessionTable(reactor)
        #: The transports whose socket is still open.
        self.connections: set[GatewaySSHTransport] = set()
        #: Why new connections are refused (the gateway drains), else None.
        self.refusing: Optional[str] = None
        #: Connections refused for that reason.
        self.refused = 0
        self.primes = self.getPrimes()
        self._public_key_algorithms = self._host_key_algorithms(private.values())
        self._key_exchanges = list(self.protocol.supportedKeyExchanges)

    def _host_key_algorithms(self, host_keys: Iterable[keys.Key]) -> list[bytes]:
        """The signature algorithms the host keys allow that we offer."""
        return host_key_algorithms(host_keys, self.protocol.supportedPublicKeys)

    def getPrimes(self) -> dict[int, list[tuple[int, int]]]:
        """
        The groups group exchange hands out: L{GEX_GROUPS}, never a moduli
        file's, whose groups cost seconds of reactor time each (see there).
        """
        return {bits: list(groups) for bits, groups in GEX_GROUPS.items()}

    def buildProtocol(self, addr: Any) -> GatewaySSHTransport:
        # Not SSHFactory.buildProtocol: it offers every algorithm the host
        # keys can sign with (ssh-rsa included).  The lists are computed once.
        t = cast(GatewaySSHTransport, Factory.buildProtocol(self, addr))
        t.supportedPublicKeys = list(self._public_key_algorithms)
        t.supportedKeyExchanges = list(self._key_exchanges)
        self.connections.add(t)
        return t

    def disconnect_all(
        self, description: str = "server shutting down"
    ) -> defer.Deferred[None]:
        """
        Disconnect every open connection (SSH_DISCONNECT_BY_APPLICATION with
        C{description}), for a service that stops.

        @return: a L{Deferred} that fires with None once every socket is
            gone: when each client has closed its side, or after the grace
            period at the latest.
        """
        transports = list(self.connections)
        for t in transports:
            t.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, description)
        done = defer.gatherResults([t.when_lost() for t in transports])
        return done.addCallback(lambda _: None)
