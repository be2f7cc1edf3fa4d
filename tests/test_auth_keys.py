"""
Tests for L{cosgw.auth.keys.KeyChecker} on its own, with keys signed by
Conch.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import dsa
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from cosgw.auth.keys import KeyChecker
from tests.sshtesting import (
    NO_OPENSSH,
    USER,
    public_line,
    user_key,
)


def signed_credentials(
    user: bytes, private: keys.Key, algorithm: bytes, data: bytes = b"session data"
) -> SSHPrivateKey:
    return SSHPrivateKey(
        user, algorithm, private.public().blob(), data, private.sign(data, algorithm)
    )


class KeyCheckerTests(SynchronousTestCase):
    """L{KeyChecker} on its own, with keys signed by Conch."""

    skip = NO_OPENSSH

    def setUp(self) -> None:
        self.ed = keys.Key.fromFile(str(user_key("ed25519")))
        self.rsa = keys.Key.fromFile(str(user_key("rsa")))
        self.other = keys.Key.fromFile(str(user_key("other")))
        self.checker = KeyChecker(
            {USER: [public_line(user_key("ed25519")), public_line(user_key("rsa"))]}
        )

    def test_interface(self) -> None:
        verifyObject(ICredentialsChecker, self.checker)

    def test_signed_keys(self) -> None:
        for key, algorithm in [
            (self.ed, b"ssh-ed25519"),
            (self.rsa, b"rsa-sha2-256"),
            (self.rsa, b"rsa-sha2-512"),
        ]:
            d = self.checker.requestAvatarId(
                signed_credentials(b"alice", key, algorithm)
            )
            self.assertEqual(self.successResultOf(d), USER)

    def test_query_for_listed_key(self) -> None:
        c = SSHPrivateKey(b"alice", b"ssh-ed25519", self.ed.public().blob(), None, None)
        self.failureResultOf(self.checker.requestAvatarId(c), ValidPublicKey)

    def test_query_for_unlisted_key(self) -> None:
        """Conch's own checker says any key would do; ours does not."""
        c = SSHPrivateKey(
            b"alice", b"ssh-ed25519", self.other.public().blob(), None, None
        )
        self.failureResultOf(self.checker.requestAvatarId(c), UnauthorizedLogin)

    def test_unknown_user(self) -> None:
        d = self.checker.requestAvatarId(
            signed_credentials(b"bob", self.ed, b"ssh-ed25519")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_unlisted_key(self) -> None:
        d = self.checker.requestAvatarId(
            signed_credentials(b"alice", self.other, b"ssh-ed25519")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_bad_signature(self) -> None:
        c = signed_credentials(b"alice", self.ed, b"ssh-ed25519")
        c.sigData = b"something else"
        self.failureResultOf(self.checker.requestAvatarId(c), UnauthorizedLogin)

    def test_sha1_rsa_signature(self) -> None:
        """ssh-rsa (SHA-1) signatures are refused even for a listed key."""
        d = self.checker.requestAvatarId(
            signed_credentials(b"alice", self.rsa, b"ssh-rsa")
        )
        self.failureResultOf(d, UnauthorizedLogin)

    def test_users_swappable(self) -> None:
        self.checker.users = {"bob": [public_line(user_key("other"))]}
        self.failureResultOf(
            self.checker.requestAvatarId(
                signed_credentials(b"alice", self.ed, b"ssh-ed25519")
            ),
            UnauthorizedLogin,
        )
        d = self.checker.requestAvatarId(
            signed_credentials(b"bob", self.other, b"ssh-ed25519")
        )
        self.assertEqual(self.successResultOf(d), "bob")
        self.assertEqual(set(self.checker.users), {"bob"})

    def test_bad_key_line(self) -> None:
        e = self.assertRaises(ValueError, KeyChecker, {"carol": ["ssh-ed25519 AAAA!!"]})
        self.assertIn("'carol'", str(e))
        private = dsa.generate_private_key(key_size=1024)
        line = keys.Key(private).public().toString("openssh").decode("ascii")
        e = self.assertRaises(ValueError, KeyChecker, {"dave": [line]})
        self.assertIn("ssh-dss", str(e))
