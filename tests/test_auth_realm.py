"""Tests for L{cosgw.auth.realm}: one realm, an avatar factory per interface."""

from __future__ import annotations

from twisted.cred.portal import IRealm
from twisted.internet.defer import succeed
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from cosgw.auth.realm import Realm
from tests.authtesting import IBar, IFoo, noop


class RealmTests(TestCase):
    def setUp(self) -> None:
        self.calls = []

        def factory(avatar_id, mind):
            self.calls.append((avatar_id, mind))
            return ("foo-avatar", avatar_id), noop

        self.realm = Realm({IFoo: factory})

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRealm, self.realm))

    def test_first_known_interface(self) -> None:
        mind = object()
        result = self.realm.requestAvatar("alice", mind, IBar, IFoo)
        self.assertEqual(result, (IFoo, ("foo-avatar", "alice"), noop))
        self.assertEqual(self.calls, [("alice", mind)])

    def test_bytes_avatar_id(self) -> None:
        """Conch's key checker gives bytes; factories always get str."""
        _, avatar, _ = self.realm.requestAvatar("josé".encode(), None, IFoo)
        self.assertEqual(avatar, ("foo-avatar", "josé"))
        self.assertEqual(self.calls, [("josé", None)])

    def test_no_factory(self) -> None:
        self.assertRaises(
            NotImplementedError, self.realm.requestAvatar, "alice", None, IBar
        )
        self.assertEqual(self.calls, [])

    def test_register(self) -> None:
        self.realm.register(IBar, lambda a, m: ("bar-avatar", noop))
        self.assertEqual(
            self.realm.requestAvatar("alice", None, IBar, IFoo),
            (IBar, "bar-avatar", noop),
        )

    def test_register_twice(self) -> None:
        self.assertRaises(ValueError, self.realm.register, IFoo, lambda a, m: None)

    def test_deferred_factory(self) -> None:
        """A factory may return a Deferred of (avatar, logout)."""
        realm = Realm({IFoo: lambda a, m: succeed(("deferred-avatar", noop))})
        d = realm.requestAvatar("alice", None, IFoo)
        self.assertEqual(self.successResultOf(d), (IFoo, "deferred-avatar", noop))
