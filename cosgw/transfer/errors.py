"""
Why a transfer stops short.  The ones that subclass L{StoreError} leave
nothing in the store and are translated into file-system errors by
L{cosgw.vfs}; L{TransferStopped} is not a failure of the store at all.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import StoreError, StoreUnavailable


class TransferStopped(Exception):
    """The client went away (or was told to) before the transfer finished."""


class UploadTooLarge(StoreError):
    """The upload went over the size the gateway allows for one file."""


class QuotaReached(StoreError):
    """The upload went over the user's quota."""


class RewriteRefused(StoreError):
    """A write fell behind the stream: those bytes are already uploaded."""


class SpoolFull(StoreError):
    """Out-of-order writes needed more temporary space than allowed."""


def log_cleanup_failure(
    log: Logger, failure: Failure, format: str, **fields: Any
) -> None:
    """
    Log a clean-up (an abort of parts nobody will resume) that failed.  The
    sweeper retries it later, so a store that is down or busy is one warning
    line with the store's own message; anything else is a surprise and keeps
    its traceback.
    """
    if failure.check(StoreUnavailable):
        log.warn(
            format + ": {error}; the sweeper will retry",
            error=str(failure.value),
            **fields,
        )
    else:
        log.failure(format, failure, **fields)
