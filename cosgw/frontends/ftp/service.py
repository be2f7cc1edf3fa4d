"""
The FTP frontend as one service: FTP with explicit FTPS on every
C{ftp_listen} endpoint and implicit FTPS on every C{ftps_listen} one, built
from the config and the parts every frontend shares (the portal, realm,
accounts, connection limits and login defender), so that C{makeService}
only composes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from cosgw.config import Config, ConfigError, UserConfig, parse_encoding, split_listener
from cosgw.frontends.frontend import Frontend, SharedParts
from cosgw.frontends.ftp.data import ChannelCount
from cosgw.frontends.ftp.factory import GatewayFTPFactory, UserTLS
from cosgw.frontends.ftp.ports import check_passive_range
from cosgw.frontends.ftp.tls import (
    ServerTLS,
    TLSFileError,
    generate_self_signed,
    load_server_tls,
    wrap_current,
)
from cosgw.frontends.listener import FTP_REFUSAL
from cosgw.interfaces import IFileSystem

__all__ = ["FTPFrontend", "read_server_tls", "server_tls", "user_tls"]

# The gateway's start-up lines share the namespace of makeService's.
log = Logger(namespace="cosgw.service")


def server_tls(config: Config) -> ServerTLS:
    """
    The certificate from the config, or one generated in the state
    directory at first start (the embedded default, and any config that
    names none).  Blocking; for start-up.

    @raise ConfigError: the certificate or key cannot be used; one line
        naming the config key.
    """
    tls, certificate = read_server_tls(config)
    log.info(
        "FTPS certificate {path}, SHA-256 fingerprint {fingerprint}",
        path=certificate,
        fingerprint=tls.fingerprint,
    )
    return tls


def read_server_tls(config: Config) -> tuple[ServerTLS, Path]:
    """
    L{server_tls} without its log line, and the certificate's path: for a
    config reload, which reads the files in the thread pool (no logging
    there) and says what changed in its own line.

    @raise ConfigError: as L{server_tls}.
    """
    server = config.server
    generated = False
    if server.tls_certificate is not None and server.tls_key is not None:
        certificate, key = server.tls_certificate, server.tls_key
    else:
        certificate, key = generate_self_signed(server.state_dir)
        generated = True
    try:
        tls = load_server_tls(certificate, key, server.tls_chain)
    except TLSFileError as e:
        name = "state_dir" if generated and e.which != "chain" else f"tls_{e.which}"
        raise ConfigError(f"[server] {name}: {e}") from None
    return tls, certificate


def user_tls(users: Mapping[str, UserConfig]) -> UserTLS:
    """Per user, (TLS required on control, PROT P required), where set."""
    return {name: (u.tls_required, u.tls_data_required) for name, u in users.items()}


def user_encodings(users: Mapping[str, UserConfig]) -> dict[str, str]:
    """Per user, the FTP name encoding, where set."""
    return {name: u.ftp_encoding for name, u in users.items() if u.ftp_encoding}


class FTPFrontend(Frontend):
    """
    FTP and FTPS: the server's TLS, the user's file system registered with
    the realm as the FTP avatar, one factory for plain connections (which
    AUTH TLS may encrypt) and one for implicit FTPS, and a
    L{ListenerService} per endpoint.

    The FTP protocol needs nothing of a logged-in user but their file
    system, so the avatar it asks the portal for is the L{IFileSystem}
    itself, with the logout that ends the session.

    A listener with its own C{ftp_encoding} option gets a factory of its
    own (sharing the limits, sessions and data connections of the others);
    the others share one.
    """

    def __init__(self, config: Config, parts: SharedParts) -> None:
        """
        Blocking (the certificate is read, or generated at first start);
        build it before the reactor runs.

        @raise ConfigError: the TLS certificate or key cannot be used.
        """
        super().__init__(parts)
        server = config.server
        self.tls = server_tls(config)
        parts.realm.register(IFileSystem, parts.accounts.session)
        #: The data connections open in all FTP sessions (each session's
        #: bounded), for the operator.
        self.data_connections = ChannelCount()
        options: dict[str, Any] = {
            "data_connections": self.data_connections,
            "limits": parts.limits,
            "defender": parts.defender,
            "tls": self.tls,
            "user_tls": user_tls(config.users),
            "user_encodings": user_encodings(config.users),
            "sessions": parts.sessions,
        }
        self._options = options
        portal, reactor = parts.portal, parts.reactor
        self.factory = GatewayFTPFactory.from_config(server, portal, reactor, **options)
        self.implicit_factory = GatewayFTPFactory.from_config(
            server, portal, reactor, implicit=True, **options
        )
        self.factories = [self.factory, self.implicit_factory]
        #: Where plain FTP (and explicit FTPS) is served.
        self.listeners = [
            self.listen(
                description,
                self._factory_for(server, description, self.factory),
                FTP_REFUSAL,
                "[server] ftp_listen",
            )
            for description in server.ftp_listen
        ]
        #: Where implicit FTPS is served.
        self.implicit_listeners = [
            self.listen(
                description,
                wrap_current(
                    self._factory_for(server, description, self.implicit_factory),
                    reactor,
                ),
                key="[server] ftps_listen",
            )
            for description in server.ftps_listen
        ]

    def _factory_for(
        self, server: Any, description: str, shared: GatewayFTPFactory
    ) -> GatewayFTPFactory:
        """C{shared}, or one of its own for a listener with an C{ftp_encoding}."""
        encoding = split_listener(description)[1].get("ftp_encoding")
        if encoding is None:
            return shared
        factory = GatewayFTPFactory.from_config(
            server,
            self.parts.portal,
            self.parts.reactor,
            implicit=shared.implicit,
            ftp_encoding=parse_encoding(encoding),
            **self._options,
        )
        self.factories.append(factory)
        return factory

    def reconfigure(self, config: Config, tls: Optional[ServerTLS] = None) -> None:
        """
        A config reload: new connections get C{tls} (None: the same
        certificate), and new logins the TLS policies and name encodings of
        C{config}'s users (the server's and the listeners' own wait for a
        restart, as L{cosgw.lifecycle.reload} says).
        Connections already open keep the TLS they began with.
        """
        server = config.server
        if tls is not None:
            self.tls = tls
        policies = user_tls(config.users)
        encodings = user_encodings(config.users)
        for factory in self.factories:
            if tls is not None:
                factory.tls = tls
            factory.user_tls = dict(policies)
            factory.user_encodings = dict(encodings)
            factory.tls_required = server.tls_required
            factory.tls_data_required = server.tls_data_required
            factory.trace_commands = server.log_level == "debug"

    def privilegedStartService(self) -> None:
        """
        Listen, then check the passive range where the listeners listen:
        twistd's start, before any service started threads that would keep
        a failed process alive.

        @raise ListenFailed: a listener, or every passive port, is taken.
        """
        super().privilegedStartService()
        self._check_passive_range()

    def startService(self) -> None:
        """As C{privilegedStartService}, for a start that skipped it."""
        super().startService()
        self._check_passive_range()

    def _check_passive_range(self) -> None:
        check_passive_range(
            self.parts.reactor,
            self.factory.passive_ports,
            self.listeners + self.implicit_listeners,
        )

    def ready(self) -> Deferred[list[IListeningPort]]:
        """Fires with the plain FTP listening ports once they all listen."""
        d = DeferredList(
            [listener.listening for listener in self.listeners],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        return d.addCallback(lambda results: [port for _, port in results])
