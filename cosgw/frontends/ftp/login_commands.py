"""
Logging in and out, and FTPS (RFC 4217): USER, PASS, REIN, QUIT, AUTH,
PBSZ, PROT and CCC.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.replies import Reply, reply_for
from cosgw.frontends.ftp.session import Event
from cosgw.interfaces import IFileSystem
from cosgw.policy.accounts import LoginRefused

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")


class LoginCommands(CommandContext):
    """The login sequence and the encryption of the control connection."""

    # -- login --------------------------------------------------------------

    def ftp_USER(self, username: str) -> Reply:
        if not username:
            return Reply(501, "USER requires a user name")
        if not self.session.secure and self.factory.tls_policy(username)[0]:
            log.info(
                "refused a login in clear text for {user} from {peer}",
                user=for_log(username),
                peer=self.peer.host,
            )
            return Reply(534, "Policy requires TLS: send AUTH TLS first")
        if self.session.logged_in:
            # A new login: the session is not logged in from now on.
            self.start_login_deadline()
        self.session.name_user(username)
        # The account's name encoding from now on: PASS is read in it.
        self.names.configure(self.factory.encoding_for(username))
        return Reply(331, "Password required")

    def ftp_PASS(self, password: str) -> Deferred[Reply]:
        username = self.session.take_pending_user()
        # Twisted's stubs want bytes; cosgw's password checker takes the
        # UTF-8 (RFC 2640) names and passwords as str.
        credentials = UsernamePassword(username, password)  # type: ignore[arg-type]
        portal = self.factory.portal
        defender = self.factory.defender

        # The mind is the audit session: the realm's rules see the client's
        # address in it, and the user's file system emits its events in it.
        session = self.audit

        def login() -> Deferred[Any]:
            return portal.login(credentials, session, IFileSystem)

        if defender is not None:
            d = defender.guard(self.peer.host, username, login, session)
        else:
            d = login()
        return d.addCallbacks(self._logged_in, self._login_refused)

    def _logged_in(self, result: tuple[Any, IFileSystem, Any]) -> Reply:
        _, fs, logout = result
        if self.session.over:
            logout()
            return Reply(421, "Connection closed")
        self.session.log_in(fs, logout)
        self.session.prot_required = self.factory.tls_policy(fs.user)[1]
        self.logged_in()
        return Reply(230, "Login successful")

    def _login_refused(self, failure: Failure) -> Reply:
        failure.trap(
            cred_error.UnauthorizedLogin,
            cred_error.UnhandledCredentials,
            LoginRefused,
        )
        self.session.advance(Event.LOGIN_REFUSED)
        self.names.configure(self.factory.encoding_for(None))
        reply = reply_for(failure, "PASS")
        if reply.code == 421:
            # Banned, or a rule refuses this user here or now: say why
            # and hang up (RFC 959: 421 service closing), running nothing
            # the client sent meanwhile.
            self.session.advance(Event.QUIT)
            self.end_reason(f"login refused: {reply.text}")
            self.reactor.callLater(0, self.close_control)
        return reply

    def ftp_REIN(self) -> Reply:
        """
        RFC 959 REIN: back to a new session (a transfer in progress finishes
        first: REIN waits its turn).  TLS stays on, since it cannot be
        stopped, but PBSZ and PROT must be given again.  The login
        deadline starts again.
        """
        self.session.reinitialize(implicit_tls=self.factory.implicit)
        self.names.configure(self.factory.encoding_for(None))
        self.data.close()
        self.start_login_deadline()
        return Reply(220, "Ready for a new user")

    def ftp_QUIT(self) -> None:
        self.end_reason("client quit")
        self.sendLine("221 Goodbye")
        self.close_control()

    # -- FTPS (RFC 4217) -----------------------------------------------------

    def ftp_AUTH(self, mechanism: str) -> Optional[Reply]:
        tls = self.data.tls
        if tls is None:
            return Reply(502, "TLS is not configured")
        session = self.session
        if session.secure:
            return Reply(503, "TLS is already in use")
        kind = mechanism.strip().upper()
        if kind not in ("TLS", "TLS-C", "SSL", "TLS-P"):
            return Reply(504, "Use AUTH TLS")
        self.sendLine(f"234 AUTH {kind} successful")
        # Everything after the 234 is TLS (the reply above went in clear);
        # what the client sent in clear after AUTH is dropped.
        self.start_tls(tls.options)
        session.secure = True
        self.audit.protocol = "ftps"
        if kind in ("SSL", "TLS-P"):
            # The historical mechanisms also protect the data connections.
            session.pbsz, session.prot = True, "P"
        return None

    def ftp_PBSZ(self, size: str) -> Reply:
        if not self.session.secure:
            return Reply(503, "PBSZ requires AUTH TLS first")
        if not size.strip().isdigit():
            return Reply(501, "PBSZ takes a number (0)")
        self.session.pbsz = True
        return Reply(200, "PBSZ=0")

    def ftp_PROT(self, level: str) -> Reply:
        if not self.session.pbsz:
            return Reply(503, "PROT requires PBSZ first")
        level = level.strip().upper()
        if level == "C":
            if self.protection_required:
                return Reply(534, "Policy requires PROT P")
            self.session.prot = "C"
            return Reply(200, "Protection level set to Clear")
        if level == "P":
            self.session.prot = "P"
            return Reply(200, "Protection level set to Private")
        if level in ("S", "E"):
            return Reply(536, f"PROT {level} is not supported")
        return Reply(504, "PROT C or P")

    def ftp_CCC(self) -> Reply:
        # Going back to clear text would expose the session; Twisted's TLS
        # transports cannot do it anyway.
        return Reply(534, "CCC is not allowed")
