"""
FTP replies, and the one place where errors (of the file system, of a
transfer, of a login) become reply codes: L{reply_of}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw import vfs
from cosgw.policy.accounts import LoginRefused
from cosgw.policy.defender import LoginBanned

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")


class Reply(Exception):
    """
    A complete reply (code and text).  Handlers return one, or raise one
    from deep inside a command; either way the dispatcher sends it.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text

    def response(self) -> str:
        """The reply line (the protocol escapes and ends it)."""
        return f"{self.code} {self.text}"


def reply_of(e: BaseException) -> Optional[Reply]:
    """
    The one place where errors become FTP replies: the reply for C{e}, or
    None for an error nobody expected (the gateway's fault).
    """
    if isinstance(e, Reply):
        return e
    if isinstance(e, (LoginBanned, LoginRefused)):
        # Banned, or a rule refuses this user here or now: the client is
        # told why, and the connection closes (RFC 959: 421).
        return Reply(421, str(e))
    if isinstance(e, (UnauthorizedLogin, UnhandledCredentials)):
        return Reply(530, "Login incorrect")
    if isinstance(e, vfs.InvalidName):
        return Reply(553, f"{e.path}: {e.message}")
    if isinstance(e, vfs.InvalidOffset):
        # RFC 3659 section 5.5: an invalid REST parameter.
        return Reply(554, f"{e.path}: {e.message}")
    if isinstance(e, (vfs.QuotaExceeded, vfs.FileTooLarge)):
        return Reply(552, f"{e.path}: {e.message}")
    if isinstance(e, vfs.StoreFailure):
        rid = f" (request {e.request_id})" if e.request_id else ""
        return Reply(451, f"{e.path}: {e.message}; try again later{rid}")
    if isinstance(e, vfs.FSError):
        return Reply(550, f"{e.path}: {e.message}")
    if isinstance(e, vfs.TransferStopped):
        return Reply(426, "Connection closed; transfer aborted")
    return None


#: What a client is told of an error nobody expected.
LOCAL_ERROR = Reply(451, "Requested action aborted: local error in processing")


def reply_for(failure: Failure, action: str = "") -> Reply:
    """
    L{reply_of} for a failed command.  Unexpected errors are logged with
    their traceback and shown to the client as a plain 451, never as a
    traceback.
    """
    e = failure.value
    reply = reply_of(e) if e is not None else None
    if reply is None:
        log.failure("unexpected error in {action}", failure, action=action or "FTP")
        return LOCAL_ERROR
    return reply


#: The reply code each command that makes an audit event gets when it
#: succeeds: an event is emitted before its command replies, so this is
#: what it says the client is told (L{cosgw.frontends.ftp.audited}).
SUCCESS_CODES: Mapping[str, int] = {
    "PASS": 230,
    **dict.fromkeys(("RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"), 226),
    **dict.fromkeys(("DELE", "RMD", "XRMD", "RNTO"), 250),
    **dict.fromkeys(("MKD", "XMKD"), 257),
    **dict.fromkeys(("MFMT", "STAT"), 213),
}


def quote_path(path: str) -> str:
    """RFC 959 appendix II: a quote inside a quoted path is doubled."""
    return '"' + path.replace('"', '""') + '"'
