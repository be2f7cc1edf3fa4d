"""
An FTP control connection as an audited session (L{cosgw.audit.Session}):
opened as soon as the client connects (a client that never logs in is a
session too), closed with the reason when the connection ends, its
protocol C{ftps} once the control connection is encrypted, and the status
its events carry taken from the frontend's one mapping of errors to
replies (L{reply_of}).

A kick (the admin API) ends the session as a server ends an FTP session:
C{421} with the reason, then the close.  An upload in progress is aborted
as ABOR aborts it (nothing is stored, nothing is kept for a resume: an
operator cut it, the client did not lose its connection), and nothing is
sent after the 421.

A drain (the gateway stopping, L{cosgw.lifecycle.drain}) ends the session
when it is idle: at once when no command or transfer runs, else right
after the transfer's reply (its 226), with C{421 Shutting down}; no command
starts meanwhile.  At the drain's timeout a transfer still running is
interrupted as when its client is lost (an upload is kept for a resume and
its 426 says where to resume), then the 421.
"""

from __future__ import annotations

from typing import Optional

from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.replies import LOCAL_ERROR, SUCCESS_CODES, reply_of

__all__ = ["AuditedSession"]


class AuditedSession(CommandContext):
    """The control connection's audit session, its statuses and its kick."""

    #: The command running (a transfer aside), whose reply a success event
    #: names.
    command: Optional[str] = None
    #: The code of the last reply sent: what a success event names when no
    #: command runs (220 at the session's start, 221 after QUIT, ...).
    last_code = ""
    #: Why the connection ends, once known; the first reason given stands.
    close_reason: Optional[str] = None
    #: The session was kicked: its 421 was the last thing sent.
    kicked = False
    #: The gateway drains: why (the 421's text), else None.
    draining: Optional[str] = None
    #: A command other than a transfer is running (the protocol's).
    busy: bool

    def open_audit(self) -> None:
        """The client connected: its session begins (C{session-open})."""
        protocol = "ftps" if self.factory.implicit else "ftp"
        self.audit = self.factory.sessions.open(
            protocol, self.peer.host, self.peer.port, self.kick, self.status_of
        )
        self.audit.drain = self.drain

    def end_reason(self, reason: str) -> None:
        """Why the connection is about to end (the first reason stands)."""
        if self.close_reason is None:
            self.close_reason = reason

    def close_audit(self, lost: str) -> None:
        """The connection is gone (C{session-close}); C{lost}: the reason
        when no other was given."""
        self.factory.sessions.close(self.audit, self.close_reason or lost)

    def status_of(self, error: Optional[BaseException]) -> str:
        """
        The reply code the client gets for an event's outcome: for an
        error, its reply (L{reply_of}); for a success, the reply of the
        command running, else the last reply sent.  A transfer that the
        end of the session cut short gets 426, as RFC 959 names a closed
        connection.  After a kick, the client was told 421 and nothing else.
        """
        if self.kicked:
            return "421"
        if error is None:
            transfer = self.transfer
            command = transfer.command if transfer is not None else self.command
            code = SUCCESS_CODES.get(command or "")
            return str(code) if code is not None else self.last_code
        if isinstance(error, ConnectionError):
            return "426"
        return str((reply_of(error) or LOCAL_ERROR).code)

    def kick(self, reason: str) -> None:
        """
        End the session now: an upload in progress is aborted, the client
        gets C{421 reason} and the connection closes.  A connection already
        closing (its last replies unread) is cut off.
        """
        self.end_reason(f"kicked: {reason}")
        if self.session.over:
            self.transport.abortConnection()
            return
        if self.transfer is not None:
            self.transfer.cancel(client_gone=False)
        self.sendLine(f"421 {reason}")
        self.kicked = True
        self.close_control()

    def drain(self, reason: str, now: bool = False) -> None:
        """
        The gateway stops: no command starts any more, and the session ends
        with C{421 reason} once the command or transfer running has replied
        (at once if none runs).  C{now}: a transfer running is interrupted
        as when the client is lost (an upload is kept for a resume), a
        command running is not waited for.
        """
        self.end_reason(reason)
        self.draining = reason
        if self.session.over:
            return
        if self.transfer is not None:
            if now:
                self.transfer.cancel(client_gone=True, why=f"interrupted: {reason}")
            return
        if now or not self.busy:
            self.drained()

    def drained(self) -> None:
        """Draining and idle: C{421} with the drain's reason, then close."""
        if self.session.over or self.draining is None:
            return
        self.sendLine(f"421 {self.draining[:1].upper()}{self.draining[1:]}")
        self.kicked = True  # the 421 is the last word
        self.close_control()
