"""
SSH public keys: which keys the gateway accepts, and the checker that logs a
user in with one.

Conch's own public-key checker answers "this key would do" to a query for
I{any} key; L{KeyChecker} answers only for a listed one, refuses SHA-1
(ssh-rsa) and DSA signatures, and parses its keys once.  The strength rules
(L{check_key_strength}) are shared with the SSH frontend's host keys, so a
key too weak to log in with is too weak to serve with.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import getNS
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cosgw.auth.text import decode_bytes
from cosgw.escaping import for_log

__all__ = ["MIN_RSA_BITS", "KeyChecker", "check_key_strength", "fingerprint"]

# Public-key logins are SSH logins: they log beside the SSH frontend's
# transport and login events, under its namespace.
log = Logger(namespace="cosgw.ssh")

#: The smallest RSA key accepted, as a host key or a user key (NIST SP
#: 800-57: 2048 bits is the floor for 112-bit security).
MIN_RSA_BITS = 2048

#: Signature algorithms refused in user authentication: SHA-1 based.
_REFUSED_SIGNATURES = frozenset({b"ssh-rsa", b"ssh-dss"})


def fingerprint(key: keys.Key) -> str:
    """
    C{key}'s fingerprint as OpenSSH prints it: C{SHA256:} and the unpadded
    base64 of the SHA-256 of the public key blob.
    """
    digest = hashlib.sha256(key.public().blob()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def check_key_strength(key: keys.Key, where: str) -> None:
    """
    @raise ValueError: C{key} is DSA (ssh-dss: 1024-bit, SHA-1, removed from
        OpenSSH 10) or RSA under L{MIN_RSA_BITS}; the message starts with
        C{where}.
    """
    if key.type() == "DSA":
        raise ValueError(f"{where}: ssh-dss (DSA) keys are refused; use ed25519")
    if key.type() == "RSA" and key.size() < MIN_RSA_BITS:
        raise ValueError(
            f"{where}: RSA key of {key.size()} bits refused;"
            f" at least {MIN_RSA_BITS} bits are needed"
        )


def _parse_user_keys(users: Mapping[str, Iterable[str]]) -> dict[str, frozenset[bytes]]:
    """
    C{{user: ["type base64 [comment]", ...]}} as C{{user: {public blob}}}.

    @raise ValueError: naming the user and the entry's position for a line
        that is not a public key, or a DSA or short RSA key.
    """
    parsed: dict[str, frozenset[bytes]] = {}
    for user, lines in users.items():
        if isinstance(lines, (str, bytes)):
            # One key line given bare rather than in a list: a str is also
            # an Iterable[str], which the annotation cannot rule out.
            lines = [lines]
        blobs = set()
        for number, line in enumerate(lines, 1):
            where = f"SSH key {number} of user {user!r}"
            text = line.encode("utf-8") if isinstance(line, str) else line
            try:
                key = keys.Key.fromString(text.strip())
            except Exception:
                raise ValueError(f"{where}: not an SSH public key") from None
            check_key_strength(key, where)
            blobs.add(key.public().blob())
        parsed[user] = frozenset(blobs)
    return parsed


@implementer(ICredentialsChecker)
class KeyChecker:
    """
    Checks L{ISSHPrivateKey} credentials against the public keys listed per
    user.  Assign L{users} to swap the keys on a config reload.

    Verification is one signature check (microseconds): it runs on the
    reactor thread.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, users: Mapping[str, Iterable[str]]) -> None:
        """
        @param users: C{{user: [public key lines as in authorized_keys,
            without options]}}.
        @raise ValueError: a key line is unusable (see L{users}).
        """
        self.users = users

    @property
    def users(self) -> Mapping[str, frozenset[bytes]]:
        """
        The parsed keys, C{{user: {public key blob}}}.  Assign a mapping of
        key lines to replace them; it is parsed at once.

        @raise ValueError: on assignment, naming the user and the position of
            a line that is not a public key, or is DSA or RSA under 2048 bits.
        """
        return self._users

    @users.setter
    def users(self, users: Mapping[str, Iterable[str]]) -> None:
        self._users = _parse_user_keys(users)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:
        """
        Check a public key, or answer a query about one.

        @return: a L{Deferred} that fires with the user name (a str) when the
            key is listed for the user and the signature verifies; fails with
            L{conch_error.ValidPublicKey} for a query (no signature) about a
            listed key, and with L{UnauthorizedLogin} otherwise (unknown
            user, unlisted key, SHA-1 signature, bad signature).
        """
        username = credentials.username
        user = decode_bytes(username) if isinstance(username, bytes) else str(username)
        query = not credentials.signature
        try:
            key = keys.Key.fromString(credentials.blob)
        except Exception:
            return self._refuse(user, "unreadable key", query)
        listed = self._users.get(user)
        if listed is None:
            return self._refuse(user, "unknown user", query)
        if key.blob() not in listed:
            return self._refuse(user, f"key {fingerprint(key)} not listed", query)
        if query:
            return defer.fail(conch_error.ValidPublicKey())
        try:
            signature_type = getNS(credentials.signature)[0]
        except Exception:
            return self._refuse(user, "malformed signature", query)
        if (
            credentials.algName in _REFUSED_SIGNATURES
            or signature_type in _REFUSED_SIGNATURES
        ):
            return self._refuse(
                user, f"{signature_type.decode('ascii', 'replace')} signature", query
            )
        try:
            good = key.verify(credentials.signature, credentials.sigData)
        except Exception:
            good = False
        if not good:
            return self._refuse(user, "bad signature", query)
        # Debug: the frontend's audit event is the login's line at info.
        log.debug(
            "Public key login succeeded for user {user} ({fingerprint})",
            user=for_log(user),
            fingerprint=fingerprint(key),
        )
        return defer.succeed(user)

    def _refuse(self, user: str, reason: str, query: bool) -> defer.Deferred:
        if query:
            # Clients ask about every key they hold; not worth a warning.
            log.debug(
                "Public key query for user {user}: {reason}",
                user=for_log(user),
                reason=reason,
            )
        else:
            # The frontend's login-failed audit event, with the client's
            # address and this reason, is the line at info.
            log.debug(
                "Public key login failed for user {user}: {reason}",
                user=for_log(user),
                reason=reason,
            )
        return defer.fail(UnauthorizedLogin(reason))
