"""A fake Tencent COS server for tests and benchmarks.

What it is
==========
A small COS-dialect adapter (a WSGI app) in front of moto's S3 Flask app
(``moto.moto_server.werkzeug_app.create_backend_app("s3")``), served by a
small threaded HTTP/1.1 server with keep-alive, in a *separate process* on
127.0.0.1 and a free port.  The real ``cos-python-sdk-v5`` talks real HTTP
to it.

How to point the COS SDK at it
==============================
Use exactly these ``CosConfig`` arguments (``cos_client()`` does this)::

    CosConfig(
        Region=server.region,          # "ap-guangzhou"
        SecretId=server.secret_id,
        SecretKey=server.secret_key,
        Scheme="http",
        IP="127.0.0.1",                # host of server.endpoint_url
        Port=server.port,              # port of server.endpoint_url
    )

and give bucket names in their full form ``<short>-<appid>`` (what
``create_bucket()`` returns) or pass ``Appid=server.appid`` too.  No
``Endpoint`` is needed: with ``IP``/``Port`` the SDK connects to IP:Port and
sends ``Host: <bucket>-<appid>.cos.ap-guangzhou.myqcloud.com``; the adapter
takes the bucket from the first label of the Host header (it must look like
``<name>-<digits>``), so any ``Endpoint``/``Region`` (e.g.
``Endpoint="s3.amazonaws.com"``) works as long as ``IP``/``Port`` are set.
A gateway configured with ``endpoint_url = "http://127.0.0.1:PORT"`` maps it
to ``Scheme="http"``, ``IP="127.0.0.1"``, ``Port=PORT``.  Presigned URLs
(signature in the query string) are accepted; make them with
``SignHost=False`` (the SDK would sign the IP as host) and send the bucket
Host header yourself.  ``list_buckets()`` cannot work: the SDK sends it to
service.cos.myqcloud.com whatever ``IP`` says.

Run it by hand with ``python -m tests.cosserver --port 0`` (from the repo
root) or ``python tests/cosserver.py``; it prints ``COSSERVER-PORT <n>``.

What the adapter does
=====================
* Verifies the COS signature (``Authorization: q-sign-algorithm=sha1&...``)
  against the configured SecretId/SecretKey: wrong id -> 403
  ``InvalidAccessKeyId``, wrong key -> 403 ``SignatureDoesNotMatch``, expired
  -> 403 ``AccessDenied``, none -> 403 ``AccessDenied``.
* Rewrites requests for moto: AWS4-looking Authorization, ``x-cos-*`` ->
  ``x-amz-*``, ``x-cos-copy-source`` -> ``/<bucket>/<key>``,
  ``x-cos-metadata-directive: Copy|Replaced`` -> ``COPY|REPLACE``, Host ->
  ``<bucket>.s3.amazonaws.com`` (virtual-host style; the path is untouched).
* Rewrites responses: ``x-amz-*`` -> ``x-cos-*``, canonical casing of
  standard headers (``ETag``, ``Last-Modified``, ``Content-Length``,
  ``Content-Range`` ...), a unique ``x-cos-request-id`` on every answer,
  COS-shaped error XML (``<Error><Code/><Message/><Resource/><RequestId/>
  <TraceId/></Error>``).
* Adds ``x-cos-hash-crc64ecma`` (CRC-64/ECMA-182, decimal) on PUT Object,
  Upload Part, Upload Part Copy, Complete Multipart Upload (combined from
  the parts' CRCs, only if every part went through the adapter), Copy Object
  (when the source's CRC is known), GET and HEAD (CRC of the whole object,
  also for ranged GETs).  Objects written around the adapter have none.
* Implements GET Bucket (ListObjects) itself on moto's store, with S3/COS
  semantics (moto's own V1 listing repeats CommonPrefixes on every page,
  does not count them towards MaxKeys, returns opaque NextMarkers and does
  not url-encode prefixes): Prefix, Delimiter, Marker, MaxKeys (<= 1000),
  NextMarker (= last Key or CommonPrefix of the page), EncodingType=url
  (Key, Prefix, Marker, NextMarker, Delimiter, CommonPrefixes encoded).
  For ListMultipartUploads and ListParts it url-encodes the names moto
  leaves raw.
* Requests that carry an AWS SigV4 Authorization header (boto3, see
  ``boto3_client()``) bypass the adapter and reach moto unchanged.
* Minimum part size is COS's 1 MB (``S3_UPLOAD_PART_MIN_SIZE=1048576``).
* Unknown upload ids, or an upload id used under another key, get 404
  ``NoSuchUpload`` (moto answers 500, or completes under the other key).
* ``Transfer-Encoding: chunked`` request bodies are de-chunked by the HTTP
  server (moto alone answers them with 500); connections are kept alive.
* Append Object is not implemented (501 ``NotImplemented``).

Test control endpoint (same port; Host must not be a bucket host)
=================================================================
``POST /__test__/faults`` with a JSON object ``{"kind": ..., ...}``:

* ``fail``: the next ``count`` (default 1, -1 = until reset) requests
  matching ``op`` (e.g. ``PutObject``, ``UploadPart``,
  ``CompleteMultipartUpload``, ``GetObject``, ``HeadObject``,
  ``InitiateMultipartUpload``, ``ListObjects``, ``*``), optionally ``method``
  and ``key``, answer ``status`` (default 500) with error ``code`` (default
  ``InternalError``, ``SlowDown`` for 503).  ``after=true`` performs the
  operation on the store first (the reply is lost although the write
  happened).  ``drop=true`` closes the connection without any reply instead
  (``reset=true`` makes that close an RST).
* ``corrupt-get``: the next ``count`` GETs of ``key`` return the body with
  one byte flipped (at ``offset`` of the returned body, default the middle);
  same length, same CRC header.
* ``truncate-get``: the next ``count`` GETs of ``key`` close the connection
  after ``after`` bytes of body (default half of it) while Content-Length
  announces the full size (``reset=true``: RST instead of FIN).
* ``corrupt-put``: the next ``count`` requests of ``op`` (``UploadPart``,
  the default, or ``PutObject``), optionally of ``key``, store their body
  with one byte flipped (at ``offset``, default the middle) while the reply
  carries the CRC-64 of the bytes sent: a corruption the reply cannot
  show; HEAD and GET then report the stored bytes' CRC (a completed upload
  the CRC combined from its stored parts).
* ``delay``: the next ``count`` requests matching ``op``/``method``/``key``
  sleep ``seconds`` before being answered.

Any fault may carry ``probability`` (0 < p <= 1) and ``seed``: it then
strikes each matching request with that probability, drawn from its own
``random.Random(seed)``, and ``count`` counts the strikes (``-1``: no end),
so ``{"kind": "fail", "op": "*", "count": -1, "probability": 0.25,
"seed": 7}`` fails a quarter of all requests.  Faults are tried in the
order they were armed and the first that strikes applies, so several
probabilistic ones mix kinds (500, 503, drop, reset, ``after=true``); the
``corrupt-get`` and ``truncate-get`` kinds need no ``key`` when they have a
probability.  ``GET /__test__/faults`` shows for each fault its ``hits``
(strikes so far) and ``seen`` (matching requests that rolled the dice).

``POST /__test__/reset`` clears faults, ``GET /__test__/faults`` lists what is
left of them, ``GET /__test__/stats`` returns ``{operation: count}`` of COS
requests that passed authentication, counted before any fault applies
(``_bypass``: boto3 requests, ``_auth_failed``: rejected ones; operation
names as listed for ``fail``, plus ``ListParts``, ``ListMultipartUploads``,
``AbortMultipartUpload``, ``UploadPartCopy``, ``CopyObject``,
``DeleteObject``, ``DeleteObjects``, ``PutBucket``...),
``POST /__test__/reset-stats`` zeroes it,
``GET /__test__/ping`` answers ``ok``.

The child process exits when its stdin reaches EOF, i.e. when the parent
dies or calls ``stop()`` (no PR_SET_PDEATHSIG: it fires when the *thread*
that spawned the child exits, which would kill a server started from a
worker thread).  It logs nothing per request; its stderr (tracebacks of
adapter bugs) goes to ``CosTestServer.log_path`` while it runs.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import bisect
import collections
import http.server
import io
import json
import os
import random
import re
import select
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from email.utils import formatdate
from hashlib import sha1
from hmac import compare_digest
from hmac import new as hmac_new
from urllib.parse import parse_qsl, quote, unquote, unquote_to_bytes
from xml.sax.saxutils import escape as xml_escape

import crcmod

__all__ = [
    "CosTestServer",
    "closed_port",
    "crc64",
    "crc64_combine",
    "shared_server",
]

# ---------------------------------------------------------------------------
# CRC-64/ECMA-182 as COS computes it (the value of x-cos-hash-crc64ecma)
# ---------------------------------------------------------------------------

_crc64_fun = crcmod.mkCrcFun(
    0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True
)
_CRC64_POLY_REV = 0xC96C5795D7870F42  # bit-reversed 0x42F0E1EBA9EA3693


def crc64(data: bytes, crc: int = 0) -> int:
    """CRC-64/ECMA of ``data``; pass the previous value to chain."""
    return _crc64_fun(data, crc)


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(64)]


_zero_ops: list[list[int]] = []  # _zero_ops[k]: operator for 2**k zero bytes
_zero_ops_lock = threading.Lock()


def _zero_op(k: int) -> list[int]:
    with _zero_ops_lock:
        if not _zero_ops:
            one_bit = [_CRC64_POLY_REV] + [1 << n for n in range(63)]
            two_bits = _gf2_square(one_bit)
            four_bits = _gf2_square(two_bits)
            _zero_ops.append(_gf2_square(four_bits))  # 8 bits = 1 byte
        while len(_zero_ops) <= k:
            _zero_ops.append(_gf2_square(_zero_ops[-1]))
        return _zero_ops[k]


def crc64_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC of A+B from crc64(A), crc64(B) and len(B) (zlib's method)."""
    k = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_zero_op(k), crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


