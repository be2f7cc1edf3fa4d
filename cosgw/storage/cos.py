"""
Tencent COS behind the object-store interface, through cos-python-sdk-v5.

This is the only module that imports C{qcloud_cos}.  The SDK is blocking, so
every call runs in the gateway's own thread pool (given to the constructor,
started and stopped by the service), gated by a semaphore so the pool queue
stays bounded.  Traps of the SDK that this module gets past (see
reference/twisted-conch-cos-facts.md section f):

  - All clients share one class-level HTTP session sized 10/10 unless given
    their own; we pass a C{requests.Session} sized to our pool.
  - Response headers are a plain dict with whatever casing the server used;
    we wrap them in a case-insensitive mapping.
  - The SDK logs every operation at INFO; we raise its logger to WARNING.
  - Listing keys are URL-encoded on the wire (C{EncodingType=url}) and
    decoded here, so names with control characters cannot break the XML.
  - C{StreamBody.read} does not check the length; our source does, and
    checks COS's CRC-64 when it streams the whole object.
  - Every upload part and PUT is checked against the CRC-64 COS computed.
  - C{upload_part_copy} returns the response headers merged with the parsed
    C{CopyPartResult} (the body's quoted ETag replaces the header's) and,
    unlike C{copy_object}, does not raise on a 200 without an ETag (COS and
    S3 report some copy failures that way); we do.
  - C{list_parts} leaves C{Part} out when there is none and makes a single
    one a list; every value is a string.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Optional
from urllib.parse import unquote

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from requests.structures import CaseInsensitiveDict
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cosgw.interfaces import (
    MAX_PARTS,
    MAX_PUT_SIZE,
    IByteSource,
    IntegrityError,
    IObjectStore,
    ListPage,
    NoSuchKey,
    NoSuchUpload,
    ObjectInfo,
    PartInfo,
    PendingUpload,
    StoreError,
    StoreUnavailable,
)
from cosgw.storage._runner import BlockingRunner, ThreadedStore, check_copy_range
from cosgw.storage.checksum import StreamCheck, crc64, crc64_combine, parse_crc64

log = Logger()

#: User metadata we keep on objects; the SDK wants the full header names.
META_PREFIX = "x-cos-meta-"


#: Error codes of a failure COS may report in the body of a 200 to a copy,
#: worth another try.
_RETRYABLE_CODES = ("InternalError", "ServiceUnavailable", "SlowDown")


def _quiet_sdk_logging() -> None:
    logging.getLogger("qcloud_cos").setLevel(logging.WARNING)


def _error(e: Exception, what: str) -> StoreError:
    """Map an SDK exception to the store errors the layers above understand."""
    if isinstance(e, CosServiceError):
        code = e.get_error_code()
        status = e.get_status_code()
        request_id = e.get_request_id()
        message = f"{what}: COS {status} {code}"
        if code in ("NoSuchKey", "NoSuchResource") or (
            status == 404 and code not in ("NoSuchUpload", "NoSuchBucket")
        ):
            return NoSuchKey(message, request_id)
        if code == "NoSuchUpload":
            return NoSuchUpload(message, request_id)
        if status >= 500 or status in (408, 429):
            return StoreUnavailable(message, request_id)
        return StoreError(message, request_id)
    if isinstance(e, CosClientError):
        return StoreUnavailable(f"{what}: {e.get_message()}")
    if isinstance(e, requests.RequestException):
        return StoreUnavailable(f"{what}: {type(e).__name__}: {e}")
    if isinstance(e, StoreError):
        return e
    return StoreError(f"{what}: {type(e).__name__}: {e}")


def _http_time(value: Optional[str]) -> float:
    if not value:
        return 0.0
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _iso_time(value: Optional[str]) -> float:
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


def _info_from_headers(key: str, raw: Mapping[str, Any], size: int) -> ObjectInfo:
    headers = CaseInsensitiveDict({k: v for k, v in raw.items() if isinstance(v, str)})
    metadata = _metadata(headers)
    # The store's own time; a client-set time is metadata, read by the vfs.
    mtime = _http_time(headers.get("Last-Modified"))
    return ObjectInfo(
        key=key,
        size=size,
        mtime=mtime,
        etag=(headers.get("ETag") or "").strip('"') or None,
        crc64=parse_crc64(headers.get("x-cos-hash-crc64ecma")),
        metadata=metadata,
        request_id=headers.get("x-cos-request-id"),
    )


def _sdk_metadata(metadata: Optional[Mapping[str, str]]) -> dict[str, Any]:
    if not metadata:
        return {}
    return {"Metadata": {META_PREFIX + k: str(v) for k, v in metadata.items()}}


@implementer(IByteSource)
class _CosSource:
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
        self._check = StreamCheck(info.key, length, info.crc64 if offset == 0 else None)

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
        return self._runner.run(self._read, size)

    def _close(self, response: Any) -> None:
        # Closing without reading to the end drops the connection instead of
        # returning a half-read one to the pool.
        response.close()

    def close(self) -> Deferred[None]:
        response, self._response, self._raw = self._response, None, None
        if response is None:
            return succeed(None)
        return self._runner.run(self._close, response)


@implementer(IObjectStore)
class CosStore(ThreadedStore):
    """
    One bucket.  C{settings} are CosConfig keyword arguments (Region,
    SecretId, SecretKey, Token, Scheme, Endpoint, IP, Port, ...) built by
    the service from the config; they never reach a log line.
    """

    def __init__(
        self,
        bucket: str,
        settings: Mapping[str, Any],
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        pool_size: int,
        retry: int = 2,
    ) -> None:
        _quiet_sdk_logging()
        self.bucket = bucket
        where = settings.get("IP") or settings.get("Endpoint") or settings.get("Region")
        port = settings.get("Port")
        self.description = f"COS bucket {bucket} at {where}" + (
            f":{port}" if port else ""
        )
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=pool_size, pool_maxsize=pool_size
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        config = CosConfig(
            PoolConnections=pool_size, PoolMaxSize=pool_size, **dict(settings)
        )
        self._region = settings.get("Region")
        self._endpoint = settings.get("Endpoint")
        self._client = CosS3Client(config, retry=retry, session=session)
        self._runner = BlockingRunner(reactor, pool, pool_size * 4)

    def _call(self, what: str, f: Any, **kwargs: Any) -> Any:
        try:
            return f(Bucket=self.bucket, **kwargs)
        except Exception as e:
            raise _error(e, what) from e

    # -- blocking bodies ----------------------------------------------------

    def _head(self, key: str) -> ObjectInfo:
        headers = self._call(f"HEAD {key}", self._client.head_object, Key=key)
        size = int(CaseInsensitiveDict(headers).get("Content-Length", 0))
        return _info_from_headers(key, headers, size)

    def _list(
        self, prefix: str, delimiter: str, marker: str, max_keys: int
    ) -> ListPage:
        result = self._call(
            f"LIST {prefix}",
            self._client.list_objects,
            Prefix=prefix,
            Delimiter=delimiter,
            Marker=marker,
            MaxKeys=max_keys,
            EncodingType="url",
        )
        objects = [
            ObjectInfo(
                key=unquote(item["Key"]),
                size=int(item.get("Size", 0)),
                mtime=_iso_time(item.get("LastModified")),
                etag=(item.get("ETag") or "").strip('"') or None,
            )
            for item in result.get("Contents", []) or []
        ]
        prefixes = [
            unquote(item["Prefix"]) for item in result.get("CommonPrefixes", []) or []
        ]
        next_marker = None
        if str(result.get("IsTruncated", "false")).lower() == "true":
            next_marker = result.get("NextMarker")
            if next_marker:
                next_marker = unquote(next_marker)
            else:
                next_marker = max([o.key for o in objects] + prefixes)
        return ListPage(objects, prefixes, next_marker)

    def _open(self, key: str, offset: int) -> _CosSource:
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, KeySimplifyCheck=False, **extra
            )
        except CosServiceError as e:
            if e.get_status_code() == 416:
                info = self._head(key)
                return _CosSource(self._runner, None, info, offset, 0)
            raise _error(e, f"GET {key}") from e
        except Exception as e:
            raise _error(e, f"GET {key}") from e
        body = response["Body"]
        raw_response = body.get_raw_stream()
        headers = CaseInsensitiveDict(
            {k: v for k, v in response.items() if isinstance(v, str)}
        )
        length = int(headers.get("Content-Length", 0))
        total = length + offset
        content_range = headers.get("Content-Range")
        if content_range and "/" in content_range:
            try:
                total = int(content_range.rsplit("/", 1)[1])
            except ValueError:
                pass
        info = _info_from_headers(key, response, total)
        return _CosSource(
            self._runner, _RawResponse(raw_response), info, offset, length
        )

    def _put(
        self, key: str, data: bytes, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        if len(data) > MAX_PUT_SIZE:
            raise StoreError(f"PUT {key}: {len(data)} bytes is over COS's PUT limit")
        local_crc = crc64(data)
        try:
            headers = self._call(
                f"PUT {key}",
                self._client.put_object,
                Key=key,
                Body=data,
                **_sdk_metadata(metadata),
            )
        except StoreUnavailable:
            if not self._holds(key, len(data), local_crc):
                raise
            log.info("PUT {key}: reply lost, object found stored", key=key)
            headers = {"x-cos-hash-crc64ecma": str(local_crc)}
        info = _info_from_headers(key, headers, len(data))
        if info.crc64 is not None and info.crc64 != local_crc:
            # The store holds bytes other than ours: do not leave them there.
            self._call(f"DELETE {key}", self._client.delete_object, Key=key)
            raise IntegrityError(
                f"PUT {key}: CRC-64 mismatch (sent {local_crc}, COS {info.crc64})",
                info.request_id,
            )
        return ObjectInfo(
            key=key,
            size=len(data),
            mtime=info.mtime,
            etag=info.etag,
            crc64=local_crc,
            metadata=dict(metadata or {}),
            request_id=info.request_id,
        )

    def _holds(self, key: str, size: int, crc: int) -> bool:
        """Whether the bucket already holds exactly these bytes under C{key}."""
        try:
            info = self._head(key)
        except StoreError:
            return False
        return info.size == size and info.crc64 == crc

    def _delete(self, key: str) -> None:
        self._call(f"DELETE {key}", self._client.delete_object, Key=key)

    def _copy_source(self, key: str) -> dict[str, Any]:
        """
        The SDK's CopySource for a key of our bucket.  COS wants the
        region's host name in x-cos-copy-source, whatever host we talk to;
        without a region the SDK needs the endpoint instead.
        """
        where = (
            {"Region": self._region} if self._region else {"Endpoint": self._endpoint}
        )
        return {"Bucket": self.bucket, "Key": key, **where}

    def _copy(
        self, source: str, destination: str, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        info = self._head(source)
        copy_source = self._copy_source(source)
        extra: dict[str, Any] = {}
        if metadata is not None:
            extra = {"CopyStatus": "Replaced", **_sdk_metadata(metadata)}
        if info.size <= MAX_PUT_SIZE:
            self._call(
                f"COPY {source} -> {destination}",
                self._client.copy_object,
                Key=destination,
                CopySource=copy_source,
                **extra,
            )
        else:
            # copy() switches to UploadPartCopy above 5 GB.
            self._call(
                f"COPY {source} -> {destination}",
                self._client.copy,
                Key=destination,
                CopySource=copy_source,
                MAXThread=4,
                **extra,
            )
        return self._head(destination)

    def _create_multipart(self, key: str, metadata: Optional[Mapping[str, str]]) -> str:
        result = self._call(
            f"INITIATE {key}",
            self._client.create_multipart_upload,
            Key=key,
            **_sdk_metadata(metadata),
        )
        return str(result["UploadId"])

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes
    ) -> PartInfo:
        local_crc = crc64(data)
        headers = CaseInsensitiveDict(
            self._call(
                f"PART {number} of {key}",
                self._client.upload_part,
                Key=key,
                Body=data,
                PartNumber=number,
                UploadId=upload_id,
            )
        )
        remote_crc = parse_crc64(headers.get("x-cos-hash-crc64ecma"))
        if remote_crc is not None and remote_crc != local_crc:
            raise IntegrityError(
                f"PART {number} of {key}: CRC-64 mismatch",
                headers.get("x-cos-request-id"),
            )
        return PartInfo(
            number=number,
            etag=str(headers.get("ETag", "")).strip('"'),
            size=len(data),
            crc64=local_crc,
        )

    def _upload_part_copy(
        self, key: str, upload_id: str, number: int, source: str, first: int, last: int
    ) -> PartInfo:
        what = f"PART {number} of {key} <- {source} bytes {first}-{last}"
        # HEAD first: COS's answer to a range outside the object is not
        # something to rely on (S3 clamps some), and a missing source is
        # then told apart from a missing upload.  If-Match pins the copy to
        # the object whose size was checked.
        info = self._head(source)
        check_copy_range(source, first, last, info.size)
        extra: dict[str, Any] = {}
        if info.etag:
            extra["CopySourceIfMatch"] = f'"{info.etag}"'
        result = self._call(
            what,
            self._client.upload_part_copy,
            Key=key,
            PartNumber=number,
            UploadId=upload_id,
            CopySource=self._copy_source(source),
            CopySourceRange=f"bytes={first}-{last}",
            **extra,
        )
        headers = CaseInsensitiveDict(
            {k: v for k, v in result.items() if isinstance(v, str)}
        )
        request_id = headers.get("x-cos-request-id")
        # The body's ETag (CopyPartResult) has replaced the header's in the
        # merged dict; a 200 without one is an error reported in the body.
        etag = str(result.get("ETag") or "").strip('"')
        if not etag:
            code = result.get("Code")
            error = StoreUnavailable if code in _RETRYABLE_CODES else StoreError
            raise error(
                f"{what}: COS answered 200 without an ETag ({code})", request_id
            )
        size = last - first + 1
        crc = parse_crc64(headers.get("x-cos-hash-crc64ecma"))
        if crc is None:
            crc = parse_crc64(str(result.get("CRC64") or ""))
        if (
            crc is not None
            and info.crc64 is not None
            and (first, size) == (0, info.size)
            and crc != info.crc64
        ):
            raise IntegrityError(
                f"{what}: CRC-64 differs from the source's", request_id
            )
        return PartInfo(
            number=number,
            etag=etag,
            size=size,
            crc64=crc,
            mtime=_iso_time(headers.get("LastModified"))
            or _http_time(headers.get("Last-Modified"))
            or _http_time(headers.get("Date")),
        )

    def _list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        parts: dict[int, PartInfo] = {}
        marker = 0
        # At most 10,000 parts: 10 pages of 1000, and one to find the end.
        for _ in range(MAX_PARTS // 1000 + 2):
            result = self._call(
                f"LIST PARTS of {key}",
                self._client.list_parts,
                Key=key,
                UploadId=upload_id,
                MaxParts=1000,
                PartNumberMarker=marker,
            )
            page = result.get("Part") or []
            if isinstance(page, dict):
                page = [page]
            for part in page:
                number = int(part["PartNumber"])
                parts[number] = PartInfo(
                    number=number,
                    etag=str(part.get("ETag") or "").strip('"'),
                    size=int(part.get("Size") or 0),
                    crc64=parse_crc64(part.get("CRC64")),
                    mtime=_iso_time(part.get("LastModified")),
                )
            if str(result.get("IsTruncated", "false")).lower() != "true":
                break
            next_marker = int(result.get("NextPartNumberMarker") or 0)
            if next_marker <= marker:
                next_marker = max(parts, default=marker)
            if next_marker <= marker:
                raise StoreError(f"LIST PARTS of {key}: the listing does not advance")
            marker = next_marker
        else:
            raise StoreError(f"LIST PARTS of {key}: more pages than parts allowed")
        return [parts[n] for n in sorted(parts)]

    def _complete(
        self, key: str, upload_id: str, parts: Sequence[PartInfo]
    ) -> ObjectInfo:
        ordered = sorted(parts, key=lambda p: p.number)
        expected_size = sum(p.size for p in ordered)
        expected: Optional[int] = None
        if all(p.crc64 is not None for p in ordered):
            expected = 0
            for p in ordered:
                assert p.crc64 is not None  # checked by all() above
                expected = crc64_combine(expected, p.crc64, p.size)
        try:
            self._call(
                f"COMPLETE {key}",
                self._client.complete_multipart_upload,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Part": [{"PartNumber": p.number, "ETag": p.etag} for p in ordered]
                },
            )
        except (StoreUnavailable, NoSuchUpload):
            # The reply may have been lost after COS completed the object (a
            # retry then finds no such upload): only the object itself can
            # say (reference: testing-notes.md).
            if expected is None or not self._holds(key, expected_size, expected):
                raise
            log.info("COMPLETE {key}: reply lost, object found complete", key=key)
        info = self._head(key)
        if info.size != expected_size:
            raise IntegrityError(
                f"COMPLETE {key}: object has {info.size} bytes, parts {expected_size}",
                info.request_id,
            )
        if info.crc64 is not None and expected is not None:
            if expected != info.crc64:
                raise IntegrityError(
                    f"COMPLETE {key}: CRC-64 of the object differs from its parts",
                    info.request_id,
                )
        return info

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                f"ABORT {key}",
                self._client.abort_multipart_upload,
                Key=key,
                UploadId=upload_id,
            )
        except NoSuchUpload:
            pass

    def _list_multipart(self, prefix: str) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        key_marker = upload_marker = ""
        for _ in range(100_000):
            result = self._call(
                "LIST UPLOADS",
                self._client.list_multipart_uploads,
                Prefix=prefix,
                KeyMarker=key_marker,
                UploadIdMarker=upload_marker,
                MaxUploads=1000,
            )
            uploads = result.get("Upload", []) or []
            if isinstance(uploads, dict):
                uploads = [uploads]
            for upload in uploads:
                found.append(
                    PendingUpload(
                        key=upload["Key"],
                        upload_id=upload["UploadId"],
                        initiated=_iso_time(upload.get("Initiated")),
                    )
                )
            if str(result.get("IsTruncated", "false")).lower() != "true":
                break
            key_marker = result.get("NextKeyMarker") or ""
            upload_marker = result.get("NextUploadIdMarker") or ""
            if not key_marker:
                break
        return found


class _RawResponse:
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
