"""
FTP replies, and the one place where file-system errors become reply codes.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw import vfs

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


def reply_for(failure: Failure, action: str = "") -> Reply:
    """
    The one place where file-system and transfer errors become FTP replies.
    Unexpected errors are logged with their traceback and shown to the
    client as a plain 451, never as a traceback.
    """
    e = failure.value
    if isinstance(e, Reply):
        return e
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
    log.failure("unexpected error in {action}", failure, action=action or "FTP")
    return Reply(451, "Requested action aborted: local error in processing")


def quote_path(path: str) -> str:
    """RFC 959 appendix II: a quote inside a quoted path is doubled."""
    return '"' + path.replace('"', '""') + '"'
