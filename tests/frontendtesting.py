"""
What the frontend service tests share: the parts every frontend is built
from, over a L{MemoryReactorClock} and a L{MemoryStore}, and a config with
the server keys a test sets.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cosgw.audit import SessionTable
from cosgw.auth.realm import Realm
from cosgw.config import (
    ALL_PERMISSIONS,
    Config,
    ServerConfig,
    TransferConfig,
    UserConfig,
)
from cosgw.frontends.frontend import SharedParts
from cosgw.policy.accounts import Account, Accounts
from cosgw.policy.defender import LoginDefender
from cosgw.policy.limits import ConnectionLimits
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings
from tests.sshtesting import temporary_directory


class FrontendTestCase(SynchronousTestCase):
    """alice, with one session at most, over a MemoryStore."""

    #: The portal's checkers (a frontend may need one for its logins).
    checkers: tuple[ICredentialsChecker, ...] = ()

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.state = temporary_directory(self)
        self.accounts = Accounts(
            {
                "alice": Account(
                    name="alice",
                    store=MemoryStore(Clock()),
                    home="users/alice",
                    permissions=ALL_PERMISSIONS,
                    max_sessions=1,
                )
            },
            TransferSettings(),
        )
        self.realm = Realm()
        self.portal = Portal(self.realm, list(self.checkers))
        self.limits = ConnectionLimits()
        self.defender = LoginDefender(self.reactor)

    def parts(self) -> SharedParts:
        return SharedParts(
            portal=self.portal,
            realm=self.realm,
            accounts=self.accounts,
            limits=self.limits,
            defender=self.defender,
            reactor=self.reactor,
            sessions=SessionTable(self.reactor),
        )

    def config(
        self, server: dict[str, Any], users: dict[str, UserConfig] | None = None
    ) -> Config:
        return Config(
            source=None,
            server=ServerConfig(state_dir=self.state, **server),
            transfer=TransferConfig(),
            storages={},
            users=users or {},
            notices=(),
        )
