"""
What a failed COS SDK call means to the layers above: one typed store
error, transient or permanent, with a message an operator can act on and
COS's request id when there is one.

The SDK raises two exceptions (reference: twisted-conch-cos-facts.md f).
C{CosServiceError} is an HTTP answer of 4xx or 5xx; its accessors are not
to be trusted: an answer without an XML body (any HEAD, a proxy's 502)
carries the response headers instead of the parsed error, so
C{get_request_id()} says "Unknown" although the header has the id, and a
HEAD 404 without the header makes it raise C{KeyError}.  C{CosClientError}
is everything else, from a bad parameter to a refused connection, and
carries only a string; when it comes from the network, the C{requests}
exception it replaced is its C{__context__} (the SDK raises it inside its
C{except} block), and that says what happened.

Transient failures (5xx, 408, 429, the network) are L{StoreUnavailable},
worth another try; L{StoreUnreachable} among them says that no connection
was opened at all, so a write is known not to have happened.  Everything
else is a permanent L{StoreError} (or one of its precise kinds).

Only cos.py imports C{qcloud_cos}; it hands this module the fields.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import requests
from requests.exceptions import ChunkedEncodingError, ContentDecodingError, SSLError
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from cosgw.interfaces import NoSuchKey, NoSuchUpload, StoreError, StoreUnavailable

#: Error codes COS answers (in a 200 to a copy, or with a 5xx) for a
#: failure worth another try.
RETRYABLE_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout")

#: The SDK's message when its own multi-threaded copy() gives up on a part:
#: the parts' failures were transient ones it retried.
_SDK_GAVE_UP = "fail after max_retry"

#: How much of COS's free-text error message goes into ours.
_MAX_DETAIL = 200


class StoreUnreachable(StoreUnavailable):
    """
    No connection to the store could be opened (refused, name resolution,
    connect timeout): no request was delivered, so a write did not happen
    and there is nothing to verify.
    """


def service_error(what: str, status: int, digest: Any) -> StoreError:
    """
    The store error for an HTTP error answer.

    @param digest: C{CosServiceError.get_digest_msg()}: the parsed error
        (keys C{code}, C{message}, C{requestid}), the response headers when
        the answer had no XML body, or a string when it could not be parsed.
    """
    fields: Mapping[str, Any] = digest if isinstance(digest, Mapping) else {}
    code = str(fields.get("code") or fields.get("x-cos-error-code") or "")
    request_id = _request_id(fields)
    message = f"{what}: COS {status} {code}".rstrip()
    if code in ("NoSuchKey", "NoSuchResource") or (
        status == 404 and code not in ("NoSuchUpload", "NoSuchBucket")
    ):
        return NoSuchKey(message, request_id)
    if code == "NoSuchUpload":
        return NoSuchUpload(message, request_id)
    if status >= 500 or status in (408, 429) or code in RETRYABLE_CODES:
        return StoreUnavailable(message, request_id)
    detail = str(fields.get("message") or "")[:_MAX_DETAIL]
    if detail and detail != code:
        message = f"{message}: {detail}"
    return StoreError(message, request_id)


def _request_id(fields: Mapping[str, Any]) -> Optional[str]:
    for name in ("requestid", "x-cos-request-id", "RequestId"):
        value = fields.get(name)
        if value and value != "Unknown":
            return str(value)
    return None


def client_error(
    what: str, message: str, context: Optional[BaseException]
) -> StoreError:
    """
    The store error for a C{CosClientError}: a network failure when the
    exception it replaced (C{context}) was one of C{requests}'; a local
    refusal (a bad parameter) otherwise.
    """
    if isinstance(context, requests.RequestException):
        return network_error(what, context)
    if _SDK_GAVE_UP in message:
        return StoreUnavailable(f"{what}: {message}")
    return StoreError(f"{what}: refused by the COS SDK: {message}")


def network_error(what: str, e: requests.RequestException) -> StoreError:
    """The store error for a failure of the HTTP exchange itself."""
    chain = list(_chain(e))
    if any(isinstance(x, NameResolutionError) for x in chain):
        return StoreUnreachable(f"{what}: store unreachable: cannot resolve its name")
    if isinstance(e, requests.ConnectTimeout) or any(
        isinstance(x, (NewConnectionError, ConnectTimeoutError)) for x in chain
    ):
        reason = _os_reason(chain) or "connect timed out"
        return StoreUnreachable(f"{what}: store unreachable: {reason}")
    if isinstance(e, requests.Timeout) or any(
        isinstance(x, (ReadTimeoutError, TimeoutError)) for x in chain
    ):
        return StoreUnavailable(f"{what}: no reply from the store in time")
    if any(isinstance(x, ConnectionResetError) for x in chain):
        return StoreUnavailable(f"{what}: connection reset by the store")
    if isinstance(e, requests.ConnectionError) and any(
        isinstance(x, ProtocolError) for x in chain
    ):
        return StoreUnavailable(f"{what}: the store closed the connection early")
    if isinstance(e, SSLError):
        return StoreUnavailable(f"{what}: TLS failure: {_short(e)}")
    if isinstance(
        e,
        (requests.ConnectionError, ChunkedEncodingError, ContentDecodingError),
    ):
        reason = _os_reason(chain) or type(e).__name__
        return StoreUnavailable(f"{what}: connection failed: {reason}")
    # InvalidURL, InvalidHeader and the like: the request never left.
    return StoreError(f"{what}: {type(e).__name__}: {_short(e)}")


def _chain(e: BaseException) -> Iterator[BaseException]:
    """
    The exceptions behind C{e}: requests wraps urllib3's MaxRetryError,
    whose C{reason} wraps a connection error, whose cause is the socket's.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo and len(seen) < 16:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        inner = [getattr(x, "reason", None), x.__cause__, x.__context__]
        inner += list(x.args) if isinstance(x.args, tuple) else []
        todo += [i for i in inner if isinstance(i, BaseException)]


def _os_reason(chain: list[BaseException]) -> Optional[str]:
    """The socket's own words, e.g. "connection refused"."""
    for x in chain:
        if isinstance(x, OSError) and isinstance(x.errno, int) and x.errno > 0:
            name = errno.errorcode.get(x.errno, str(x.errno))
            text = (x.strerror or name).lower()
            return f"{text} ({name})"
    return None


def _short(e: BaseException) -> str:
    return str(e)[:_MAX_DETAIL]
