"""
ssh-userauth: C{publickey} and C{password} logins through the portal, with
the login defender in front of every attempt that can guess a secret.

  - Login attempts that can guess a secret (a password, a signed public
    key) go through the login defender, which delays failures and bans
    addresses; a public-key query (no signature) proves nothing and is not
    counted.  Conch's own password delay is off: the defender delays.
  - Conch's public-key checker answers "this key would do" to a query for
    I{any} key; L{cosgw.auth.keys.KeyChecker} only for a listed one,
    refuses SHA-1 (ssh-rsa) and DSA signatures, and parses its keys once.
  - A login that completes after its connection was lost, or a second login
    completing on an already authenticated connection (a client may
    pipeline USERAUTH_REQUESTs), is logged out at once: Conch would install
    the avatar over the first and never call its logout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.conch.ssh import transport, userauth
from twisted.cred.credentials import ISSHPrivateKey, IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.auth.text import decode_bytes
from cosgw.escaping import for_log
from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.policy.accounts import LoginRefused
from cosgw.policy.defender import LoginBanned

if TYPE_CHECKING:
    from cosgw.audit import Session
    from cosgw.frontends.sftp.transport import GatewaySSHTransport

__all__ = ["GatewayUserAuthServer", "refusal_code"]

log = Logger(namespace="cosgw.ssh")


def _is_key_query(credentials: Any) -> bool:
    """
    A public-key query (RFC 4252 section 7: "has signature" FALSE): it asks
    whether a key would do and proves nothing.  Conch treats an empty
    signature the same way.
    """
    # getattr: zope's Attribute declarations are invisible to mypy.
    return bool(ISSHPrivateKey.providedBy(credentials)) and not getattr(
        credentials, "signature", None
    )


def refusal_code(error: BaseException) -> Optional[int]:
    """
    The disconnect that answers a login error which ends the connection
    (a ban, too many logins at once, a rule refusing the session), or None
    for one that leaves the client its next attempt (USERAUTH_FAILURE).
    """
    if isinstance(error, LoginBanned):
        return transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
    if isinstance(error, LoginRefused):
        return transport.DISCONNECT_TOO_MANY_CONNECTIONS
    return None


class _AttemptPortal:
    """
    The portal as userauth sees it: every login that can guess a secret (a
    password, a signed key) goes through C{guard.guard(ip, user, login,
    session)} when there is a guard, and every attempt under way can be
    cancelled when the client goes.
    """

    def __init__(
        self, portal: Portal, guard: Any, ip: str, session: Optional[Session] = None
    ) -> None:
        """
        @param session: the connection's audit session, given to the realm
            as the mind (Conch passes None): per-user network rules see the
            client's address in it, as over FTP, and the user's file system
            emits its events in it; the guard emits the login's outcome.
        """
        self._portal = portal
        self._guard = guard
        self._ip = ip
        self._session = session
        self._pending: set[defer.Deferred] = set()

    def listCredentialsInterfaces(self) -> list[Any]:
        return self._portal.listCredentialsInterfaces()

    def login(self, credentials: Any, mind: Any, *interfaces: Any) -> defer.Deferred:
        if mind is None:
            mind = self._session

        def login() -> defer.Deferred:
            return self._portal.login(credentials, mind, *interfaces)

        if self._guard is None or _is_key_query(credentials):
            d = login()
        else:
            username = credentials.username
            user = decode_bytes(username) if isinstance(username, bytes) else username
            d = self._guard.guard(self._ip, user, login, self._session)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def cancel_pending(self) -> None:
        """
        Cancel the attempts still under way: the checker's work or the
        defender's failure delay then ends, and no avatar is made for a
        client that hung up.
        """
        for d in list(self._pending):
            d.cancel()


class GatewayUserAuthServer(userauth.SSHUserAuthServer):
    """
    ssh-userauth offering C{publickey} and C{password} (password only once
    the transport is encrypted, as Conch does), with the login guard; the
    attempts under way are cancelled when the service stops.
    """

    transport: GatewaySSHTransport

    # Conch's per-attempt debug lines, quiet unless log_level is debug.
    _log = ConchLogger(namespace="twisted.conch.ssh.userauth")

    interfaceToMethod = {
        ISSHPrivateKey: b"publickey",
        IUsernamePassword: b"password",
    }
    # The login defender delays failures; Conch's delay would add to it.
    passwordDelay = 0

    def serviceStarted(self) -> None:
        factory = self.transport.factory
        # Conch's class attribute is the global reactor.
        self.clock = factory.reactor
        super().serviceStarted()
        # The transport's login deadline runs from the TCP connection;
        # Conch's would start only now.
        if self._cancelLoginTimeout is not None:
            self._cancelLoginTimeout.cancel()
            # Conch sets None here too; its inferred type omits it.
            self._cancelLoginTimeout = None  # type: ignore[assignment]
        self.portal = _AttemptPortal(
            self.portal,
            factory.login_guard,
            self.transport.peer,
            getattr(self.transport, "audit", None),
        )

    def serviceStopped(self) -> None:
        super().serviceStopped()
        if isinstance(self.portal, _AttemptPortal):
            self.portal.cancel_pending()

    def _ebPassword(self, f: Failure) -> Failure:
        # Conch waits passwordDelay (0 here) on a timer; fail at once.
        return f

    def _cbFinishedAuth(self, result: Any) -> None:
        interface, avatar, logout = result
        transport_ = self.transport
        login_allowed = getattr(transport_, "login_allowed", None)
        if hasattr(transport_, "avatar") or (
            login_allowed is not None and not login_allowed()
        ):
            # A pipelined second login, or the connection is closing or
            # gone: nobody would ever call this avatar's logout.
            log.info(
                "SSH login of {user} from {peer} completed too late; logged out",
                user=for_log(str(getattr(avatar, "username", None))),
                peer=getattr(transport_, "peer", "?"),
            )
            logout()
            return
        super()._cbFinishedAuth(result)

    def _ebBadAuth(self, reason: Failure) -> None:
        if reason.check(defer.CancelledError) and not self._connected():
            return  # cancelled by serviceStopped: the client is gone
        code = refusal_code(reason.value) if reason.value is not None else None
        if code is not None:
            # A ban (when to come back), too many logins at once, or the
            # right secret but a rule (the user's networks or session limit)
            # refusing the session: the defender's or the rule's own words,
            # as FTP's 421 says them, and hang up.  The guard's login-failed
            # event is the log line.
            text = str(reason.value)
            self.transport.end_reason(f"login refused: {text}")
            self.transport.sendDisconnect(code, text.encode("utf-8"))
            return
        super()._ebBadAuth(reason)

    def _connected(self) -> bool:
        login_allowed = getattr(self.transport, "login_allowed", None)
        return login_allowed is None or login_allowed()
