"""
The factory of FTP control connections: every setting a connection needs
from the outside, given once, and the connection limits and login defender
applied before a connection gets a protocol at all.  Behind a PROXY
listener (L{cosgw.frontends.proxied}) C{buildProtocol} is called once the
header is read, with the client's address from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from twisted.cred.portal import Portal
from twisted.internet import protocol

from cosgw.audit import SessionTable
from cosgw.config import ServerConfig
from cosgw.frontends.ftp.data import ChannelCount
from cosgw.frontends.ftp.ports import DATA_CONNECTION_TIMEOUT
from cosgw.frontends.ftp.protocol import GatewayFTP
from cosgw.frontends.ftp.tls import ServerTLS
from cosgw.frontends.ftp.transfers import EOF_GRACE, EOF_QUIET
from cosgw.policy.defender import LoginBanned, LoginDefender
from cosgw.policy.limits import ConnectionLimits

#: Per user: (TLS required on control, PROT P required), where set.
UserTLS = Mapping[str, tuple[Optional[bool], Optional[bool]]]


class _OverflowFTP(protocol.Protocol):
    """Says why it hangs up when the server is full (RFC 959: 421)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def connectionMade(self) -> None:
        assert self.transport is not None
        text = self.reason[:1].upper() + self.reason[1:]
        self.transport.write(f"421 {text}\r\n".encode())
        self.transport.loseConnection()


def _refuse_later(ftp: GatewayFTP, reason: str) -> None:
    """The cluster refused a connection admitted here: 421 and close."""
    if ftp.transport is not None:
        ftp.kick(reason)


