"""
Unit tests of L{cosgw.policy.accounts.Accounts}' sessions: what every
frontend's avatar factory calls when a user logs in, over a
L{cosgw.testing.MemoryStore}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cosgw.config import ALL_PERMISSIONS
from cosgw.policy.accounts import Account, Accounts, LoginRefused
from cosgw.policy.limits import NetworkRule
from cosgw.testing import MemoryStore
from cosgw.transfer import TransferSettings
from cosgw.vfs import ObjectFileSystem

PEER = IPv4Address("TCP", "192.0.2.7", 50000)


class SessionTests(SynchronousTestCase):
    def make(self, **account: Any) -> Accounts:
        store = MemoryStore(Clock())
        return Accounts(
            {
                "alice": Account(
                    name="alice",
                    store=store,
                    home="users/alice",
                    permissions=ALL_PERMISSIONS,
                    **account,
                )
            },
            TransferSettings(),
        )

    def test_session_and_logout_once(self) -> None:
        """
        A session is the user's file system and a logout that gives the
        session back once, however often it is called.
        """
        accounts = self.make(max_sessions=1)
        fs, logout = accounts.session("alice", PEER)
        self.assertIsInstance(fs, ObjectFileSystem)
        self.assertEqual(fs.user, "alice")
        self.assertEqual(accounts.sessions.count("alice"), 1)
        self.assertRaises(LoginRefused, accounts.session, "alice", PEER)
        logout()
        logout()
        self.assertEqual(accounts.sessions.count("alice"), 0)
        _, second = accounts.session("alice", PEER)
        self.assertEqual(accounts.sessions.count("alice"), 1)
        logout()
        self.assertEqual(accounts.sessions.count("alice"), 1)
        second()
        self.assertEqual(accounts.sessions.count("alice"), 0)

    def test_refused_address(self) -> None:
        """
        A refused session counts nothing; an unknown address is refused for
        a user with network rules.
        """
        accounts = self.make(network=NetworkRule(["10.0.0.0/8"]))
        e = self.assertRaises(LoginRefused, accounts.session, "alice", PEER)
        self.assertEqual(str(e), "user alice may not log in from this address")
        self.assertRaises(LoginRefused, accounts.session, "alice", None)
        self.assertEqual(accounts.sessions.count("alice"), 0)
        fs, logout = accounts.session("alice", IPv4Address("TCP", "10.1.2.3", 1))
        self.assertEqual(accounts.sessions.count("alice"), 1)
        logout()
        self.assertEqual(accounts.sessions.count("alice"), 0)

    def test_unknown_user(self) -> None:
        # A user a config reload removed while their password was checked.
        e = self.assertRaises(LoginRefused, self.make().session, "bob", PEER)
        self.assertEqual(str(e), "user bob is no longer configured")
