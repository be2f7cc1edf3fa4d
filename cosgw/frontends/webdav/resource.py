"""
The WebDAV server: one twisted.web resource for every path, which logs
the request in (L{cosgw.frontends.webdav.auth}), turns its path into the
segments of the user's file system and runs its method, every method a
coroutine over the file system's Deferreds, so nothing blocks the reactor.

Why our own resource rather than WsgiDAV hosted in twisted.web: WSGI is
synchronous, so every request would hold a thread of the pool for its
whole life (a slow client's GET, a 1 GiB PUT), the request body would come
through WSGI's blocking C{wsgi.input}, and every file system call would
need a bridge back to the reactor.  Our file system is already Deferred
based and already streams with backpressure; the protocol on top of it is
this package.

OPTIONS, GET, HEAD, PUT, DELETE and MKCOL are here (a collection's page
for browsers in L{cosgw.frontends.webdav.index}); PROPFIND and
PROPPATCH in L{cosgw.frontends.webdav.properties}, COPY and MOVE in
L{cosgw.frontends.webdav.copymove}, LOCK and UNLOCK in
L{cosgw.frontends.webdav.locking}.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from cosgw.escaping import for_log
from cosgw.frontends.webdav import copymove, index, locking, properties
from cosgw.frontends.webdav.answers import (
    Call,
    HTTPError,
    audit_status,
    respond,
    status_for,
)
from cosgw.frontends.webdav.auth import Authenticator
from cosgw.frontends.webdav.channel import DAVRequest
from cosgw.frontends.webdav.headers import (
    BadHeader,
    ByteRange,
    Unsatisfiable,
    entity_tag,
    http_date,
    parse_date,
    parse_range,
    path_segments,
    range_applies,
    request_path,
    satisfy,
)
from cosgw.frontends.webdav.locks import DeadProperties, LockTable
from cosgw.frontends.webdav.putting import PutBody
from cosgw.interfaces import Entry, IUpload
from cosgw.vfs import IsADirectory, NotFound, TransferStopped

__all__ = ["DAVResource", "DAVServer"]

log = Logger(namespace="cosgw.webdav")

ALLOW = (
    "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH,"
    " LOCK, UNLOCK"
)


class DAVServer:
    """What every WebDAV listener of the gateway shares; see the module."""

    def __init__(self, authenticator: Authenticator, clock: IReactorTime) -> None:
        self.auth = authenticator
        self.clock = clock
        self.locks = LockTable(clock)
        self.properties = DeadProperties()
        self._methods: dict[bytes, Callable[[Call], Awaitable[None]]] = {
            b"GET": self.get,
            b"HEAD": self.get,
            b"PUT": self.put,
            b"DELETE": self.delete,
            b"MKCOL": self.mkcol,
            b"PROPFIND": properties.propfind,
            b"PROPPATCH": properties.proppatch,
            b"COPY": copymove.copy,
            b"MOVE": copymove.move,
            b"LOCK": locking.lock,
            b"UNLOCK": locking.unlock,
        }

    status_of = staticmethod(audit_status)

    # -- the request ----------------------------------------------------------

    def handle(self, request: DAVRequest) -> None:
        """Serve C{request} (from the resource's render)."""
        request.setHeader(b"Server", b"cosgw")
        if request.method == b"PUT" and isinstance(request.content, PutBody):
            # Before anything yields: the body is complete now.
            request.content.complete = True
        d = ensureDeferred(self._serve(request))
        d.addErrback(self._failed, request)

    async def _serve(self, request: DAVRequest) -> None:
        try:
            if request.method == b"OPTIONS":
                self.options(request)
                return
            method = self._methods.get(request.method)
            if method is None:
                raise HTTPError(501, "method not implemented", {"Allow": ALLOW})
            if request.method == b"PUT":
                call = await self._put_call(request)
            else:
                call = await self._call(request)
            await method(call)
        except Exception as e:
            self._answer_error(request, e)

    async def _call(self, request: DAVRequest) -> Call:
        channel = request.channel
        fs = await self.auth.login(channel, request.getHeader(b"authorization"))
        try:
            path = (request.path or request.target).decode("ascii")
        except UnicodeDecodeError:
            raise BadHeader("the path is not ASCII (percent-encode it)") from None
        return Call(self, request, fs, path_segments(request_path(path)))

    def _answer_error(self, request: DAVRequest, error: BaseException) -> None:
        status, text = status_for(error)
        if status == 500:
            log.failure(
                "WebDAV {method} {path} failed",
                Failure(error),
                method=request.method.decode("latin-1"),
                path=for_log(request.path.decode("latin-1")),
            )
        if request.startedWriting:
            # A multistatus or a file already on its way: only the cut
            # tells the client it is not whole.
            if request.channel is not None:
                request.channel.tcp.abortConnection()
            return
        headers = dict(getattr(error, "headers", {}) or {})
        body = getattr(error, "body", None)
        respond(request, status, text, headers, body)

    def _failed(self, failure: Failure, request: DAVRequest) -> None:
        log.failure("WebDAV request failed", failure)
        if not request.finished and request.channel is not None:
            request.channel.tcp.abortConnection()

    def options(self, request: DAVRequest) -> None:
        """OPTIONS: no login needed; what Windows and macOS probe first."""
        respond(
            request,
            200,
            headers={
                "DAV": "1, 2",
                "MS-Author-Via": "DAV",
                "Allow": ALLOW,
                "Accept-Ranges": "bytes",
            },
        )

    # -- GET and HEAD -----------------------------------------------------------

    async def get(self, call: Call) -> None:
        """
        GET: a file streamed from the store with backpressure (one byte
        range: 206, 416; If-Range honoured), or a collection's page
        (L{index}).  HEAD: the same headers, from a stat.  The conditions
        (If-Match, If-None-Match, If-Modified-Since) are checked on a stat
        before any GET of the store, so a 304 costs no download.
        """
        request = call.request
        conditional = any(
            call.header(h) is not None
            for h in ("If-Match", "If-None-Match", "If-Modified-Since")
        )
        if request.method == b"HEAD" or conditional:
            entry = await call.fs.stat(call.segments)
            if not self._preconditions(call, entry):
                return
            if request.method == b"HEAD":
                self._head(request, entry)
                return
        text = call.header("Range")
        spec = parse_range(text) if text is not None else None
        try:
            reader, chosen = await self._open_ranged(call, spec)
        except IsADirectory:
            await index.send_index(call, await call.fs.stat(call.segments))
            return
        try:
            await self._send(call, reader, chosen)
        finally:
            reader.close()

    def _preconditions(self, call: Call, entry: Entry) -> bool:
        """
        RFC 9110 section 13.2.2's order: If-Match (412), then If-None-Match
        or, without it, If-Modified-Since (304, answered here: False).
        """
        tag = entity_tag(entry)
        if not entry.is_dir and not _match(call.header("If-Match"), tag):
            raise HTTPError(412, "the file's entity tag does not match")
        none_match = call.header("If-None-Match")
        if none_match is not None:
            unchanged = not entry.is_dir and _none_match(none_match, tag)
        else:
            unchanged = _not_modified_since(call.header("If-Modified-Since"), entry)
        if unchanged:
            headers = {"Last-Modified": http_date(entry.mtime)}
            if not entry.is_dir:
                headers["ETag"] = tag
            respond(call.request, 304, headers=headers)
        return not unchanged

    def _head(self, request: DAVRequest, entry: Entry) -> None:
        if entry.is_dir:
            index.page_headers(request, entry)
        else:
            self._file_headers(request, entry)
            request.setHeader(b"Content-Length", b"%d" % entry.size)
        request.finish()

    async def _open_ranged(
        self, call: Call, spec: Optional[tuple[Optional[int], Optional[int]]]
    ) -> tuple[Any, Optional[ByteRange]]:
        """
        The reader of the range, or of the whole file when there is no
        range or If-Range names another version (RFC 9110 section 13.1.5:
        the range is served only for the version the client holds).
        """
        if_range = call.header("If-Range")
        try:
            reader, chosen = await self._open(call, spec)
        except HTTPError as e:
            if e.status != 416 or if_range is None:
                raise
            reader, chosen = await self._open(call, None)
            if _range_holds(if_range, reader.entry):
                reader.close()
                raise
            return reader, None
        if chosen is not None and not _range_holds(if_range, reader.entry):
            reader.close()
            return await self._open(call, None)
        return reader, chosen

    async def _open(
        self, call: Call, spec: Optional[tuple[Optional[int], Optional[int]]]
    ) -> tuple[Any, Optional[ByteRange]]:
        """The reader of the file (of its range), in one GET when it can."""
        fs = call.fs
        if spec is None:
            return await fs.open_reader(call.segments), None
        first, last = spec
        if first is None:
            size = (await fs.stat(call.segments)).size
            try:
                chosen = satisfy(spec, size)
            except Unsatisfiable:
                raise _unsatisfiable(size) from None
            reader = await fs.open_reader(call.segments, chosen.start, chosen.end + 1)
            return reader, chosen
        end = None if last is None else last + 1
        try:
            reader = await fs.open_reader(call.segments, first, end)
        except Exception as e:
            if status_for(e)[0] == 416:
                size = (await fs.stat(call.segments)).size
                raise _unsatisfiable(size) from None
            raise
        if reader.length == 0:
            reader.close()
            raise _unsatisfiable(reader.size)
        return reader, ByteRange(first, first + reader.length - 1, reader.size)

    async def _send(self, call: Call, reader: Any, chosen: Optional[ByteRange]) -> None:
        request = call.request
        self._file_headers(request, reader.entry)
        if chosen is not None:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", chosen.content_range().encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % reader.length)
        try:
            await reader.send(request)
        except TransferStopped:
            return
        request.finish()

    def _file_headers(self, request: DAVRequest, entry: Entry) -> None:
        """
        A file's headers, GET's and HEAD's alike.  A file is shown in a
        sandbox (no script of an uploaded HTML file runs with the
        gateway's origin, where the browser holds the user's password),
        its type never sniffed.
        """
        request.setHeader(b"Last-Modified", http_date(entry.mtime).encode("ascii"))
        request.setHeader(b"ETag", entity_tag(entry).encode("ascii"))
        request.setHeader(b"Accept-Ranges", b"bytes")
        kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
        request.setHeader(b"Content-Type", kind.encode("ascii"))
        request.setHeader(b"Content-Security-Policy", b"sandbox")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")

    # -- PUT ------------------------------------------------------------------------

    def put_body(self, request: DAVRequest, length: Optional[int]) -> PutBody:
        """
        A PUT's body, from the request's C{gotLength} (L{PutBody}).  A
        chunked body's size is unknown, but macOS Finder says it in
        C{X-Expected-Entity-Length}: the upload's size hint (its parts).
        """
        hint = length
        expected = request.getHeader(b"x-expected-entity-length")
        if length is None and expected is not None and expected.strip().isdigit():
            hint = int(expected)
        return PutBody(request, length, self._open_upload, status_for, hint)

    async def _open_upload(
        self, request: DAVRequest, length: Optional[int]
    ) -> tuple[IUpload, Any]:
        """Log the PUT in, check it, open its upload: (upload, its call, existed)."""
        call = await self._call(request)
        await locking.check_write(call)
        try:
            existing = await call.fs.stat(call.segments)
        except NotFound:
            existing = None
        if existing is not None and existing.is_dir:
            raise HTTPError(405, "a collection is there")
        tag = entity_tag(existing) if existing is not None else None
        if call.header("If-Match") is not None and (
            tag is None or not _match(call.header("If-Match"), tag)
        ):
            raise HTTPError(412, "the file's entity tag does not match")
        if tag is not None and _none_match(call.header("If-None-Match"), tag):
            raise HTTPError(412, "the file exists")
        try:
            upload = await call.fs.open_upload(call.segments, size_hint=length)
        except NotFound:
            raise HTTPError(409, "the parent collection does not exist") from None
        return upload, (call, existing is not None)

    async def _put_call(self, request: DAVRequest) -> Call:
        body = request.content
        assert isinstance(body, PutBody)
        await body.opened
        if body.error is not None:
            raise body.error
        if body.answer is None:
            raise ConnectionError("the client went away")
        call: Call = body.answer[0]
        return call

    async def put(self, call: Call) -> None:
        """PUT: 201 (new) or 204 (replaced) once the store confirmed."""
        body = call.request.content
        assert isinstance(body, PutBody)
        info = await body.commit()
        tag = entity_tag(Entry(call.segments[-1], False, info.size, info.mtime))
        call.server.properties.drop(call.rid())
        respond(call.request, 204 if body.answer[1] else 201, headers={"ETag": tag})

    # -- DELETE, MKCOL ----------------------------------------------------------------

    async def delete(self, call: Call) -> None:
        """DELETE a file, or a collection and everything in it (207 on a partial failure)."""
        if not call.segments:
            raise HTTPError(403, "the home collection cannot be deleted")
        entry = await call.fs.stat(call.segments)
        await locking.check_write(call, members=entry.is_dir)
        failures = await copymove.delete_tree(call, call.segments, entry.is_dir)
        if failures:
            copymove.respond_failures(call, failures)
            return
        respond(call.request, 204)

    async def mkcol(self, call: Call) -> None:
        """MKCOL: 201; 405 if something is there, 409 without a parent."""
        if call.body():
            raise HTTPError(415, "MKCOL takes no body")
        await locking.check_write(call)
        try:
            await call.fs.mkdir(call.segments)
        except NotFound:
            raise HTTPError(409, "the parent collection does not exist") from None
        respond(call.request, 201)


def _unsatisfiable(size: int) -> HTTPError:
    return HTTPError(
        416, "the range holds no byte of the file", {"Content-Range": f"bytes */{size}"}
    )


def _range_holds(if_range: Optional[str], entry: Entry) -> bool:
    return range_applies(if_range, entity_tag(entry), entry.mtime)


def _not_modified_since(text: Optional[str], entry: Entry) -> bool:
    """If-Modified-Since names a time at or after the resource's."""
    if text is None:
        return False
    try:
        return int(entry.mtime) <= int(parse_date(text))
    except BadHeader:
        return False  # an invalid date is ignored (RFC 9110 13.1.3)


def _tags(text: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in text.split(",")]


def _match(text: Optional[str], tag: str) -> bool:
    """If-Match holds (absent: it does)."""
    if text is None:
        return True
    tags = _tags(text)
    return "*" in tags or tag in tags


def _none_match(text: Optional[str], tag: str) -> bool:
    """If-None-Match names this tag (or *): the condition fails."""
    if text is None:
        return False
    tags = _tags(text)
    return "*" in tags or tag in tags


class DAVResource(Resource):
    """Every path of a WebDAV listener: handed to the L{DAVServer}."""

    isLeaf = True

    def __init__(self, server: DAVServer) -> None:
        super().__init__()
        self.dav = server

    def render(self, request: Any) -> Any:
        self.dav.handle(request)
        return NOT_DONE_YET

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self
