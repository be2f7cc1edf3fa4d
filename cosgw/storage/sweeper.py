"""
Multipart uploads nobody will finish cost storage and are invisible: a
gateway that crashed mid-upload leaves them, and so does one whose abort
request failed.  The sweeper aborts them, in every store, at start and then
periodically, never touching an upload this gateway is still writing.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.interfaces import IObjectStore, StoreUnavailable

log = Logger()


class UploadSweeper(Service):
    """
    Aborts multipart uploads that nobody will finish: those initiated more
    than C{max_age} seconds ago, in every store, at start and then every
    C{interval} seconds.  A gateway that crashed mid-upload leaves such
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
                if (
                    now - upload.initiated < self.max_age
                    or upload.upload_id in self.active
                ):
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
                    "storage {name}: aborted the stale upload of {key} started "
                    "{age:.0f}s ago",
                    name=name,
                    key=upload.key,
                    age=now - upload.initiated,
                )
        return aborted
