"""
What a file-system operation can fail with.  Store errors are translated
here (L{translate}), once, so each frontend maps only these to its replies.
"""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import (
    IntegrityError,
    KeyConflict,
    KeyRefused,
    NoSuchKey,
    StoreError,
    StoreUnavailable,
)
from cosgw.policy.quota import QuotaFull, QuotaUnavailable
from cosgw.transfer import QuotaReached, RewriteRefused, SpoolFull, UploadTooLarge

log = Logger()


class FSError(Exception):
    """
    A file-system operation was refused or failed.  C{path} is the path as
    the user sees it ("/a/b"); C{request_id} the store's, when it has one.
    """

    def __init__(
        self, path: str, message: str = "", request_id: Optional[str] = None
    ) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message or self.default_message
        self.request_id = request_id

    default_message = "failed"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class NotFound(FSError):
    default_message = "no such file or directory"


class AlreadyExists(FSError):
    default_message = "already exists"


class PermissionDenied(FSError):
    default_message = "permission denied"


class NotADirectory(FSError):
    default_message = "not a directory"


class IsADirectory(FSError):
    default_message = "is a directory"


class NotEmpty(FSError):
    default_message = "directory not empty"


class QuotaExceeded(FSError):
    default_message = "quota exceeded"


class FileTooLarge(FSError):
    default_message = "file too large"


class InvalidName(FSError):
    default_message = "invalid file name"


class InvalidOffset(FSError):
    """A restart offset (REST) beyond what the file holds."""

    default_message = "restart offset beyond the end of the file"


class NotSupported(FSError):
    """
    Something a disk allows and an object store cannot do (change a stored
    file's size, read back a file while it is uploaded).
    """

    default_message = "not supported"


class WriteRefused(FSError):
    """
    A write at an offset cannot be honoured: it would change bytes already
    uploaded, or it needs more temporary space than allowed.  The file
    fails rather than being stored wrong.
    """

    default_message = "write refused"


class StoreFailure(FSError):
    """The store failed or could not be reached; the operation may be retried."""

    default_message = "storage error"


class IntegrityFailure(StoreFailure):
    default_message = "data integrity check failed"


def translate(failure: Failure, path: str) -> Failure:
    """Store errors become file-system errors; FSErrors pass through."""
    e = failure.value
    if isinstance(e, FSError):
        return failure
    request_id = getattr(e, "request_id", None)
    if isinstance(e, NoSuchKey):
        return Failure(NotFound(path, request_id=request_id))
    if isinstance(e, KeyRefused):
        return Failure(InvalidName(path, str(e), request_id))
    if isinstance(e, KeyConflict):
        return Failure(AlreadyExists(path, str(e), request_id))
    if isinstance(e, UploadTooLarge):
        return Failure(FileTooLarge(path, request_id=request_id))
    if isinstance(e, QuotaReached):
        return Failure(QuotaExceeded(path, "quota exceeded", request_id))
    if isinstance(e, QuotaUnavailable):
        return Failure(StoreFailure(path, e.reason, request_id))
    if isinstance(e, QuotaFull):
        return Failure(QuotaExceeded(path, e.reason, request_id))
    if isinstance(e, (RewriteRefused, SpoolFull)):
        return Failure(WriteRefused(path, str(e), request_id))
    if isinstance(e, IntegrityError):
        log.error(
            "integrity check failed for {path}: {error} (request {request_id})",
            path=path,
            error=str(e),
            request_id=request_id,
        )
        return Failure(IntegrityFailure(path, request_id=request_id))
    if isinstance(e, StoreUnavailable):
        # Expected when the store is down or busy: the store's message says
        # what happened; a traceback per request would bury it.
        log.warn(
            "store unavailable for {path}: {error} (request {request_id})",
            path=path,
            error=str(e),
            request_id=request_id,
        )
        return Failure(StoreFailure(path, "store unavailable", request_id))
    if isinstance(e, StoreError):
        log.failure(
            "store error on {path} (request {request_id})",
            failure,
            path=path,
            request_id=request_id,
        )
        return Failure(StoreFailure(path, request_id=request_id))
    return failure
