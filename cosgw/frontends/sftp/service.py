"""
The SFTP frontend as one service: everything the gateway serves over SSH,
built from the config and the parts every frontend shares (the portal,
realm, accounts, connection limits and login defender), so that
C{makeService} only composes.
"""

from __future__ import annotations

from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cosgw.auth.keys import fingerprint
from cosgw.config import Config, ConfigError
from cosgw.frontends.frontend import Frontend, SharedParts
from cosgw.frontends.listener import ssh_refusal
from cosgw.frontends.sftp.conchlog import set_conch_verbose
from cosgw.frontends.sftp.factory import GatewaySSHFactory
from cosgw.frontends.sftp.hostkeys import load_host_keys
from cosgw.frontends.sftp.protocol import FileTransfer
from cosgw.frontends.sftp.server import GatewaySFTPServer
from cosgw.frontends.sftp.session import SFTPUser
from cosgw.privileges import private_directory
from cosgw.vfs import RandomAccessSettings

__all__ = ["SFTPFrontend"]

# The namespace the host-key fingerprints had when cosgw/service.py logged
# them, so an operator's log filters keep matching.
log = Logger(namespace="cosgw.service")


class SFTPFrontend(Frontend):
    """
    SFTP on every C{sftp_listen} endpoint: the host keys, the avatar
    factory registered with the realm for L{IConchUser}, one SSH factory
    over the shared portal, and a L{ListenerService} per endpoint.

    Stopping it stops listening first, then ends the SSH sessions still
    open, so no client is left on a gateway that is going away.
    """

    def __init__(self, config: Config, parts: SharedParts) -> None:
        """
        Blocking (host keys are read, or generated at first start); build it
        before the reactor runs.  The portal must offer the public-key
        checker for key logins.

        @raise ConfigError: a host key cannot be used.
        """
        super().__init__(parts)
        server = config.server
        set_conch_verbose(server.log_level == "debug")
        self.accounts = parts.accounts
        self.max_handles = server.max_handles
        # One for the gateway: every session's files share its spool budget.
        # Made now by the gateway's user (0700), so that a state directory
        # it cannot write stops the start rather than an SFTP close.
        private_directory(server.state_dir)
        spool = private_directory(server.state_dir / "spool")
        self.settings = RandomAccessSettings(
            spool_dir=str(spool),
            max_sparse_gap=config.transfer.max_sparse_gap,
            max_spool_size=config.transfer.max_spool_size,
        )
        try:
            host_keys = load_host_keys(server.ssh_host_keys, server.state_dir)
        except ValueError as e:
            name = "ssh_host_keys" if server.ssh_host_keys else "state_dir"
            raise ConfigError(f"[server] {name}: {e}") from None
        for key in host_keys.values():
            log.info(
                "SSH host key {type}: {fingerprint}",
                type=key.sshType().decode("ascii"),
                fingerprint=fingerprint(key),
            )
        parts.realm.register(IConchUser, self.avatar)
        self.factory = GatewaySSHFactory(
            parts.portal,
            host_keys,
            parts.reactor,
            login_timeout=server.login_timeout,
            idle_timeout=server.idle_timeout,
            admission=parts.limits,
            login_guard=parts.defender,
            sessions=parts.sessions,
        )
        self.factories = [self.factory]
        # Sent when the gateway is out of file descriptors at accept.
        refusal = ssh_refusal(
            self.factory.protocol.ourVersionString,
            b"too many open files, try again later",
        )
        self.listeners = [
            self.listen(description, self.factory, refusal, "[server] sftp_listen")
            for description in server.sftp_listen
        ]

    def avatar(
        self, avatar_id: str, mind: Any
    ) -> tuple[SFTPUser, Any] | Deferred[tuple[SFTPUser, Any]]:
        """
        The realm's factory for L{IConchUser}: the user's session (their
        file system, or L{cosgw.policy.accounts.LoginRefused}) served over
        SFTP, and its logout.
        """
        opened = self.accounts.session(avatar_id, mind)
        if isinstance(opened, Deferred):
            # Shared state: the user's sessions on other replicas count too.
            return opened.addCallback(self._avatar, avatar_id)
        return self._avatar(opened, avatar_id)

    def _avatar(
        self, opened: tuple[Any, Any], avatar_id: str
    ) -> tuple[SFTPUser, Any]:
        fs, logout = opened
        avatar = SFTPUser(
            avatar_id,
            GatewaySFTPServer(fs, self.settings, self.max_handles),
            FileTransfer,
            on_logout=logout,
        )
        return avatar, avatar.logout

    def stopService(self) -> Deferred[None]:
        """Stop listening, then end the SSH sessions still open."""
        d = super().stopService()
        return d.addCallback(lambda _: self.factory.disconnect_all())