class GatewayFTPFactory(protocol.ServerFactory):
    """
    Builds the control connections.  Everything the protocol needs from the
    outside (reactor, portal, passive ports, NAT address, limits) is given
    here, never reached for.
    """

    noisy = False

    def __init__(
        self,
        portal: Portal,
        reactor: Any,
        passive_ports: tuple[int, int] = (61000, 61999),
        masquerade_address: Optional[str] = None,
        idle_timeout: int = 600,
        max_connections: Optional[int] = None,
        limits: Optional[ConnectionLimits] = None,
        defender: Optional[LoginDefender] = None,
        login_timeout: Optional[float] = 60,
        stall_timeout: Optional[float] = 120,
        welcome: str = "cosgw FTP gateway ready",
        data_timeout: float = DATA_CONNECTION_TIMEOUT,
        eof_grace: float = EOF_GRACE,
        eof_quiet: float = EOF_QUIET,
        tls: Optional[ServerTLS] = None,
        implicit: bool = False,
        tls_required: bool = False,
        tls_data_required: bool = False,
        tls_session_reuse: bool = False,
        user_tls: Optional[UserTLS] = None,
        trace_commands: bool = False,
        data_connections: Optional[ChannelCount] = None,
        sessions: Optional[SessionTable] = None,
        ftp_encoding: str = "utf-8",
        user_encodings: Optional[Mapping[str, str]] = None,
    ) -> None:
        """
        @param reactor: the reactor: a clock, TCP (passive listeners and
            active connections) and a resolver (the masquerade address).
        @param tls: The server's TLS for AUTH TLS and PROT P; None offers
            no FTPS.
        @param implicit: Connections arrive already in TLS (implicit FTPS).
        @param user_tls: Per user, (TLS required, PROT P required) where
            set, overriding the global policies.
        @param limits: connection limits shared with the gateway's other
            listeners; without, C{max_connections} counts this factory's.
        @param defender: the login defender shared with SFTP.
        @param stall_timeout: seconds a data connection may stall, and a
            passive listener or data connection may wait unused.
        @param data_timeout: seconds a transfer waits for its data
            connection, and then for its TLS handshake.
        @param data_connections: the gateway's count of open data
            connections, shared with its other FTP factories.
        @param trace_commands: log every command line (passwords masked),
            for log_level debug.
        @param eof_grace: with C{eof_quiet}, when and how long an upload's
            end of file waits to tell a killed client (see
            C{TransferCommands._client_left}).
        @param sessions: the gateway's live sessions, where every control
            connection opens its own; by default a table of this factory's.
        @param ftp_encoding: how this listener's sessions encode names
            (C{utf-8}, C{auto} or a codec; L{cosgw.frontends.ftp.encoding}).
        @param user_encodings: per user, the encoding that replaces it once
            the session names that user.
        """
        self.ftp_encoding = ftp_encoding
        self.user_encodings = dict(user_encodings or {})
        self.tls = tls
        self.implicit = implicit
        self.tls_required = tls_required
        self.tls_data_required = tls_data_required
        self.tls_session_reuse = tls_session_reuse
        self.user_tls = dict(user_tls or {})
        self.data_timeout = data_timeout
        self.eof_grace = eof_grace
        self.eof_quiet = eof_quiet
        self.portal = portal
        self.reactor = reactor
        self.passive_ports = passive_ports
        self.masquerade_address = masquerade_address
        self.timeOut = idle_timeout
        self.login_timeout = login_timeout
        self.stall_timeout = stall_timeout
        self.defender = defender
        self.limits = limits or ConnectionLimits(max_total=max_connections)
        self.max_connections = max_connections
        self.welcomeMessage = welcome
        self.trace_commands = trace_commands
        self.connections = 0
        self.data_connections = (
            data_connections if data_connections is not None else ChannelCount()
        )
        self.sessions = sessions if sessions is not None else SessionTable(reactor)
        #: Why new connections are refused (the gateway drains), else None.
        self.refusing: Optional[str] = None
        #: Connections refused for that reason.
        self.refused = 0

    @classmethod
    def from_config(
        cls,
        server: ServerConfig,
        portal: Portal,
        reactor: Any,
        *,
        limits: ConnectionLimits,
        defender: LoginDefender,
        tls: Optional[ServerTLS],
        implicit: bool = False,
        user_tls: Optional[UserTLS] = None,
        data_connections: Optional[ChannelCount] = None,
        sessions: Optional[SessionTable] = None,
        ftp_encoding: Optional[str] = None,
        user_encodings: Optional[Mapping[str, str]] = None,
    ) -> GatewayFTPFactory:
        """
        The factory for the server section of the configuration;
        C{ftp_encoding}, a listener's own, replaces the server's.
        """
        return cls(
            portal,
            reactor,
            passive_ports=server.passive_ports,
            masquerade_address=server.masquerade_address,
            idle_timeout=server.idle_timeout,
            login_timeout=server.login_timeout,
            stall_timeout=server.data_timeout,
            data_timeout=min(server.data_timeout, DATA_CONNECTION_TIMEOUT),
            limits=limits,
            defender=defender,
            tls=tls,
            implicit=implicit,
            tls_required=server.tls_required,
            tls_data_required=server.tls_data_required,
            tls_session_reuse=server.tls_session_reuse,
            user_tls=user_tls,
            trace_commands=server.log_level == "debug",
            data_connections=data_connections,
            sessions=sessions,
            ftp_encoding=ftp_encoding or server.ftp_encoding,
            user_encodings=user_encodings,
        )

    def buildProtocol(self, addr: Any) -> Optional[protocol.Protocol]:
        if self.refusing is not None:
            # The gateway drains: 421 with the reason (through TLS for
            # implicit FTPS), the listening socket still open.
            self.refused += 1
            refused = _OverflowFTP(self.refusing)
            refused.factory = self
            return refused
        host = getattr(addr, "host", "")
        ftp = GatewayFTP()
        # With shared state, the cluster's count may refuse it a moment later.
        refusal = self.limits.open(host, lambda reason: _refuse_later(ftp, reason))
        if refusal is None and self.defender is not None:
            remaining = self.defender.banned(host)
            if remaining:
                self.limits.close(host)
                refusal = str(LoginBanned(remaining))
        if refusal is not None:
            p = _OverflowFTP(refusal)
            p.factory = self
            return p
        self.connections += 1
        ftp.factory = self
        return ftp

    def connection_closed(self, host: str) -> None:
        """A control connection built by this factory has ended."""
        self.connections -= 1
        self.limits.close(host)

    def encoding_for(self, user: Optional[str]) -> str:
        """How a session of C{user} (None: no user named yet) encodes names."""
        return self.user_encodings.get(user or "", self.ftp_encoding)

    def tls_policy(self, user: Optional[str]) -> tuple[bool, bool]:
        """(TLS required on control, PROT P required) for C{user}."""
        control, data = self.user_tls.get(user or "", (None, None))
        return (
            self.tls_required if control is None else control,
            self.tls_data_required if data is None else data,
        )