# ---------------------------------------------------------------------------
# A small threaded HTTP/1.1 WSGI server with keep-alive
# (werkzeug's development server closes every connection and sleeps 10 ms
# after each response; this one keeps connections, like COS does)
# ---------------------------------------------------------------------------


class _CloseConnection(Exception):
    """Raised by the app (or its body iterator) to drop the connection."""

    def __init__(self, reset: bool = False):
        super().__init__("close connection")
        self.reset = reset


class _BodyReader(io.RawIOBase):
    """wsgi.input: at most ``length`` bytes of the request body."""

    def __init__(self, rfile, length: int):
        self._rfile = rfile
        self.remaining = length

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data = self._rfile.read(size)
        self.remaining -= len(data)
        if len(data) < size:
            self.remaining = 0
            raise _CloseConnection()
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readline(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        if size is None or size < 0 or size > self.remaining:
            size = self.remaining
        data = self._rfile.readline(size)
        self.remaining -= len(data)
        return data


def _read_chunked(rfile) -> bytes:
    parts = []
    while True:
        line = rfile.readline(65537)
        if not line:
            raise _CloseConnection()
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers
                line = rfile.readline(65537)
                if line in (b"\r\n", b"\n", b""):
                    break
            return b"".join(parts)
        data = rfile.read(size)
        if len(data) < size:
            raise _CloseConnection()
        parts.append(data)
        rfile.readline(3)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tencent-cos"
    sys_version = ""
    timeout = 300  # idle keep-alive connections
    rbufsize = 1 << 16
    wbufsize = 0

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            self.close_connection = True
            return
        if not self.parse_request():
            return
        if self.request_version != "HTTP/1.1":
            self.close_connection = True
        try:
            self._serve()
        except _CloseConnection as exc:
            self._drop(exc.reset)
        except OSError:
            self.close_connection = True

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _environ(self) -> dict:
        target = self.path
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        raw_path, _, query = target.partition("?")
        host, port = self.server.server_address[:2]
        environ = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": target,
            "REQUEST_URI": target,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
                continue
            key = "HTTP_" + key
            if key in environ:
                environ[key] += "," + value
            else:
                environ[key] = value
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # moto (werkzeug) must see a plain body; the signature check
            # still needs the header's value.
            environ["cosserver.transfer_encoding"] = environ.pop(
                "HTTP_TRANSFER_ENCODING"
            )
            body = _read_chunked(self.rfile)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input"] = _BodyReader(
                io.BufferedReader(io.BytesIO(body)), len(body)
            )
        else:
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length < 0:
                raise _CloseConnection()
            environ["wsgi.input"] = _BodyReader(self.rfile, length)
        return environ

    def _serve(self) -> None:
        environ = self._environ()
        state: list = []

        def start_response(status, headers, exc_info=None):
            state[:] = [status, headers]
            return self._no_write

        result = self.server.app(environ, start_response)
        try:
            status, headers = state
            code = int(status.split(None, 1)[0])
            # Leave the connection in sync for the next request.
            reader = environ["wsgi.input"]
            if reader.remaining > (64 << 20):
                self.close_connection = True
            else:
                while reader.remaining > 0:
                    reader.read(1 << 20)
            names = {k.lower() for k, _ in headers}
            no_body = self.command == "HEAD" or code < 200 or code in (204, 304)
            chunked = False
            first = b""
            it = iter(result)
            if not no_body and "content-length" not in names:
                if isinstance(result, (list, tuple)):
                    headers = list(headers)
                    headers.append(("Content-Length", str(sum(map(len, result)))))
                else:
                    chunked = True
                    headers = list(headers) + [("Transfer-Encoding", "chunked")]
            if not no_body and not chunked:
                first = next(it, b"")
            lines = [f"HTTP/1.1 {status}\r\n"]
            for k, v in headers:
                lines.append(f"{k}: {v}\r\n")
            if "date" not in names:
                lines.append(f"Date: {formatdate(usegmt=True)}\r\n")
            if "server" not in names:
                lines.append(f"Server: {self.server_version}\r\n")
            if self.close_connection:
                lines.append("Connection: close\r\n")
            lines.append("\r\n")
            head = "".join(lines)
            try:
                head_bytes = head.encode("latin-1")
            except UnicodeEncodeError:
                head_bytes = head.encode("utf-8")
            write = self.wfile.write
            if no_body:
                write(head_bytes)
                return
            if chunked:
                write(head_bytes)
                for chunk in it:
                    if chunk:
                        write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                write(b"0\r\n\r\n")
                return
            if len(first) <= 65536:
                write(head_bytes + first)
            else:
                write(head_bytes)
                write(first)
            for chunk in it:
                if chunk:
                    write(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _no_write(data: bytes) -> None:
        raise RuntimeError("the legacy WSGI write() callable is not supported")


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address, app):
        self.app = app
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):  # pragma: no cover
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, _CloseConnection)):
            return
        traceback.print_exc()


