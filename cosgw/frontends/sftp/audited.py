"""
What an SSH connection's audit events say the client was told: an SFTP
status name for the file system's events (from the frontend's one mapping,
L{status_for}), the SSH answer for a login's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from twisted.conch.ssh import filetransfer, transport
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure

from cosgw.frontends.sftp.server import status_for
from cosgw.frontends.sftp.userauth import refusal_code

__all__ = ["session_status"]

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

#: The disconnects that end a refused login, by name (RFC 4253 section 11.1).
DISCONNECT_NAMES: Mapping[int, str] = {
    transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE: (
        "DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE"
    ),
    transport.DISCONNECT_TOO_MANY_CONNECTIONS: "DISCONNECT_TOO_MANY_CONNECTIONS",
}


def session_status(error: Optional[BaseException]) -> str:
    """
    The status an event's outcome gave the client: FX_OK for a success;
    for a failed login, the disconnect that refused it or
    USERAUTH_FAILURE (RFC 4252: the client may try again); for the end of
    the connection under a request, FX_CONNECTION_LOST; for any other
    error, its SFTP status (L{status_for}, which logs nothing here: the
    request's own reply does).
    """
    if error is None:
        return "FX_OK"
    refusal = refusal_code(error)
    if refusal is not None:
        return DISCONNECT_NAMES.get(refusal, str(refusal))
    if isinstance(error, UnauthorizedLogin):
        return "USERAUTH_FAILURE"
    if isinstance(error, ConnectionError):
        return "FX_CONNECTION_LOST"
    code, _ = status_for(Failure(error), quiet=True)
    return STATUS_NAMES.get(code, str(code))
