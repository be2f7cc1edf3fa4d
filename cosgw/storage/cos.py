"""
Tencent COS behind the object-store interface, through cos-python-sdk-v5.

This is the only module that imports C{qcloud_cos}.  The SDK is blocking, so
every call runs in the gateway's own thread pool (given to the constructor,
started and stopped by the service), gated by a semaphore so the pool queue
stays bounded.  Reading COS's answers is in L{cosgw.storage.cos_responses},
what its failures mean in L{cosgw.storage.cos_errors}.  Traps of the SDK
that this module gets past (see reference/twisted-conch-cos-facts.md
section f):

  - All clients share one class-level HTTP session sized 10/10 unless given
    their own; we pass a C{requests.Session} sized to our pool.
  - Response headers are a plain dict with whatever casing the server used;
    we wrap them in a case-insensitive mapping.
  - The SDK logs every operation at INFO and network failures with their
    tracebacks; we silence its logger and log each failed operation once.
  - The SDK's retries hide whether a failed request ever reached COS; we
    retry ourselves (L{CosStore._call}), so that a write whose reply was
    lost is looked for, and one that never left is not.
  - Listing keys are URL-encoded on the wire (C{EncodingType=url}) and
    decoded here, so names with control characters cannot break the XML.
  - Every upload part and PUT is checked against the CRC-64 COS computed,
    and every completed upload against its parts'; an object that fails
    the check is deleted.
  - C{upload_part_copy} returns the response headers merged with the parsed
    C{CopyPartResult} (the body's quoted ETag replaces the header's) and,
    unlike C{copy_object}, does not raise on a 200 without an ETag (COS and
    S3 report some copy failures that way); we do.
  - C{list_parts} leaves C{Part} out when there is none and makes a single
    one a list; every value is a string.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional
from urllib.parse import unquote

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError
from requests.structures import CaseInsensitiveDict
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from cosgw.interfaces import (
    MAX_PARTS,
    MAX_PUT_SIZE,
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
from cosgw.storage._runner import (
    BlockingRunner,
    ThreadedStore,
    check_copy_range,
    check_read_range,
)
from cosgw.storage.checksum import crc64, crc64_combine, parse_crc64
from cosgw.storage.cos_errors import (
    RETRYABLE_CODES,
    StoreUnreachable,
    client_error,
    network_error,
    service_error,
)
from cosgw.storage.cos_http import http_session
from cosgw.storage.cos_responses import (
    CosSource,
    RawResponse,
    http_time,
    info_from_headers,
    iso_time,
    sdk_metadata,
    string_headers,
)

log = Logger()

#: Pauses (seconds) before the second, third... attempt of a request that
#: failed in a transient way: the SDK's own schedule, which cosgw now runs
#: itself (see L{CosStore._call}).
RETRY_DELAYS = (1.0, 2.0)

#: Rounds of HEAD (each with its retries) that may be spent finding out
#: whether a write whose reply was lost was in fact stored.
VERIFY_ROUNDS = 3

#: A body this small is read whole with its GET, in the same pool call (see
#: L{CosSource.prefetch}); no bigger than a read takes at once anyway.
SMALL_BODY = 1024 * 1024


def _quiet_sdk_logging() -> None:
    # The SDK logs every request at INFO, each error answer at ERROR and a
    # network failure with its traceback (logger.exception), to stderr,
    # which twistd sends to the log.  cosgw logs each failed operation once,
    # with COS's request id; the SDK's lines would repeat it as noise.
    logging.getLogger("qcloud_cos").setLevel(logging.CRITICAL)


def _error(e: Exception, what: str) -> StoreError:
    """Map an SDK exception to the store errors the layers above understand."""
    if isinstance(e, StoreError):
        return e
    if isinstance(e, CosServiceError):
        return service_error(what, e.get_status_code(), e.get_digest_msg())
    if isinstance(e, CosClientError):
        return client_error(what, str(e), e.__context__)
    if isinstance(e, requests.RequestException):
        return network_error(what, e)
    return StoreError(f"{what}: {type(e).__name__}: {e}")


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
        retry_delays: Optional[Sequence[float]] = None,
    ) -> None:
        """
        @param retry_delays: the pauses before each further attempt of a
            request that failed in a transient way (5xx, the network); one
            attempt more than there are delays.  L{RETRY_DELAYS} by default.
        """
        _quiet_sdk_logging()
        self.bucket = bucket
        where = settings.get("IP") or settings.get("Endpoint") or settings.get("Region")
        port = settings.get("Port")
        self.description = f"COS bucket {bucket} at {where}" + (
            f":{port}" if port else ""
        )
        config = CosConfig(
            PoolConnections=pool_size, PoolMaxSize=pool_size, **dict(settings)
        )
        session = http_session(pool_size, config.uri(bucket=bucket))
        self._region = settings.get("Region")
        self._endpoint = settings.get("Endpoint")
        # The SDK's retries are off: it cannot say whether a request that
        # failed ever reached COS, which is what decides if a write whose
        # reply was lost must be looked for (see _call).
        self._client = CosS3Client(config, retry=0, session=session)
        self.retry_delays = tuple(
            RETRY_DELAYS if retry_delays is None else retry_delays
        )
        # Except in copy() of objects over 5 GB, which runs its part copies
        # in threads of its own: only its own retries can retry one part.
        self._copier = CosS3Client(
            config, retry=len(self.retry_delays), session=session
        )
        self._runner = BlockingRunner(reactor, pool, pool_size * 4)

    def _call(self, what: str, f: Callable[..., Any], **kwargs: Any) -> Any:
        """
        C{f(Bucket=..., **kwargs)}, tried again after each of
        C{retry_delays} while it fails in a transient way (in this pool
        thread, as the SDK would).

        @raise StoreUnreachable: no attempt could even connect, so nothing
            was delivered.
        @raise StoreUnavailable: the last attempt failed in a transient way
            and some attempt may have reached COS.
        @raise StoreError: a permanent failure (or one of its kinds).
        """
        delivered = False
        for delay in (0.0, *self.retry_delays):
            if delay:
                time.sleep(delay)
            try:
                return f(Bucket=self.bucket, **kwargs)
            except Exception as e:
                error = _error(e, what)
                cause = e
            if not isinstance(error, StoreUnavailable):
                break
            delivered = delivered or not isinstance(error, StoreUnreachable)
        if isinstance(error, StoreUnreachable) and delivered:
            error = StoreUnavailable(str(error), error.request_id)
        raise error from cause

    def _lost_reply(
        self, what: str, error: StoreError, key: str, size: int, crc: Optional[int]
    ) -> ObjectInfo:
        """
        A write of C{key} (C{size} bytes, CRC-64 C{crc}) failed with
        C{error} after it may have been performed (the reply was lost, or a
        retry found its upload gone).  Only the object can tell: if it holds
        exactly those bytes, the write succeeded (reference: testing-notes.md,
        a gateway answered 451 for an object that was complete).

        @return: the stored object's L{ObjectInfo}.
        @raise StoreError: C{error}, when the object is not those bytes or
            the store cannot say.
        """
        if isinstance(error, StoreUnreachable) or crc is None:
            raise error
        for _ in range(VERIFY_ROUNDS):
            try:
                info = self._head(key)
            except NoSuchKey:
                raise error from None
            except StoreUnreachable as e:
                last: StoreError = e
                break
            except StoreUnavailable as e:
                last = e
                continue
            except StoreError as e:
                last = e
                break
            if info.size == size and info.crc64 == crc:
                log.info("{what}: reply lost, object found stored", what=what)
                return info
            raise error
        log.warn(
            "{what}: could not find out whether the store holds the object "
            "({error}); reported failed",
            what=what,
            error=str(last),
        )
        raise error

    def _discard_bad(self, key: str, why: str) -> None:
        """
        Delete an object COS reports with other bytes than the ones sent, so
        a failed upload leaves nothing.  A failure to delete is logged: the
        upload is reported failed either way.
        """
        try:
            self._delete(key)
        except StoreError as e:
            log.error(
                "{key}: {why}; deleting the bad object failed too: {error}",
                key=key,
                why=why,
                error=str(e),
                request_id=e.request_id,
            )

    # -- blocking bodies ----------------------------------------------------

    def _head(self, key: str) -> ObjectInfo:
        headers = self._call(f"HEAD {key}", self._client.head_object, Key=key)
        size = int(CaseInsensitiveDict(headers).get("Content-Length", 0))
        return info_from_headers(key, headers, size)

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
                mtime=iso_time(item.get("LastModified")),
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

    def _get(self, **kwargs: Any) -> Optional[Mapping[str, Any]]:
        """GET Object, or None for a 416 (an offset at or past the end)."""
        try:
            result: Mapping[str, Any] = self._client.get_object(**kwargs)
        except CosServiceError as e:
            if e.get_status_code() == 416:
                return None
            raise
        return result

    def _open(self, key: str, offset: int, end: Optional[int]) -> CosSource:
        check_read_range(key, offset, end)
        extra: dict[str, str] = {}
        if end is not None:
            extra = {"Range": f"bytes={offset}-{end - 1}"}
        elif offset:
            extra = {"Range": f"bytes={offset}-"}
        response = self._call(
            f"GET {key}", self._get, Key=key, KeySimplifyCheck=False, **extra
        )
        if response is None:
            info = self._head(key)
            return CosSource(self._runner, None, info, offset, 0)
        raw_response = response["Body"].get_raw_stream()
        headers = string_headers(response)
        length = int(headers.get("Content-Length", 0))
        total = length + offset
        content_range = headers.get("Content-Range")
        if content_range and "/" in content_range:
            try:
                total = int(content_range.rsplit("/", 1)[1])
            except ValueError:
                pass
        info = info_from_headers(key, response, total)
        source = CosSource(
            self._runner, RawResponse(raw_response), info, offset, length
        )
        if length <= SMALL_BODY:
            source.prefetch()
        return source

    def _put(
        self, key: str, data: bytes | memoryview, metadata: Optional[Mapping[str, str]]
    ) -> ObjectInfo:
        if len(data) > MAX_PUT_SIZE:
            raise StoreError(f"PUT {key}: {len(data)} bytes is over COS's PUT limit")
        local_crc = crc64(data)
        what = f"PUT {key}"
        try:
            headers = self._call(
                what,
                self._client.put_object,
                Key=key,
                Body=data,
                **sdk_metadata(metadata),
            )
            info = info_from_headers(key, headers, len(data))
        except StoreUnavailable as e:
            info = self._lost_reply(what, e, key, len(data), local_crc)
        if info.crc64 is not None and info.crc64 != local_crc:
            # The store holds bytes other than ours: do not leave them there.
            why = f"{what}: CRC-64 mismatch (sent {local_crc}, COS {info.crc64})"
            self._discard_bad(key, why)
            raise IntegrityError(why, info.request_id)
        return ObjectInfo(
            key=key,
            size=len(data),
            mtime=info.mtime,
            etag=info.etag,
            crc64=local_crc,
            metadata=dict(metadata or {}),
            request_id=info.request_id,
        )

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
            extra = {"CopyStatus": "Replaced", **sdk_metadata(metadata)}
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
                self._copier.copy,
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
            **sdk_metadata(metadata),
        )
        return str(result["UploadId"])

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | memoryview
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
        headers = string_headers(result)
        request_id = headers.get("x-cos-request-id")
        # The body's ETag (CopyPartResult) has replaced the header's in the
        # merged dict; a 200 without one is an error reported in the body.
        etag = str(result.get("ETag") or "").strip('"')
        if not etag:
            code = result.get("Code")
            error = StoreUnavailable if code in RETRYABLE_CODES else StoreError
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
            mtime=iso_time(headers.get("LastModified"))
            or http_time(headers.get("Last-Modified"))
            or http_time(headers.get("Date")),
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
                    mtime=iso_time(part.get("LastModified")),
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
        what = f"COMPLETE {key}"
        try:
            result = self._call(
                what,
                self._client.complete_multipart_upload,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Part": [{"PartNumber": p.number, "ETag": p.etag} for p in ordered]
                },
            )
        except (StoreUnavailable, NoSuchUpload) as e:
            # The reply may have been lost after COS completed the object (a
            # retry then finds no such upload).
            return self._lost_reply(what, e, key, expected_size, expected)
        try:
            info = self._head(key)
        except StoreUnavailable:
            # COS confirmed the object; its answer stands in for the HEAD.
            headers = string_headers(result)
            info = ObjectInfo(
                key=key,
                size=expected_size,
                mtime=http_time(headers.get("Date")),
                etag=str(result.get("ETag") or "").strip('"') or None,
                crc64=parse_crc64(headers.get("x-cos-hash-crc64ecma")),
                request_id=headers.get("x-cos-request-id"),
            )
        problem = None
        if info.size != expected_size:
            problem = f"object has {info.size} bytes, parts {expected_size}"
        elif info.crc64 is not None and expected is not None and info.crc64 != expected:
            problem = "CRC-64 of the object differs from its parts"
        if problem is not None:
            # As for a PUT: what failed the check must not stay visible.
            self._discard_bad(key, f"{what}: {problem}")
            raise IntegrityError(f"{what}: {problem}", info.request_id)
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
                        initiated=iso_time(upload.get("Initiated")),
                    )
                )
            if str(result.get("IsTruncated", "false")).lower() != "true":
                break
            key_marker = result.get("NextKeyMarker") or ""
            upload_marker = result.get("NextUploadIdMarker") or ""
            if not key_marker:
                break
        return found