# ---------------------------------------------------------------------------
# The COS-dialect adapter
# ---------------------------------------------------------------------------

_FAKE_AWS_AUTH = (
    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20240101/us-east-1/s3/"
    "aws4_request, SignedHeaders=host, Signature=" + "0" * 64
)

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept-Ranges",
        "Cache-Control",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-MD5",
        "Content-Range",
        "Content-Type",
        "Date",
        "ETag",
        "Expires",
        "Last-Modified",
        "Location",
        "Server",
        "Vary",
    )
}
_DROP_RESPONSE = {
    "x-amz-request-id",
    "x-amz-id-2",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "date",
    "server",
}

_STATUS_TEXT = {
    200: "OK",
    204: "No Content",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    412: "Precondition Failed",
    416: "Requested Range Not Satisfiable",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_DEFAULT_CODE = {
    400: "InvalidRequest",
    403: "AccessDenied",
    405: "MethodNotAllowed",
    409: "Conflict",
    411: "MissingContentLength",
    412: "PreconditionFailed",
    416: "InvalidRange",
    500: "InternalError",
    501: "NotImplemented",
    503: "SlowDown",
}

_OP_ALIASES = {
    "CreateMultipartUpload": "InitiateMultipartUpload",
    "GetBucket": "ListObjects",
    "ListObjectsV1": "ListObjects",
    "GetService": "ListBuckets",
    "PostObjectDelete": "DeleteObjects",
    "DeleteMultipleObjects": "DeleteObjects",
}

_BUCKET_SUBRESOURCES = (
    "acl",
    "cors",
    "lifecycle",
    "location",
    "logging",
    "policy",
    "replication",
    "tagging",
    "versioning",
    "website",
    "encryption",
    "referer",
    "inventory",
    "object-lock",
    "intelligenttiering",
    "accelerate",
    "domain",
)

_STORAGE_CLASS_TO_S3 = {
    "MAZ_STANDARD": "STANDARD",
    "MAZ_STANDARD_IA": "STANDARD_IA",
    "MAZ_INTELLIGENT_TIERING": "INTELLIGENT_TIERING",
    "ARCHIVE": "GLACIER",
}

_RE_CODE = re.compile(rb"<Code>\s*([^<]*?)\s*</Code>")
_RE_MESSAGE = re.compile(rb"<Message>\s*([^<]*?)\s*</Message>", re.S)
_RE_ETAG = re.compile(rb"<ETag>\s*([^<]*?)\s*</ETag>")
_RE_PART_NUMBER = re.compile(rb"<PartNumber>\s*(\d+)\s*</PartNumber>")


def _unescape_xml(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&#34;", '"')
        .replace("&amp;", "&")
    )


def _url_encode_elements(body: bytes, tags: tuple[str, ...]) -> bytes:
    """url-encode the text of the given XML elements (as COS does)."""
    names = "|".join(map(re.escape, tags))
    pattern = re.compile(rf"<({names})>([^<]*)</\1>", re.S)

    def repl(m):
        return f"<{m.group(1)}>{quote(_unescape_xml(m.group(2)))}</{m.group(1)}>"

    return pattern.sub(repl, body.decode("utf-8")).encode("utf-8")


class _Request:
    """What the adapter knows about one COS request."""

    __slots__ = (
        "rid",
        "method",
        "host",
        "bucket",
        "key",
        "query",
        "qdict",
        "op",
        "resource",
        "body",
        "claimed_crc",
    )

    def __init__(self) -> None:
        #: The CRC-64 to announce instead of the stored bytes' (corrupt-put).
        self.claimed_crc: int | None = None


class CosAdapter:
    """WSGI app: COS dialect outside, moto's S3 app inside."""

    def __init__(self, secret_id: str, secret_key: str, appid: str, region: str):
        from moto.moto_server.werkzeug_app import create_backend_app

        self.secret_id = secret_id
        self.secret_key = secret_key
        self.appid = appid
        self.region = region
        self.moto = create_backend_app("s3")
        # Keys like "a//b" must not be merged into "a/b" by Flask's router.
        try:
            url_map = self.moto.url_map
            url_map.merge_slashes = False
            for rule in url_map.iter_rules():
                rule.merge_slashes = False
                rule.compile()
            url_map._remap = True
        except Exception:  # pragma: no cover - depends on werkzeug internals
            pass
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        #: Each probabilistic fault's own random stream, by fault id.
        self._dice: dict[int, random.Random] = {}
        self._fault_ids = 0
        self.stats: collections.Counter = collections.Counter()
        self.object_crc: dict[tuple[str, str, str], int] = {}
        self.part_crc: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        self._rid_counter = 0
        self._rid_prefix = uuid.uuid4().hex[:8]

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _backend():
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def _new_rid(self) -> str:
        with self.lock:
            self._rid_counter += 1
            n = self._rid_counter
        raw = f"{self._rid_prefix}_{int(time.time()):x}_{n:x}_{os.getpid()}"
        return base64.b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def _bucket_from_host(host: str) -> str | None:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        first, dot, _ = name.partition(".")
        # COS bucket hosts start with "<name>-<appid>."
        if dot and re.fullmatch(r"[a-z0-9][a-z0-9-]*-[0-9]+", first):
            return first
        return None

    @staticmethod
    def _operation(method: str, bucket, key: str, q: dict, environ) -> str:
        if bucket is None:
            return "ListBuckets" if method == "GET" else method.title() + "Service"
        if not key:
            sub = next((s for s in _BUCKET_SUBRESOURCES if s in q), None)
            subname = (sub or "").title().replace("-", "")
            if method == "GET":
                if "uploads" in q:
                    return "ListMultipartUploads"
                if "versions" in q:
                    return "ListObjectVersions"
                if sub:
                    return "GetBucket" + subname
                return "ListObjects"
            if method == "PUT":
                return "PutBucket" + subname
            if method == "HEAD":
                return "HeadBucket"
            if method == "DELETE":
                return "DeleteBucket" + subname
            if method == "POST":
                return "DeleteObjects" if "delete" in q else "PostObject"
            return method.title() + "Bucket"
        copy = "HTTP_X_COS_COPY_SOURCE" in environ
        if method == "PUT":
            if "partNumber" in q and "uploadId" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            if "append" in q:
                return "AppendObject"
            if "acl" in q:
                return "PutObjectACL"
            if "tagging" in q:
                return "PutObjectTagging"
            return "CopyObject" if copy else "PutObject"
        if method == "POST":
            if "uploads" in q:
                return "InitiateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            if "restore" in q:
                return "PostObjectRestore"
            return "PostObject"
        if method == "GET":
            if "uploadId" in q:
                return "ListParts"
            if "acl" in q:
                return "GetObjectACL"
            if "tagging" in q:
                return "GetObjectTagging"
            return "GetObject"
        if method == "HEAD":
            return "HeadObject"
        if method == "DELETE":
            if "uploadId" in q:
                return "AbortMultipartUpload"
            if "tagging" in q:
                return "DeleteObjectTagging"
            return "DeleteObject"
        return method.title() + "Object"

    def _check_auth(self, environ, path: str, query) -> tuple[str, str] | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        fields = {}
        if auth:
            for item in auth.split("&"):
                name, sep, value = item.partition("=")
                if sep:
                    fields[name.strip()] = value.strip()
        else:  # presigned URL: the q-* fields are query parameters
            fields = {k: v for k, v in query if k.startswith("q-")}
            query = [(k, v) for k, v in query if not k.startswith("q-")]
            if "q-signature" not in fields:
                return "AccessDenied", "Access Denied."
        needed = ("q-sign-algorithm", "q-ak", "q-sign-time", "q-key-time")
        if any(n not in fields for n in needed) or "q-signature" not in fields:
            return "InvalidAuthorization", "The Authorization header is invalid."
        if fields["q-sign-algorithm"] != "sha1":
            return "InvalidAuthorization", "Unsupported q-sign-algorithm."
        if fields["q-ak"] != self.secret_id:
            return (
                "InvalidAccessKeyId",
                "The access key Id format you provided is invalid.",
            )
        try:
            start, end = (int(x) for x in fields["q-sign-time"].split(";"))
        except ValueError:
            return "InvalidAuthorization", "q-sign-time is invalid."
        now = time.time()
        if now < start - 900 or now > end:
            return "AccessDenied", "Request has expired"
        headers = []
        for name in filter(None, fields.get("q-header-list", "").split(";")):
            hname = unquote(name).lower()
            if hname == "content-type":
                value = environ.get("CONTENT_TYPE")
            elif hname == "content-length":
                value = environ.get("CONTENT_LENGTH")
            elif hname == "transfer-encoding":
                value = environ.get("cosserver.transfer_encoding")
            else:
                value = environ.get("HTTP_" + hname.upper().replace("-", "_"))
            if value is None:
                return (
                    "SignatureDoesNotMatch",
                    f"The signed header {hname} is missing.",
                )
            headers.append((name, quote(value.encode("latin-1"), "-_.~")))
        params = []
        listed = {p for p in fields.get("q-url-param-list", "").split(";") if p}
        for name, value in query:
            qname = quote(name.encode("utf-8"), "-_.~").lower()
            if qname in listed:
                params.append((qname, quote(value.encode("utf-8"), "-_.~")))
        if len(params) < len(listed):
            return "SignatureDoesNotMatch", "A signed parameter is missing."
        fmt = "{}\n{}\n{}\n{}\n".format(
            environ["REQUEST_METHOD"].lower(),
            path,
            "&".join(f"{k}={v}" for k, v in sorted(params)),
            "&".join(f"{k}={v}" for k, v in sorted(headers)),
        )
        string_to_sign = "sha1\n{}\n{}\n".format(
            fields["q-sign-time"], sha1(fmt.encode("utf-8")).hexdigest()
        )
        sign_key = hmac_new(
            self.secret_key.encode("utf-8"),
            fields["q-key-time"].encode("utf-8"),
            sha1,
        ).hexdigest()
        expected = hmac_new(
            sign_key.encode("utf-8"), string_to_sign.encode("utf-8"), sha1
        ).hexdigest()
        if not compare_digest(expected, fields["q-signature"]):
            return (
                "SignatureDoesNotMatch",
                "The Signature you specified does not match what we calculated.",
            )
        return None

    # -- faults ------------------------------------------------------------

    def _take_fault(self, kinds: tuple[str, ...], req: _Request) -> dict | None:
        with self.lock:
            for fault in self.faults:
                if fault["kind"] not in kinds:
                    continue
                if fault.get("op") not in (None, "*", req.op):
                    continue
                method = fault.get("method")
                if method and method.upper() != req.method:
                    continue
                key = fault.get("key")
                if key is not None and key != req.key:
                    continue
                bucket = fault.get("bucket")
                if bucket is not None and bucket != req.bucket:
                    continue
                chance = fault.get("probability")
                if chance is not None:
                    fault["seen"] += 1
                    if self._dice[fault["id"]].random() >= chance:
                        continue
                fault["hits"] += 1
                fault["count"] -= 1
                if fault["count"] == 0:
                    self.faults.remove(fault)
                    self._dice.pop(fault["id"], None)
                return dict(fault)
        return None

    def _add_fault(self, spec: dict) -> None:
        kind = spec.get("kind")
        if kind not in ("fail", "corrupt-get", "truncate-get", "corrupt-put", "delay"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = dict(spec)
        fault["count"] = int(fault.get("count", 1))
        if fault["count"] == 0:
            raise ValueError("count must be >= 1 or -1")
        if "op" in fault and fault["op"] is not None:
            fault["op"] = _OP_ALIASES.get(fault["op"], fault["op"])
        chance = fault.get("probability")
        if chance is not None:
            chance = fault["probability"] = float(chance)
            if not 0.0 < chance <= 1.0:
                raise ValueError("probability must be in (0, 1]")
        if kind in ("corrupt-get", "truncate-get"):
            fault["op"] = "GetObject"
            if "key" not in fault and chance is None:
                raise ValueError(f"{kind} needs a key (or a probability)")
        if kind == "corrupt-put":
            fault["op"] = fault.get("op") or "UploadPart"
            if fault["op"] not in ("PutObject", "UploadPart"):
                raise ValueError("corrupt-put applies to PutObject or UploadPart")
        if kind == "delay":
            fault["seconds"] = float(fault.get("seconds", 1.0))
        fault["hits"] = fault["seen"] = 0
        with self.lock:
            self._fault_ids += 1
            fault["id"] = self._fault_ids
            if chance is not None:
                self._dice[fault["id"]] = random.Random(fault.get("seed"))
            self.faults.append(fault)

    # -- responses ---------------------------------------------------------

    def _respond(self, start_response, code: int, headers: list, body=b""):
        status = f"{code} {_STATUS_TEXT.get(code, 'Unknown')}"
        start_response(status, headers)
        if isinstance(body, (bytes, bytearray)):
            return [bytes(body)]
        return body

    def _error(
        self,
        start_response,
        req: _Request,
        code: int,
        err: str,
        message: str = "",
        extra: list | None = None,
    ):
        message = message or err
        xml = (
            "<?xml version='1.0' encoding='utf-8' ?>\n<Error>\n"
            f"\t<Code>{xml_escape(err)}</Code>\n"
            f"\t<Message>{xml_escape(message)}</Message>\n"
            f"\t<Resource>{xml_escape(req.resource)}</Resource>\n"
            f"\t<RequestId>{req.rid}</RequestId>\n"
            f"\t<TraceId>{req.rid}</TraceId>\n"
            "</Error>"
        ).encode()
        headers = [
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(xml))),
            ("x-cos-request-id", req.rid),
            ("x-cos-trace-id", req.rid),
        ]
        if extra:
            headers.extend(extra)
        return self._respond(start_response, code, headers, xml)

    def _control(self, environ, start_response):
        path = environ["PATH_INFO"]
        method = environ["REQUEST_METHOD"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""

        def reply(code, obj):
            data = json.dumps(obj).encode("utf-8")
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
            ]
            return self._respond(start_response, code, headers, data)

        try:
            if path == "/__test__/ping":
                return reply(200, "ok")
            if path == "/__test__/faults" and method == "POST":
                spec = json.loads(raw or b"{}")
                self._add_fault(spec)
                return reply(200, {"ok": True})
            if path == "/__test__/faults" and method == "GET":
                with self.lock:
                    return reply(200, list(self.faults))
            if path == "/__test__/reset" and method == "POST":
                with self.lock:
                    self.faults.clear()
                    self._dice.clear()
                return reply(200, {"ok": True})
            if path == "/__test__/stats" and method == "GET":
                with self.lock:
                    return reply(200, dict(self.stats))
            if path == "/__test__/reset-stats" and method == "POST":
                with self.lock:
                    self.stats.clear()
                return reply(200, {"ok": True})
        except (ValueError, TypeError) as exc:
            return reply(400, {"error": str(exc)})
        return reply(404, {"error": "no such control endpoint"})

    # -- main entry --------------------------------------------------------

    def __call__(self, environ, start_response):
        host = environ.get("HTTP_HOST", "")
        bucket = self._bucket_from_host(host)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        qs = environ.get("QUERY_STRING", "")
        if (
            bucket is None
            and not auth
            and environ["PATH_INFO"].startswith("/__test__/")
        ):
            return self._control(environ, start_response)
        if auth.startswith("AWS4-") or "X-Amz-Signature=" in qs:
            with self.lock:
                self.stats["_bypass"] += 1
            return self.moto(environ, start_response)

        req = _Request()
        req.rid = self._new_rid()
        req.method = environ["REQUEST_METHOD"]
        req.host = host
        req.bucket = bucket
        path = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "surrogateescape")
        req.key = path[1:] if bucket else ""
        req.query = parse_qsl(qs, keep_blank_values=True)
        req.qdict = dict(req.query)
        req.resource = host + environ.get("RAW_URI", path).split("?", 1)[0]
        req.op = self._operation(req.method, bucket, req.key, req.qdict, environ)
        reader = environ["wsgi.input"]
        length = int(environ.get("CONTENT_LENGTH") or 0)

        denied = self._check_auth(environ, path, req.query)
        if denied is not None:
            with self.lock:
                self.stats["_auth_failed"] += 1
            # The HTTP server drains (or, if huge, drops) the unread body.
            return self._error(start_response, req, 403, *denied)
        with self.lock:
            self.stats[req.op] += 1

        req.body = reader.read(length) if length else b""
        rot = self._take_fault(("corrupt-put",), req) if req.body else None
        if rot:
            req.claimed_crc = crc64(req.body)
            offset = rot.get("offset")
            offset = len(req.body) // 2 if offset is None else int(offset)
            offset = max(0, min(offset, len(req.body) - 1))
            flipped = bytes([req.body[offset] ^ 0x01])
            req.body = req.body[:offset] + flipped + req.body[offset + 1 :]

        delay = self._take_fault(("delay",), req)
        if delay:
            time.sleep(delay["seconds"])
        fail = self._take_fault(("fail",), req)
        if fail and not fail.get("after"):
            return self._fail(start_response, req, fail)

        try:
            result = self._dispatch(environ, req)
        except _CloseConnection:
            raise
        except Exception:
            traceback.print_exc()
            result = (500, [], None, ("InternalError", "fake COS server bug"))
        code, headers, body, error = result
        if fail:  # after=True: the store did it, the reply is lost
            return self._fail(start_response, req, fail)
        if error is not None:
            return self._error(start_response, req, code, *error, extra=headers)
        headers.append(("x-cos-request-id", req.rid))
        if req.op == "GetObject" and code in (200, 206) and body:
            body = self._get_faults(req, headers, body)
        return self._respond(start_response, code, headers, body)

    def _fail(self, start_response, req: _Request, fault: dict):
        if fault.get("drop"):
            raise _CloseConnection(reset=bool(fault.get("reset")))
        status = int(fault.get("status", 500))
        code = fault.get("code") or _DEFAULT_CODE.get(status, "InternalError")
        message = fault.get("message") or f"injected fault ({code})"
        return self._error(start_response, req, status, code, message)

    def _get_faults(self, req: _Request, headers: list, body: bytes):
        corrupt = self._take_fault(("corrupt-get",), req)
        if corrupt:
            offset = corrupt.get("offset")
            offset = len(body) // 2 if offset is None else int(offset)
            offset = max(0, min(offset, len(body) - 1))
            body = b"".join(
                (body[:offset], bytes([body[offset] ^ 0x01]), body[offset + 1 :])
            )
        truncate = self._take_fault(("truncate-get",), req)
        if truncate:
            after = truncate.get("after")
            after = len(body) // 2 if after is None else int(after)
            return _truncated(body[: max(0, after)], bool(truncate.get("reset")))
        return [body]

    # -- dispatch ----------------------------------------------------------

    def _dispatch(self, environ, req: _Request):
        """Returns (status, headers, body, error) where error is None or
        (code, message)."""
        if req.op == "ListObjects" and "list-type" not in req.qdict:
            return self._list_objects(req)
        if req.op == "AppendObject":
            return (
                501,
                [],
                None,
                (
                    "NotImplemented",
                    "Append Object is not implemented by the fake COS server.",
                ),
            )

        env = dict(environ)
        env["HTTP_AUTHORIZATION"] = _FAKE_AWS_AUTH
        if req.bucket:
            env["HTTP_HOST"] = f"{req.bucket}.s3.amazonaws.com"
            env["SERVER_NAME"] = env["HTTP_HOST"]
        for name in [n for n in env if n.startswith("HTTP_X_COS_")]:
            env["HTTP_X_AMZ_" + name[len("HTTP_X_COS_") :]] = env.pop(name)
        src = None
        if "HTTP_X_AMZ_COPY_SOURCE" in env:
            src = self._parse_copy_source(env["HTTP_X_AMZ_COPY_SOURCE"])
            if src is None:
                return 400, [], None, ("InvalidArgument", "Bad x-cos-copy-source.")
            sbucket, skey, sversion = src
            env["HTTP_X_AMZ_COPY_SOURCE"] = (
                f"/{sbucket}/{quote(skey.encode('utf-8', 'surrogateescape'))}"
                + (f"?versionId={sversion}" if sversion else "")
            )
        directive = env.get("HTTP_X_AMZ_METADATA_DIRECTIVE")
        if directive is not None:
            env["HTTP_X_AMZ_METADATA_DIRECTIVE"] = {
                "copy": "COPY",
                "replaced": "REPLACE",
                "replace": "REPLACE",
            }.get(directive.strip().lower(), directive)
        storage = env.get("HTTP_X_AMZ_STORAGE_CLASS")
        if storage is not None:
            env["HTTP_X_AMZ_STORAGE_CLASS"] = _STORAGE_CLASS_TO_S3.get(
                storage.upper(), storage.upper()
            )
        env["wsgi.input"] = io.BytesIO(req.body)
        env["CONTENT_LENGTH"] = str(len(req.body))

        src_crc = None
        if req.op == "CopyObject" and src is not None:
            src_crc = self._known_crc(*src)

        upload_ops = (
            "UploadPart",
            "UploadPartCopy",
            "CompleteMultipartUpload",
            "AbortMultipartUpload",
            "ListParts",
        )
        no_upload = (
            404,
            [],
            None,
            (
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, "
                "or the upload may have been aborted or completed.",
            ),
        )
        if req.op in upload_ops and not self._upload_exists(req):
            return no_upload
        try:
            code, moto_headers, body = self._call_moto(env)
        except KeyError:
            if req.op in upload_ops:  # completed/aborted concurrently
                return no_upload
            raise

        if code >= 400:
            m = _RE_CODE.search(body)
            err = m.group(1).decode("utf-8", "replace") if m else ""
            m = _RE_MESSAGE.search(body)
            msg = _unescape_xml(m.group(1).decode("utf-8", "replace")) if m else ""
            if not err:
                if code == 404:
                    err = "NoSuchKey" if req.key else "NoSuchBucket"
                    if req.op == "UploadPartCopy":
                        msg = msg or "The specified copy source does not exist."
                else:
                    err = _DEFAULT_CODE.get(code, "InternalError")
                    if body and not body.lstrip().startswith(b"<"):
                        msg = msg or body.decode("utf-8", "replace")[:500]
            return code, [], None, (err, msg)

        headers = []
        etag = None
        cors = "HTTP_ORIGIN" in environ
        for name, value in moto_headers:
            lname = name.lower()
            if lname in _DROP_RESPONSE or lname.startswith("x-amzn-"):
                continue
            if lname.startswith("access-control-") and not cors:
                continue  # flask_cors answers everyone; COS only with a rule
            if lname == "content-type" and value.startswith("text/html"):
                value = "application/xml"  # Flask's default for empty bodies
            if lname.startswith("x-amz-"):
                headers.append(("x-cos-" + lname[6:], value))
                continue
            if lname == "etag":
                etag = value.strip().strip('"')
            headers.append((_CANONICAL.get(lname, name), value))

        crc = None
        op = req.op
        if op == "PutObject" and etag:
            crc = crc64(req.body)
            with self.lock:
                self.object_crc[(req.bucket, req.key, etag)] = crc
        elif op == "UploadPart":
            crc = crc64(req.body)
            self._remember_part(req, crc, len(req.body))
        elif op == "UploadPartCopy":
            crc, size = self._copied_part_crc(req)
            if crc is not None:
                self._remember_part(req, crc, size)
        elif op == "CompleteMultipartUpload":
            m = _RE_ETAG.search(body)
            new_etag = (
                m.group(1).decode().replace("&quot;", "").strip('"') if m else None
            )
            crc = self._complete_crc(req)
            if crc is not None and new_etag:
                with self.lock:
                    self.object_crc[(req.bucket, req.key, new_etag)] = crc
        elif op == "AbortMultipartUpload":
            with self.lock:
                self.part_crc.pop((req.bucket, req.qdict.get("uploadId", "")), None)
        elif op == "CopyObject":
            m = _RE_ETAG.search(body)
            new_etag = (
                m.group(1).decode().replace("&quot;", "").strip('"') if m else None
            )
            if src_crc is not None and new_etag:
                crc = src_crc
                with self.lock:
                    self.object_crc[(req.bucket, req.key, new_etag)] = crc
        elif op in ("GetObject", "HeadObject") and etag and code in (200, 206):
            with self.lock:
                crc = self.object_crc.get((req.bucket, req.key, etag))
        elif op in ("ListMultipartUploads", "ListParts") and (
            req.qdict.get("encoding-type") == "url"
        ):
            body = _url_encode_elements(
                body,
                ("Key", "Prefix", "KeyMarker", "NextKeyMarker", "Delimiter"),
            )
            headers = [
                (n, str(len(body)) if n == "Content-Length" else v) for n, v in headers
            ]
        if req.claimed_crc is not None and op in ("PutObject", "UploadPart"):
            crc = req.claimed_crc
        if crc is not None:
            headers.append(("x-cos-hash-crc64ecma", str(crc)))
        return code, headers, body, None

    def _call_moto(self, env) -> tuple[int, list, bytes]:
        state: list = []

        def start_response(status, headers, exc_info=None):
            state[:] = [status, headers]
            return lambda data: state.append(data)

        result = self.moto(env, start_response)
        try:
            chunks = list(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        code = int(state[0].split(None, 1)[0])
        extra = state[2:]
        body = b"".join(extra + chunks) if extra else b"".join(chunks)
        return code, list(state[1]), body

    def _upload_exists(self, req: _Request) -> bool:
        """moto answers 500 (KeyError) to an unknown upload id on Complete,
        and accepts an upload id under another key; COS says NoSuchUpload."""
        try:
            bucket = self._backend().get_bucket(req.bucket)
        except Exception:
            return True  # let moto answer NoSuchBucket
        upload = bucket.multiparts.get(req.qdict.get("uploadId", ""))
        return upload is not None and upload.key_name == req.key

    @staticmethod
    def _parse_copy_source(value: str):
        v = value.strip()
        if "://" in v:
            v = v.split("://", 1)[1]
        v = v.lstrip("/")
        hostpart, sep, rest = v.partition("/")
        if not sep or not rest:
            return None
        sbucket = hostpart.split(".", 1)[0]
        path, _, query = rest.partition("?")
        version = dict(parse_qsl(query)).get("versionId") if query else None
        skey = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
        return sbucket, skey, version

    def _known_crc(self, sbucket: str, skey: str, version) -> int | None:
        try:
            key = self._backend().get_object(sbucket, skey, version_id=version)
        except Exception:
            return None
        if key is None:
            return None
        etag = key.etag.strip('"')
        with self.lock:
            return self.object_crc.get((sbucket, skey, etag))

    def _remember_part(self, req: _Request, crc: int, size: int) -> None:
        try:
            number = int(req.qdict.get("partNumber", ""))
        except ValueError:
            return
        upload = (req.bucket, req.qdict.get("uploadId", ""))
        with self.lock:
            self.part_crc.setdefault(upload, {})[number] = (crc, size)

    def _copied_part_crc(self, req: _Request):
        try:
            number = int(req.qdict["partNumber"])
            bucket = self._backend().get_bucket(req.bucket)
            part = bucket.multiparts[req.qdict["uploadId"]].parts[number]
            data = part.value
        except Exception:
            return None, 0
        return crc64(data), len(data)

    def _complete_crc(self, req: _Request) -> int | None:
        upload = (req.bucket, req.qdict.get("uploadId", ""))
        with self.lock:
            parts = self.part_crc.pop(upload, None)
        if not parts:
            return None
        numbers = [int(n) for n in _RE_PART_NUMBER.findall(req.body)]
        if not numbers:
            return None
        crc = None
        for n in numbers:
            if n not in parts:
                return None
            pcrc, size = parts[n]
            crc = pcrc if crc is None else crc64_combine(crc, pcrc, size)
        return crc

    # -- GET Bucket (ListObjects) -----------------------------------------

    def _list_objects(self, req: _Request):
        from moto.s3.models import FakeDeleteMarker

        q = req.qdict
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        marker = q.get("marker", "")
        encoding = q.get("encoding-type", "")
        if encoding and encoding != "url":
            return 400, [], None, ("InvalidArgument", "encoding-type must be url")
        try:
            max_keys = int(q.get("max-keys") or 1000)
        except ValueError:
            return 400, [], None, ("InvalidArgument", "max-keys is not a number")
        if max_keys < 0:
            return 400, [], None, ("InvalidArgument", "max-keys must be >= 0")
        max_keys = min(max_keys, 1000)
        try:
            bucket = self._backend().get_bucket(req.bucket)
        except Exception:
            return (
                404,
                [],
                None,
                (
                    "NoSuchBucket",
                    "The specified bucket does not exist.",
                ),
            )
        store = dict.copy(bucket.keys)
        latest = {}
        for name, versions in store.items():
            if versions and not isinstance(versions[-1], FakeDeleteMarker):
                latest[name] = versions[-1]
        names = sorted(latest)
        i = bisect.bisect_left(names, prefix) if prefix else 0
        if marker:
            i = max(i, bisect.bisect_right(names, marker))
            if delimiter and marker.startswith(prefix):
                idx = marker.find(delimiter, len(prefix))
                if idx >= 0:  # resume after a CommonPrefix
                    rolled = marker[: idx + len(delimiter)]
                    while i < len(names) and names[i].startswith(rolled):
                        i += 1
        contents = []
        prefixes = []
        truncated = False
        last = None
        while i < len(names):
            name = names[i]
            if not name.startswith(prefix):
                break
            if delimiter:
                idx = name.find(delimiter, len(prefix))
                if idx >= 0:
                    rolled = name[: idx + len(delimiter)]
                    if len(contents) + len(prefixes) >= max_keys:
                        truncated = True
                        break
                    prefixes.append(rolled)
                    last = rolled
                    i = bisect.bisect_left(names, rolled + "\U0010ffff", i)
                    while i < len(names) and names[i].startswith(rolled):
                        i += 1
                    continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            contents.append(latest[name])
            last = name
            i += 1

        def enc(text: str) -> str:
            if encoding == "url":
                return quote(text.encode("utf-8", "surrogateescape"))
            return xml_escape(text)

        out = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult>',
            f"<Name>{xml_escape(req.bucket)}</Name>",
        ]
        if encoding:
            out.append(f"<EncodingType>{encoding}</EncodingType>")
        out.append(f"<Prefix>{enc(prefix)}</Prefix>")
        out.append(f"<Marker>{enc(marker)}</Marker>")
        out.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            out.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        out.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated and last is not None:
            out.append(f"<NextMarker>{enc(last)}</NextMarker>")
        for key in contents:
            etag = key.etag if key.etag.startswith('"') else f'"{key.etag}"'
            out.append(
                "<Contents>"
                f"<Key>{enc(key.name)}</Key>"
                f"<LastModified>{key.last_modified_ISO8601}</LastModified>"
                f"<ETag>{xml_escape(etag)}</ETag>"
                f"<Size>{key.size}</Size>"
                f"<Owner><ID>{self.appid}</ID><DisplayName>{self.appid}</DisplayName>"
                "</Owner>"
                f"<StorageClass>{xml_escape(key.storage_class or 'STANDARD')}"
                "</StorageClass>"
                "</Contents>"
            )
        for p in prefixes:
            out.append(f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>")
        out.append("</ListBucketResult>")
        body = "".join(out).encode("utf-8")
        headers = [
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
        ]
        return 200, headers, body, None


def _truncated(data: bytes, reset: bool):
    if data:
        yield data
    raise _CloseConnection(reset=reset)


# ---------------------------------------------------------------------------
# Child process entry point
# ---------------------------------------------------------------------------

DEFAULT_SECRET_ID = "AKIDcosgwTESTsecretid0000000000000000"
DEFAULT_SECRET_KEY = "cosgwTESTsecretkey00000000000000"
DEFAULT_REGION = "ap-guangzhou"
DEFAULT_APPID = "1250000000"
_PORT_LINE = "COSSERVER-PORT"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake COS server (moto behind)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret-id", default=DEFAULT_SECRET_ID)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--appid", default=DEFAULT_APPID)
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument(
        "--log-file", help="removed at exit (the parent's stderr capture)"
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin closes (how the parent keeps no orphans)",
    )
    args = parser.parse_args(argv)

    # moto reads these at import time.
    os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", "1048576")
    os.environ.pop("S3_IGNORE_SUBDOMAIN_BUCKETNAME", None)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")

    app = CosAdapter(args.secret_id, args.secret_key, args.appid, args.region)
    server = _Server((args.host, args.port), app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write(f"{_PORT_LINE} {server.server_address[1]}\n")
    sys.stdout.flush()
    # Anything printed later (moto prints sometimes) goes to stderr, never
    # into a pipe that nobody reads.
    os.dup2(2, 1)

    if args.exit_on_stdin_eof:
        stdin = sys.stdin.buffer
        while stdin.read(65536):
            pass
        if args.log_file:
            try:
                os.unlink(args.log_file)
            except OSError:
                pass
        os._exit(0)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------
# Parent-side API
# ---------------------------------------------------------------------------


class CosTestServer:
    """A fake COS server running in a child process."""

    def __init__(
        self,
        secret_id: str = DEFAULT_SECRET_ID,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = DEFAULT_REGION,
        appid: str = DEFAULT_APPID,
        host: str = "127.0.0.1",
        startup_timeout: float = 60.0,
    ):
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.region = region
        self.appid = appid
        self.host = host
        self.startup_timeout = startup_timeout
        self.port: int = 0
        self.endpoint_url: str = ""
        self.pid: int | None = None
        self.log_path: str | None = None
        self._proc: subprocess.Popen | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        env = dict(os.environ)
        env["S3_UPLOAD_PART_MIN_SIZE"] = "1048576"
        env.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(16 << 20))
        env.pop("S3_IGNORE_SUBDOMAIN_BUCKETNAME", None)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--host",
            self.host,
            "--port",
            "0",
            "--secret-id",
            self.secret_id,
            "--secret-key",
            self.secret_key,
            "--appid",
            self.appid,
            "--region",
            self.region,
            "--exit-on-stdin-eof",
        ]
        fd, self.log_path = tempfile.mkstemp(prefix="cosserver-", suffix=".log")
        cmd += ["--log-file", self.log_path]
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=os.path.dirname(os.path.abspath(__file__)),
                close_fds=True,
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        try:
            self.port = self._read_port(deadline)
            self.endpoint_url = f"http://{self.host}:{self.port}"
            while True:
                try:
                    if self._control("GET", "/__test__/ping", timeout=2) == "ok":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("fake COS server did not answer its ping")
                time.sleep(0.05)
        except Exception as exc:
            log_text = self._log_tail()
            self.stop()
            raise RuntimeError(
                f"fake COS server failed to start ({exc}):\n{log_text}"
            ) from None
        except BaseException:
            self.stop()
            raise

    def _read_port(self, deadline: float) -> int:
        out = self._proc.stdout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("timed out waiting for the fake COS server")
            ready, _, _ = select.select([out], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    raise RuntimeError("fake COS server exited during start")
                buf += chunk
            elif self._proc.poll() is not None:
                raise RuntimeError("fake COS server exited during start")
        for line in buf.decode("utf-8", "replace").splitlines():
            if line.startswith(_PORT_LINE + " "):
                return int(line.split()[1])
        raise RuntimeError(f"unexpected output from the fake COS server: {buf!r}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-4000:].decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # the child exits at EOF
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()  # by PID (Popen.kill is os.kill(pid, SIGKILL))
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> CosTestServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -----------------------------------------------------------

    def cos_config(self, **overrides):
        from qcloud_cos import CosConfig

        kwargs = dict(
            Region=self.region,
            SecretId=self.secret_id,
            SecretKey=self.secret_key,
            Scheme="http",
            IP=self.host,
            Port=self.port,
        )
        kwargs.update(overrides)
        return CosConfig(**kwargs)

    def cos_client(self, retry: int = 3, session=None, **config_overrides):
        """A CosS3Client for this server with its own requests session."""
        import requests
        from qcloud_cos import CosS3Client

        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
            session.mount("http://", adapter)
        return CosS3Client(
            self.cos_config(**config_overrides), retry=retry, session=session
        )

    def boto3_client(self):
        """An S3 client talking straight to moto behind the adapter."""
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=config,
        )

    # -- store helpers -----------------------------------------------------

    def create_bucket(self, short_name: str) -> str:
        bucket = (
            short_name
            if short_name.endswith("-" + self.appid)
            else f"{short_name}-{self.appid}"
        )
        from qcloud_cos import CosServiceError

        try:
            self.cos_client(retry=0).create_bucket(Bucket=bucket)
        except CosServiceError as exc:
            if exc.get_error_code() not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        return bucket

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.boto3_client()
        out: list[str] = []
        for page in client.get_paginator("list_objects").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(out)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.boto3_client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def pending_uploads(self, bucket: str) -> list[tuple[str, str]]:
        client = self.boto3_client()
        out = []
        kwargs: dict = {"Bucket": bucket}
        while True:
            page = client.list_multipart_uploads(**kwargs)
            out.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
            if not page.get("IsTruncated"):
                break
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
        return sorted(out)

    # -- faults and stats --------------------------------------------------

    def _control(self, method: str, path: str, payload=None, timeout: float = 10):
        import urllib.request

        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}", data=data, method=method
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def inject(self, kind: str, **params) -> None:
        """Arm a fault; see the module docstring for kinds and params."""
        import urllib.error

        try:
            self._control("POST", "/__test__/faults", {"kind": kind, **params})
        except urllib.error.HTTPError as exc:
            raise ValueError(exc.read().decode("utf-8", "replace")) from None

    def faults(self) -> list[dict]:
        return self._control("GET", "/__test__/faults")

    def reset_faults(self) -> None:
        self._control("POST", "/__test__/reset", {})

    def stats(self) -> dict[str, int]:
        return self._control("GET", "/__test__/stats")

    def reset_stats(self) -> None:
        self._control("POST", "/__test__/reset-stats", {})


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: a store that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_shared: CosTestServer | None = None
_shared_lock = threading.Lock()


def shared_server() -> CosTestServer:
    """One started server per test process, stopped at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            server = CosTestServer()
            server.start()
            atexit.register(server.stop)
            _shared = server
        return _shared


if __name__ == "__main__":
    main()
