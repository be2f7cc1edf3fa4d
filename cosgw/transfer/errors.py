"""
Why a transfer stops short.  The ones that subclass L{StoreError} leave
nothing in the store and are translated into file-system errors by
L{cosgw.vfs}; L{TransferStopped} is not a failure of the store at all.
"""

from __future__ import annotations

from cosgw.interfaces import StoreError


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
