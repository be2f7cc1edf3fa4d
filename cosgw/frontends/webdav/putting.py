"""
A PUT's body, streamed into the file system's upload as it arrives.

Twisted reads a whole request body into a buffer (memory, or a temporary
file past 100 kB) before the resource sees the request.  A PUT here takes
the body's place instead (L{PutBody}, from the request's C{gotLength}, as
soon as the headers are in): it logs in and opens the upload at once, and
each piece of the body is written into the upload as the channel reads it:

  1. While the login and the open are under way, the socket is not read
     (the channel's input is held); what one read already brought waits
     in a short list.  A client that sent C{Expect: 100-continue} is told
     to go on only now, once the PUT may be stored.
  2. Once open, the upload is the consumer of the connection: the upload
     pauses it (the input held) while its parts in flight are full or the
     user is over their rate, so memory stays (parts in flight + 1) x part
     size whatever the file size and the client's speed.
  3. When the body is complete, Twisted hands the request to the resource,
     which commits the upload and answers 201 or 204 only once the store
     confirmed it (L{PutBody.commit}).

If the connection is cut before the body is complete, the upload is
aborted: nothing appears in the store (a PUT has no resume).  If the open
fails (no login, no permission, no parent, a lock), or the store fails
while the body arrives, the answer is sent at once and the connection
closed: reading gigabytes only to refuse them would cost the client and
the gateway for nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cosgw.interfaces import IUpload, ObjectInfo

if TYPE_CHECKING:
    from cosgw.frontends.webdav.channel import DAVChannel, DAVRequest

__all__ = ["PutBody"]

log = Logger(namespace="cosgw.webdav")


@implementer(IPushProducer)
class _Input:
    """The connection as the upload's producer: pausing holds its input."""

    def __init__(self, body: PutBody) -> None:
        self._body = body

    def pauseProducing(self) -> None:
        self._body.channel.hold_input(self, True)

    def resumeProducing(self) -> None:
        self._body.channel.hold_input(self, False)

    def stopProducing(self) -> None:
        # The upload failed on the store's side: its commit says how.
        self._body.channel.hold_input(self, False)
        self._body.store_failed()


class PutBody:
    """
    The C{content} of a PUT request; see the module.

    @ivar opened: fires once the open is over: with what the resource
        needs to answer, or None when there is no upload (L{error} says
        why, or the client went away).
    """

    def __init__(
        self,
        request: DAVRequest,
        length: Optional[int],
        begin: Callable[[DAVRequest, Optional[int]], Awaitable[tuple[IUpload, Any]]],
        status_for: Callable[[BaseException], tuple[int, str]],
        size_hint: Optional[int] = None,
    ) -> None:
        """
        @param length: the body's Content-Length; None when chunked.
        @param begin: logs the request in and opens its upload (given the
            size hint): fires with (the upload, what the resource needs to
            answer).
        @param status_for: the status and text an error is answered with.
        @param size_hint: the file's size as the client announced it, if
            not by Content-Length: never taken as the body's end.
        """
        self.request = request
        self.channel: DAVChannel = request.channel
        self.length = length
        self.size_hint = length if size_hint is None else size_hint
        self.received = 0
        self.upload: Optional[IUpload] = None
        self.answer: Any = None
        self.error: Optional[BaseException] = None
        self.complete = False
        self.gone = False
        self._pending: list[bytes] = []
        #: The client waits for "100 Continue" before sending the body.
        self._continue = False
        self._status_for = status_for
        self._input = _Input(self)
        self.channel.hold_input(self, True)
        self.opened: Deferred[Any] = ensureDeferred(self._open(begin))

    async def _open(
        self,
        begin: Callable[[DAVRequest, Optional[int]], Awaitable[tuple[IUpload, Any]]],
    ) -> Any:
        try:
            upload, answer = await begin(self.request, self.size_hint)
        except Exception as e:
            self._refused(e)
            return None
        if self.gone:
            await upload.abort("the client went away")
            return None
        self.upload, self.answer = upload, answer
        upload.registerProducer(self._input, True)
        pending, self._pending = self._pending, []
        for data in pending:
            upload.write(data)
        self.channel.hold_input(self, False)
        if self._continue:
            self._continue = False
            if not self.complete:
                self.channel.send_continue()
        return answer

    def expect_continue(self) -> None:
        """The client sent C{Expect: 100-continue}: answer it once open."""
        if self.upload is not None:
            self.channel.send_continue()
        elif self.error is None and not self.gone:
            self._continue = True

    def _refused(self, error: BaseException) -> None:
        """No upload: drop the body; answer now unless it is all in."""
        self.error = error
        self._pending = []
        self.channel.hold_input(self, False)
        if not self.complete and not self.gone:
            status, text = self._status_for(error)
            headers = getattr(error, "headers", None)
            self.channel.close_with(status, text, f"PUT refused: {text}", headers)

    # -- what Twisted's request does with its content -------------------------

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.error is not None or self.gone:
            return
        if self.upload is None:
            self._pending.append(data)
        else:
            self.upload.write(data)
        if self.length is not None and self.received >= self.length:
            self.complete = True

    def tell(self) -> int:
        return self.received

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass

    # -- the end ----------------------------------------------------------------

    def store_failed(self) -> None:
        """
        The upload failed while its body arrives: answer with its error now
        (the commit gives it) and close, rather than read the rest.
        """
        if self.complete or self.gone or self.error is not None:
            return
        upload = self.upload
        assert upload is not None
        self.error = RuntimeError("the upload failed")

        def answer(result: Any) -> None:
            if isinstance(result, Failure) and result.value is not None:
                status, text = self._status_for(result.value)
            else:
                status, text = 500, "the upload failed"
            self.channel.close_with(status, text, f"PUT failed: {text}")

        ensureDeferred(self._commit_failed(upload)).addBoth(answer)

    def _unregister(self, upload: IUpload) -> None:
        """The upload stops consuming: whatever pause it asked for ends."""
        upload.unregisterProducer()
        self.channel.hold_input(self._input, False)

    async def _commit_failed(self, upload: IUpload) -> ObjectInfo:
        self._unregister(upload)
        return await upload.commit()

    async def commit(self) -> ObjectInfo:
        """
        The body is complete: store the file.

        @return: the stored object, once the store confirmed it.
        @raise Exception: the open's or the commit's error.
        """
        self.complete = True
        if self.error is not None:
            raise self.error
        await self.opened
        error = self.error
        if error is not None:
            raise error
        upload = self.upload
        if upload is None:
            raise ConnectionError("the client went away")
        self._unregister(upload)
        return await upload.commit()

    def connection_lost(self, reason: Failure) -> None:
        """
        The connection ended (the request's C{connectionLost}): an upload
        whose body was not complete is aborted, so nothing is stored.
        """
        self.gone = True
        self.channel.hold_input(self, False)
        if self.complete:
            return
        self._pending = []
        upload = self.upload
        if upload is not None:
            self._unregister(upload)
            upload.abort("the client went away before the end of the body")
