"""
HTTP basic authentication (RFC 7617) for WebDAV, through the portal and
the login defender that FTP and SFTP use.

  - Over plain HTTP from an address other than loopback, a password would
    cross the network in clear: refused with 403 and a log line, unless
    C{webdav_allow_plain_auth} says a TLS proxy in front makes it safe.
  - Every attempt to check a password goes through
    L{cosgw.policy.defender.LoginDefender.guard} (bans, failure delays,
    the login and login-failed events of the connection's session).
  - HTTP sends the credentials with every request, and a password hash is
    slow on purpose: a connection remembers the credentials it logged in
    with (a digest salted per connection, never the password) and the file
    system the login gave, so further requests on it with the same
    credentials cost nothing; different credentials log in again.  A ban
    of the address still refuses them at once: the defender is asked
    before each remembered login is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import Logger
from zope.interface import Interface

from cosgw.frontends.webdav.channel import DAVChannel
from cosgw.policy.accounts import LoginRefused
from cosgw.policy.defender import LoginBanned

__all__ = ["Authenticator", "HTTPError", "IWebDAVUser"]

log = Logger(namespace="cosgw.webdav")

REALM = "cosgw"
CHALLENGE = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}


class IWebDAVUser(Interface):
    """
    The avatar interface WebDAV asks the realm for: the user's
    L{cosgw.interfaces.IFileSystem} (FTP registered that interface itself).
    """


class HTTPError(Exception):
    """An answer other than success: its status, text and headers."""

    def __init__(
        self,
        status: int,
        text: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}
        #: An XML body (an RFC 4918 error element) instead of the text.
        self.body = body


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _credentials(header: bytes) -> tuple[str, bytes]:
    """
    The user name and password of a Basic C{Authorization} header.

    @raise HTTPError: 401, not Basic or not readable.
    """
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise HTTPError(401, "only Basic authentication is offered", CHALLENGE)
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(401, "malformed Basic credentials", CHALLENGE) from None
    user, colon, password = decoded.partition(b":")
    if not colon:
        raise HTTPError(401, "malformed Basic credentials", CHALLENGE)
    try:
        name = user.decode("utf-8")
    except UnicodeDecodeError:
        name = user.decode("latin-1")
    return name, password


class Authenticator:
    """Logs a request's credentials in, once per connection; see the module."""

    def __init__(self, portal: Any, defender: Any, allow_plain: bool) -> None:
        self.portal = portal
        self.defender = defender
        self.allow_plain = allow_plain

    def check_transport(self, channel: DAVChannel) -> None:
        """@raise HTTPError: 403, basic auth over plain HTTP is refused here."""
        if channel.secure or self.allow_plain or is_loopback(channel.peer):
            return
        if channel.close_reason is None:
            log.warn(
                "WebDAV client at {peer} refused: basic authentication over"
                " plain HTTP (use HTTPS, or set webdav_allow_plain_auth)",
                peer=channel.peer,
            )
            channel.end_reason("basic authentication over plain HTTP refused")
        raise HTTPError(
            403,
            "passwords are not accepted over plain HTTP from your address:"
            " connect with HTTPS",
        )

    async def login(self, channel: DAVChannel, header: bytes | None) -> Any:
        """
        The file system of the user whose credentials C{header} holds.

        @raise HTTPError: 401 (none, or wrong: the client may ask its user
            again), 403 (plain HTTP, a ban, a rule refusing the session).
        """
        self.check_transport(channel)
        if not header:
            raise HTTPError(401, "authentication required", CHALLENGE)
        name, password = _credentials(header)
        salt = getattr(channel, "_credential_salt", None)
        if salt is None:
            salt = os.urandom(16)
            channel._credential_salt = salt  # type: ignore[attr-defined]
        digest = hashlib.sha256(salt + name.encode("utf-8") + b"\0" + password).digest()
        known = channel.login
        if known is not None and known[0] == digest:
            remaining = self.defender.banned(channel.peer) if self.defender else 0
            if remaining > 0:
                channel.logged_in(None)
                raise HTTPError(403, str(LoginBanned(remaining)))
            return known[1]
        channel.logged_in(None)
        fs, logout = await self._check(channel, name, password)
        channel.logged_in((digest, fs, logout))
        return fs

    async def _check(
        self, channel: DAVChannel, name: str, password: bytes
    ) -> tuple[Any, Any]:
        credentials = UsernamePassword(name.encode("utf-8"), password)

        def attempt() -> Any:
            return self.portal.login(credentials, channel.audit, IWebDAVUser)

        try:
            if self.defender is None:
                _, fs, logout = await attempt()
            else:
                _, fs, logout = await self.defender.guard(
                    channel.peer, name, attempt, channel.audit
                )
        except LoginBanned as e:
            raise HTTPError(403, str(e)) from None
        except LoginRefused as e:
            raise HTTPError(403, str(e)) from None
        except UnauthorizedLogin:
            # The defender's login-failed event is the log line.
            raise HTTPError(401, "wrong user name or password", CHALLENGE) from None
        return fs, logout
