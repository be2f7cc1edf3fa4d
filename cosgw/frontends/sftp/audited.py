"""
An SSH connection as an audited session: what its events say the client
was told (an SFTP status name for the file system's events, from the
frontend's one mapping, L{status_for}; the SSH answer for a login's; the
DISCONNECT once the gateway sent one), why it ended, its kick, and its
drain: when the gateway stops (L{cosgw.lifecycle.drain}) a connection with
no file open is disconnected at once with the reason; one with files open
(an upload, a download) may finish and close them, and is disconnected
a moment after the last CLOSE (L{cosgw.frontends.sftp.protocol}); at the
drain's timeout it is disconnected whatever is open, its uploads aborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional, Union

from twisted.conch.ssh import filetransfer, transport
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.escaping import for_log
from cosgw.frontends.sftp.server import status_for
from cosgw.frontends.sftp.userauth import refusal_code

__all__ = ["AuditedConnection", "disconnect_text", "session_status"]

log = Logger(namespace="cosgw.ssh")

#: SFTP version 3's status codes by name (draft-ietf-secsh-filexfer-02,
#: section 7); Conch gives the later drafts' names to FX_FAILURE's code too.
STATUS_NAMES: Mapping[int, str] = {
    filetransfer.FX_OK: "FX_OK",
    filetransfer.FX_EOF: "FX_EOF",
    filetransfer.FX_NO_SUCH_FILE: "FX_NO_SUCH_FILE",
    filetransfer.FX_PERMISSION_DENIED: "FX_PERMISSION_DENIED",
    filetransfer.FX_FAILURE: "FX_FAILURE",
    filetransfer.FX_BAD_MESSAGE: "FX_BAD_MESSAGE",
    filetransfer.FX_NO_CONNECTION: "FX_NO_CONNECTION",
    filetransfer.FX_CONNECTION_LOST: "FX_CONNECTION_LOST",
    filetransfer.FX_OP_UNSUPPORTED: "FX_OP_UNSUPPORTED",
    filetransfer.FX_FILE_ALREADY_EXISTS: "FX_FILE_ALREADY_EXISTS",
}

#: The reason codes of SSH_MSG_DISCONNECT by name (RFC 4253 section 11.1).
DISCONNECT_NAMES: Mapping[int, str] = {
    code: name
    for name, code in vars(transport).items()
    if name.startswith("DISCONNECT_") and isinstance(code, int)
}


def session_status(
    error: Optional[BaseException], disconnect: Optional[int] = None
) -> str:
    """
    The status an event's outcome gave the client: once the gateway sent
    C{disconnect} (a kick, a timeout, a refusal), that DISCONNECT, all the
    client was told; else FX_OK for a success; for a failed login, the
    disconnect that refused it or USERAUTH_FAILURE (RFC 4252: the client
    may try again); for the end of the connection under a request,
    FX_CONNECTION_LOST; for any other error, its SFTP status
    (L{status_for}, which logs nothing here: the request's own reply does).
    """
    if disconnect is not None:
        return DISCONNECT_NAMES.get(disconnect, str(disconnect))
    if error is None:
        return "FX_OK"
    refusal = refusal_code(error)
    if refusal is not None:
        return DISCONNECT_NAMES[refusal]
    if isinstance(error, UnauthorizedLogin):
        return "USERAUTH_FAILURE"
    if isinstance(error, ConnectionError):
        return "FX_CONNECTION_LOST"
    code, _ = status_for(Failure(error), quiet=True)
    return STATUS_NAMES.get(code, str(code))


def disconnect_text(description: bytes) -> str:
    """A DISCONNECT's description as text, cut to a line's length."""
    return description[:200].decode("utf-8", "replace")


class AuditedConnection:
    """
    The SSH transport's side of its audit session: why the connection
    ends, what the client was told, the kick, and the client's DISCONNECT.
    """

    #: The client's address, for the log.
    peer = "?"
    #: Why the connection ends, once known; the first reason given stands.
    close_reason: Optional[str] = None
    #: The reason code of the DISCONNECT the gateway sent, if it did.
    disconnect_sent: Optional[int] = None
    #: The gateway drains: why (the DISCONNECT's text), else None.
    draining: Optional[str] = None

    if TYPE_CHECKING:

        def sendDisconnect(self, reason: int, desc: Union[bytes, str]) -> None: ...

    def status_of(self, error: Optional[BaseException]) -> str:
        """What the client was told of an event's outcome (L{session_status})."""
        return session_status(error, self.disconnect_sent)

    def end_reason(self, reason: str) -> None:
        """Why the connection is about to end (the first reason stands)."""
        if self.close_reason is None:
            self.close_reason = reason

    def kick(self, reason: str) -> None:
        """
        End the session now (the admin API): DISCONNECT with C{reason}, then
        the close; uploads in progress are aborted as for any lost session.
        """
        self.end_reason(f"kicked: {reason}")
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason)

    def drain(self, reason: str, now: bool = False) -> None:
        """
        The gateway stops: DISCONNECT with C{reason} once no file is open
        (at once if none is, or with C{now}: uploads open are then aborted
        as for any lost session).
        """
        self.draining = reason
        if now or not self.files_open():
            self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason)

    def files_open(self) -> int:
        """Files and directories the logged-in user's SFTP server holds open."""
        server = getattr(getattr(self, "avatar", None), "sftp_server", None)
        return int(getattr(server, "open_handles", 0))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """
        The client's DISCONNECT.  Conch logs every one as an error; the
        normal logout (OpenSSH's "disconnected by user", code 11) is the
        session's end, which its session-close event says at info.  Any
        other code reports a problem on the client's side: a warning.
        """
        text = disconnect_text(description)
        if reasonCode == transport.DISCONNECT_BY_APPLICATION:
            self.end_reason(f"client quit ({text})")
            return
        self.end_reason(f"client disconnected: code {reasonCode}, {text}")
        log.warn(
            "SSH client at {peer} disconnected: code {code}, {description}",
            peer=self.peer,
            code=reasonCode,
            description=for_log(text),
        )
