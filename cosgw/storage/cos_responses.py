"""
Reading COS's answers: response headers into an L{ObjectInfo}, and the
body of a GET as an L{IByteSource} that checks what it streams.

The SDK hands headers over as a plain dict with whatever casing the server
used, so they are read through a case-insensitive mapping; every value is a
string.  C{StreamBody.read} does not check the length: the source does, and
checks COS's CRC-64 when it streams the whole object.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Optional
from urllib.parse import unquote

from requests.structures import CaseInsensitiveDict
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from cosgw.interfaces import IByteSource, IntegrityError, ObjectInfo, StoreError
from cosgw.storage._runner import BlockingRunner
from cosgw.storage.checksum import StreamCheck, parse_crc64

log = Logger()

#: User metadata we keep on objects; the SDK wants the full header names.
META_PREFIX = "x-cos-meta-"


def string_headers(raw: Mapping[str, Any]) -> CaseInsensitiveDict[str]:
    """
    The header fields of an SDK result, any casing: the SDK merges parsed
    XML (lists, dicts) into the same dict as the headers.
    """
    return CaseInsensitiveDict({k: v for k, v in raw.items() if isinstance(v, str)})


def http_time(value: Optional[str]) -> float:
    """An HTTP date as a timestamp; 0 when missing or unreadable."""
    if not value:
        return 0.0
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def iso_time(value: Optional[str]) -> float:
    """An XML listing's ISO 8601 time as a timestamp; 0 when missing or odd."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _metadata(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name[len(META_PREFIX) :].lower(): unquote(value)
        for name, value in headers.items()
        if name.lower().startswith(META_PREFIX)
    }


def info_from_headers(key: str, raw: Mapping[str, Any], size: int) -> ObjectInfo:
    """What a HEAD, GET or PUT answer says about the object C{key}."""
    headers = string_headers(raw)
    metadata = _metadata(headers)
    # The store's own time; a client-set time is metadata, read by the vfs.
    mtime = http_time(headers.get("Last-Modified"))
    return ObjectInfo(
        key=key,
        size=size,
        mtime=mtime,
        etag=(headers.get("ETag") or "").strip('"') or None,
        crc64=parse_crc64(headers.get("x-cos-hash-crc64ecma")),
        metadata=metadata,
        request_id=headers.get("x-cos-request-id"),
    )


def sdk_metadata(metadata: Optional[Mapping[str, str]]) -> dict[str, Any]:
    """The SDK's keyword for user metadata, with the full header names."""
    if not metadata:
        return {}
    return {"Metadata": {META_PREFIX + k: str(v) for k, v in metadata.items()}}


@implementer(IByteSource)
class CosSource:
    """
    One streaming GET.  Reads run in the pool; the source checks the byte
    count against Content-Length and, for a whole-object read, the CRC-64.
    """

    def __init__(
        self,
        runner: BlockingRunner,
        response: Any,
        info: ObjectInfo,
        offset: int,
        length: int,
    ) -> None:
        self._runner = runner
        self._response = response
        self._raw = response.raw if response is not None else None
        self.info = info
        self.offset = offset
        self.length = length
        # The CRC-64 COS sends is the whole object's, also for a range.
        whole = offset == 0 and length == info.size
        self._check = StreamCheck(info.key, length, info.crc64 if whole else None)
        #: A small body read whole by L{prefetch}, served from here; and
        #: what broke the stream after it, if anything.
        self._body: Optional[memoryview] = None
        self._broken: Optional[BaseException] = None

    def prefetch(self) -> None:
        """
        Read the whole (small) body now, in the pool thread that made the
        GET: its reads then cost no trip to the pool (a 16 KiB file took
        three more: a read, the read of its end, the close).  A stream that
        breaks fails the same read as it would have.
        """
        chunks = []
        try:
            while chunk := self._read(self.length + 1):
                chunks.append(chunk)
        except (IntegrityError, StoreError) as e:
            self._broken = e
        else:
            release = getattr(self._raw, "release_conn", None)
            if release is not None:
                release()  # read to its end: the connection can be reused
            self._response = self._raw = None
        self._body = memoryview(b"".join(chunks))

    def _read(self, size: int) -> bytes:
        if self._raw is None:
            if self.length:
                raise StoreError(f"{self.info.key}: read after close")
            return b""
        try:
            data = self._raw.read(size, decode_content=False)
        except Exception as e:
            raise IntegrityError(
                f"{self.info.key}: stream broke after {self._check.count} bytes: "
                f"{type(e).__name__}"
            ) from e
        return self._check.feed(data)

    def read(self, size: int) -> Deferred[bytes]:
        if self._body is not None:
            if not self._body and self._broken is not None:
                return fail(self._broken)
            chunk, self._body = bytes(self._body[:size]), self._body[size:]
            return succeed(chunk)
        return self._runner.run(self._read, size)

    def _close(self, response: Any) -> None:
        # Closing without reading to the end drops the connection instead of
        # returning a half-read one to the pool.
        response.close()

    def close(self) -> Deferred[None]:
        self._body = None
        response, self._response, self._raw = self._response, None, None
        if response is None:
            return succeed(None)
        return self._runner.run(self._close, response)


class RawResponse:
    """
    The urllib3 response under the SDK's StreamBody: C{read} on it with
    C{decode_content=False} gives the stored bytes, and closing it drops the
    connection rather than draining the rest of a large body.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:
            log.failure("closing a COS response")
