"""
Who may use the admin listener: it shows every user's sessions and can end
them, so it is either this host's alone or behind a password.

  - Without C{admin_users} it answers loopback clients only (the config
    refuses a listener other hosts could reach, and a request from another
    address, as through a PROXY header, is refused here too), and only when
    the browser asked for an address or C{localhost}: a page elsewhere
    whose name was made to point at 127.0.0.1 (DNS rebinding) cannot read
    it.
  - With C{admin_users}, every request but the health checks needs HTTP
    basic authentication as one of those users, checked by the gateway's
    password checker (in its thread pool, as for FTP and SFTP) under the
    login defender: failures are delayed and ban the client's address for
    every protocol alike.  A verified user and password are remembered for
    L{REMEMBER} seconds (as a keyed digest), so the status page's polling
    costs no key derivation per request; a reload forgets them all, so a
    changed or removed password stops working at once.
  - C{/healthz} and C{/readyz} need no password: load balancers and service
    managers probe them.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Collection
from typing import Any, Optional

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.util import DeferredResource

from cosgw.policy.defender import LoginBanned, LoginDefender

__all__ = ["REMEMBER", "AdminAccess", "Guard", "Refusal", "client_host"]

#: Seconds a verified user and password are remembered.
REMEMBER = 60.0
#: How many verified users and passwords are remembered at once.
REMEMBERED = 64
#: Paths anybody who may connect can ask for.
OPEN_PATHS = frozenset({b"healthz", b"readyz"})


class Refusal(Resource):
    """A short text answer with an error status (and headers)."""

    isLeaf = True

    def __init__(self, code: int, text: str, **headers: str) -> None:
        super().__init__()
        self.code = code
        self.text = text
        self.headers = headers

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        for name, value in self.headers.items():
            request.setHeader(name.replace("_", "-").encode(), value.encode())
        return self.text.encode() + b"\n"


def client_host(request: IRequest) -> Optional[str]:
    """The client's IP address (the real one behind a PROXY header), if any."""
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _named_by_address(request: IRequest) -> bool:
    """Whether the Host header names an IP address or localhost."""
    header = request.getHeader(b"host")
    if header is None:
        return True  # HTTP/1.0: no name to rebind
    host = header.decode("latin-1").strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AdminAccess:
    """The admin listener's rule: loopback, or basic auth over C{users}."""

    def __init__(
        self,
        users: Collection[str],
        checker: Optional[ICredentialsChecker],
        defender: LoginDefender,
        clock: IReactorTime,
    ) -> None:
        """
        @param users: the names allowed in; empty: no authentication,
            loopback clients only.
        @param checker: the gateway's password checker (needed with users).
        """
        self.users = frozenset(users)
        self._checker = checker
        self._defender = defender
        self._clock = clock
        self._key = secrets.token_bytes(32)
        #: Digest of a verified user and password -> (user, when it expires).
        self._verified: dict[bytes, tuple[str, float]] = {}

    def admit(self, request: IRequest, inner: Resource, path: bytes) -> IResource:
        """
        The resource that answers C{request} for child C{path} of the root
        C{inner}: that child, or a refusal, or (while a password is being
        verified) a L{DeferredResource} that gives one of them.
        """
        if not self.users:
            host = client_host(request)
            if host is not None and not _is_loopback(host):
                return Refusal(403, "the admin listener answers this host only")
            if not _named_by_address(request):
                return Refusal(403, "ask for the admin listener by IP address")
            return inner.getChildWithDefault(path, request)
        if path in OPEN_PATHS:
            return inner.getChildWithDefault(path, request)
        # Let the child be found again once the user is known.
        request.postpath.insert(0, request.prepath.pop())
        return self._authenticated(request, inner)

    def _authenticated(self, request: IRequest, inner: Resource) -> IResource:
        offered = _basic_credentials(request)
        if offered is None:
            return _challenge()
        user, password = offered
        digest = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        now = self._clock.seconds()
        remembered = self._verified.get(digest)
        if remembered is not None and remembered[1] > now:
            return inner
        name = user.decode("utf-8", "replace")
        host = client_host(request) or "local"
        d = self._defender.guard(host, name, lambda: self._verify(user, password))

        def verified(avatar: str) -> IResource:
            self._remember(digest, avatar, now)
            return inner

        def refused(failure: Failure) -> IResource:
            if failure.check(LoginBanned):
                assert isinstance(failure.value, LoginBanned)
                seconds = max(1, round(failure.value.remaining))
                return Refusal(429, str(failure.value), retry_after=str(seconds))
            failure.trap(UnauthorizedLogin)
            return _challenge()

        return DeferredResource(d.addCallbacks(verified, refused))

    def forget(self) -> None:
        """
        Check every password again from now on: the reload that calls this
        may have changed or removed one, or the list of admin users.
        """
        self._verified.clear()

    def _verify(self, user: bytes, password: bytes) -> Deferred[str]:
        assert self._checker is not None, "admin_users need the password checker"
        d: Deferred[Any] = self._checker.requestAvatarId(
            UsernamePassword(user, password)
        )

        def admin(avatar: Any) -> str:
            if avatar not in self.users:
                raise UnauthorizedLogin("not an admin user")
            return str(avatar)

        return d.addCallback(admin)

    def _remember(self, digest: bytes, user: str, now: float) -> None:
        verified = self._verified
        for key in [k for k, (_, until) in verified.items() if until <= now]:
            del verified[key]
        while len(verified) >= REMEMBERED:
            del verified[next(iter(verified))]
        verified[digest] = (user, now + REMEMBER)


class Guard(Resource):
    """The admin listener's root: every request passes L{AdminAccess}."""

    def __init__(self, inner: Resource, access: AdminAccess) -> None:
        super().__init__()
        self._inner = inner
        self._access = access

    def getChildWithDefault(self, path: bytes, request: IRequest) -> IResource:
        return self._access.admit(request, self._inner, path)


def _basic_credentials(request: IRequest) -> Optional[tuple[bytes, bytes]]:
    """The user and password of a basic Authorization header, if any."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip())
    except binascii.Error:
        return None
    user, colon, password = decoded.partition(b":")
    if not colon or not user:
        return None
    return user, password


def _challenge() -> Refusal:
    return Refusal(
        401,
        "authentication required",
        www_authenticate='Basic realm="cosgw admin", charset="UTF-8"',
    )
