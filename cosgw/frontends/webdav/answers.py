"""
What every WebDAV method shares: the call it serves (L{Call}), the one
mapping of the file system's errors to HTTP statuses (L{status_for}), and
writing a whole answer (L{respond}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from cosgw.frontends.webdav.auth import HTTPError
from cosgw.frontends.webdav.channel import REASONS
from cosgw.frontends.webdav.headers import (
    BadHeader,
    ForeignDestination,
    Unsatisfiable,
)
from cosgw.frontends.webdav.locks import PropertiesFull, ResourceId, TooManyLocks
from cosgw.frontends.webdav.xmlbody import BadXML
from cosgw.vfs import (
    AlreadyExists,
    FileTooLarge,
    IntegrityFailure,
    InvalidName,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PermissionDenied,
    QuotaExceeded,
    StoreFailure,
    TransferStopped,
    WriteRefused,
)

if TYPE_CHECKING:
    from cosgw.frontends.webdav.channel import DAVRequest
    from cosgw.frontends.webdav.resource import DAVServer

__all__ = ["Call", "HTTPError", "Pacer", "respond", "status_for"]

log = Logger(namespace="cosgw.webdav")

#: The status of each file system error, most specific first.
_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (AlreadyExists, 405),
    (PermissionDenied, 403),
    (NotADirectory, 409),
    (IsADirectory, 405),
    (NotEmpty, 409),
    (QuotaExceeded, 507),
    (FileTooLarge, 413),
    (InvalidName, 400),
    (InvalidOffset, 416),
    (NotSupported, 501),
    (WriteRefused, 409),
    (IntegrityFailure, 502),
    (StoreFailure, 503),
    (PropertiesFull, 507),
    (TooManyLocks, 503),
    (BadHeader, 400),
    (ForeignDestination, 502),
    (BadXML, 400),
    (Unsatisfiable, 416),
    (UnauthorizedLogin, 401),
    (ConnectionError, 499),
)


def status_for(error: BaseException) -> tuple[int, str]:
    """
    The status and text that answer C{error}: an L{HTTPError}'s own, a
    file system error's (RFC 4918: 507 for the quota, 405 for a name that
    is taken or a collection where a file is meant), 500 for anything
    else, whose traceback the log gets.
    """
    if isinstance(error, HTTPError):
        return error.status, error.text
    for kind, status in _STATUSES:
        if isinstance(error, kind):
            return status, str(error) or type(error).__name__
    return 500, "internal error"


def audit_status(error: Optional[BaseException]) -> str:
    """What a session's events say the client was told (its status code)."""
    if error is None:
        return "200"
    return str(status_for(error)[0])


def respond(
    request: DAVRequest,
    status: int,
    text: str = "",
    headers: Optional[dict[str, str]] = None,
    body: Optional[bytes] = None,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """A whole answer: C{body} (XML) or C{text}, with its length."""
    if request.finished or request._disconnected:
        return
    reason = REASONS.get(status)
    request.setResponseCode(status, reason.encode("ascii") if reason else None)
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    if body is None:
        body = (text + "\n").encode("utf-8") if text else b""
    else:
        content_type = "application/xml; charset=utf-8"
    if status in (204, 304):
        body = b""  # no content, and no Content-Length (RFC 9110 8.6)
    else:
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
    if body and request.method != b"HEAD":
        request.write(body)
    request.finish()


@dataclass
class Call:
    """One authenticated request: who, on what, through which server."""

    server: DAVServer
    request: DAVRequest
    #: The user's L{cosgw.interfaces.IFileSystem}.
    fs: Any
    segments: list[str]

    def header(self, name: str) -> Optional[str]:
        value = self.request.getHeader(name.encode("ascii"))
        return None if value is None else value.decode("latin-1")

    def body(self) -> bytes:
        """The request's body (an XML document, capped)."""
        content = self.request.content
        return content.read() if content is not None else b""

    def rid(self, segments: Optional[list[str]] = None) -> ResourceId:
        """The resource's id in the lock and property tables."""
        segments = self.segments if segments is None else segments
        store = getattr(getattr(self.fs, "store", None), "description", "")
        key = self.fs.dir_prefix(segments).strip("/")
        return (str(store), *(p for p in key.split("/") if p))


@implementer(IPushProducer)
class Pacer:
    """
    A streamed answer's producer (a PROPFIND's multistatus, a collection's
    index): the listing behind it waits while the client reads slowly.
    """

    def __init__(self) -> None:
        self._paused = False
        self._stopped = False
        self._waiting: Optional[Deferred[None]] = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()

    async def ready(self) -> None:
        """Returns once the client can take more; raises when it went."""
        if self._paused and not self._stopped:
            self._waiting = Deferred()
            await self._waiting
        if self._stopped:
            raise TransferStopped("the client went away")
