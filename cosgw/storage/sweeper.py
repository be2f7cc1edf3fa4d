"""
Multipart uploads nobody will finish cost storage and are invisible: a
gateway that crashed mid-upload leaves them, and so does one whose abort
request failed.  The sweeper aborts them, in every store, at start and then
periodically, never touching an upload this gateway is still writing.

Several gateways (replicas behind a balancer) may share a bucket, and one
cannot know what the others write.  An upload's age is therefore measured
from the last sign of life the store itself keeps: the newest of its
start (C{Initiated}) and its parts (C{LastModified}, one LIST PARTS for
each upload begun more than C{max_age} ago).  An upload another gateway is
writing stores a part at least every time its client sends a part's
worth, so it is never stale while C{max_age} is longer than the time one
part takes to arrive; one resumed after an interruption is young again
from its first new part.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore, NoSuchUpload, PendingUpload, StoreUnavailable

log = Logger()


class UploadSweeper(Service):
    """
    Aborts multipart uploads that nobody will finish: those that stored
    nothing (neither began nor got a part) for C{max_age} seconds, in every
    store, at start and then every C{interval} seconds.  A gateway that crashed mid-upload leaves such
    uploads behind (their parts cost storage and are invisible); so does one
    whose abort request failed.
    """

    def __init__(
        self,
        stores: dict[str, IObjectStore],
        max_age: float,
        clock: Any,
        interval: float = 3600,
        active: Optional[Container[str]] = None,
        swept: Optional[Callable[[str], None]] = None,
    ) -> None:
        """
        @param active: The uploads this gateway is writing (an
            L{UploadRegistry}): never swept, however old (a resumed upload
            keeps the date it was begun).
        @param swept: called with the id of each upload aborted (the
            registry's C{gone}), so that quotas stop counting kept parts.
        """
        self.active = active if active is not None else ()
        self.swept = swept
        self.stores = stores
        self.max_age = max_age
        self.clock = clock
        self.interval = interval
        self._loop: Optional[LoopingCall] = None
        #: Fires with the number of uploads the latest sweep aborted.
        self.last_sweep: Optional[Deferred[int]] = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self._sweep_logged)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _sweep_logged(self) -> Deferred[int]:
        # A failed sweep is logged; the loop must go on (the store may be
        # back in an hour).
        d = ensureDeferred(self.sweep())

        def failed(failure: Failure) -> int:
            if failure.check(StoreUnavailable):
                # The store is down or busy: expected, and the message says
                # all; the traceback would say nothing more.
                log.warn(
                    "sweeping stale uploads: {error}",
                    error=failure.getErrorMessage(),
                )
            else:
                log.failure("sweeping stale uploads", failure)
            return 0

        d.addErrback(failed)
        done: Deferred[int] = Deferred()

        def report(count: int) -> int:
            done.callback(count)
            return count

        d.addCallback(report)
        self.last_sweep = done
        return d

    async def sweep(self) -> int:
        """
        @return: How many uploads were aborted.  Failures to abort one are
            logged and the sweep goes on with the next.
        """
        aborted = 0
        now = self.clock.seconds()
        for name, store in self.stores.items():
            for upload in await store.list_multipart(""):
                age = await self._age(store, upload, now)
                if age is None:
                    continue
                try:
                    await store.abort_multipart(upload.key, upload.upload_id)
                except StoreUnavailable as e:
                    log.warn(
                        "aborting stale upload {upload_id} of {key}: {error}",
                        upload_id=upload.upload_id,
                        key=upload.key,
                        error=str(e),
                    )
                    continue
                except Exception:
                    log.failure(
                        "aborting stale upload {upload_id} of {key}",
                        upload_id=upload.upload_id,
                        key=upload.key,
                    )
                    continue
                aborted += 1
                if self.swept is not None:
                    self.swept(upload.upload_id)
                log.info(
                    "storage {name}: aborted the stale upload of {key}: nothing "
                    "stored for {age:.0f}s",
                    name=name,
                    key=upload.key,
                    age=age,
                )
        return aborted

    async def _age(
        self, store: IObjectStore, upload: PendingUpload, now: float
    ) -> Optional[float]:
        """
        Seconds since C{upload} last stored anything, when that is at least
        C{max_age} (it is stale); None while it may be in use: written here,
        begun or given a part within C{max_age}.  Only uploads begun longer
        ago than that cost a LIST PARTS.
        """
        if upload.upload_id in self.active or now - upload.initiated < self.max_age:
            return None
        try:
            parts = await store.list_parts(upload.key, upload.upload_id)
        except NoSuchUpload:
            return None  # finished or aborted meanwhile
        newest = max([upload.initiated, *(p.mtime for p in parts)])
        age = now - newest
        return age if age >= self.max_age else None
