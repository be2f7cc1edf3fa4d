"""
The audit side of a user's file system (L{ObjectFileSystem}): the events
of its changes, and the records of the transfers it hands out, all through
the client's session (L{cosgw.audit.Session}), none without one.

An action's event is emitted once the store answered, with the outcome
(the L{FSError}, which the session's frontend maps to the reply its
client got).  A transfer is recorded from its open (L{Meter}); an open
that fails is its transfer's event at once.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from cosgw.audit import Session
from cosgw.vfs.errors import FSError
from cosgw.vfs.metering import Meter
from cosgw.vfs.names import display

T = TypeVar("T")


class Auditing:
    """What L{ObjectFileSystem} records, as a mixin of it."""

    session: Optional[Session]

    if TYPE_CHECKING:
        # ObjectFileSystem's, which this mixin uses.

        def require(self, permission: str, segments: Sequence[str]) -> None: ...

        def _run(
            self, segments: Sequence[str], f: Callable[[], Coroutine[Any, Any, T]]
        ) -> Deferred[T]: ...

    def emit(
        self,
        event: str,
        segments: Sequence[str],
        error: Optional[BaseException] = None,
        **fields: Any,
    ) -> None:
        """One audit event about C{segments}; nothing without a session."""
        if self.session is not None:
            self.session.emit(event, error, path=display(segments), **fields)

    def _action(
        self,
        event: str,
        segments: Sequence[str],
        permission: str,
        f: Callable[[], Coroutine[Any, Any, None]],
        **fields: Any,
    ) -> Deferred[None]:
        """
        A change: C{permission} checked, C{f} run, and C{event} emitted
        once the store answered, with the outcome.

        @raise PermissionDenied: at once (after its event), as before.
        """
        try:
            self.require(permission, segments)
        except FSError as e:
            self.emit(event, segments, e, **fields)
            raise
        return self._emitting(self._run(segments, f), event, segments, **fields)

    def _emitting(
        self, d: Deferred[T], event: str, segments: Sequence[str], **fields: Any
    ) -> Deferred[T]:
        """C{d}, emitting C{event} with its outcome when it fires."""
        if self.session is None:
            return d

        def emitted(result: Any) -> Any:
            error = result.value if isinstance(result, Failure) else None
            self.emit(event, segments, error, **fields)
            return result

        return d.addBoth(emitted)

    def now(self) -> float:
        """When an open begins, for its transfer record (0.0: none kept)."""
        return self.session.table.clock.seconds() if self.session else 0.0

    def meter(
        self,
        direction: str,
        segments: Sequence[str],
        size: Optional[int] = None,
        offset: int = 0,
        since: Optional[float] = None,
    ) -> Meter:
        """The record of a transfer handed out, its open begun at C{since}."""
        return Meter(self.session, direction, display(segments), size, offset, since)

    def failed_transfer(
        self,
        direction: str,
        segments: Sequence[str],
        error: Optional[BaseException],
        since: float,
    ) -> None:
        """An open begun at C{since} failed with C{error}: its one event."""
        assert error is not None
        if self.session is not None:
            self.meter(direction, segments, since=since).finish(error)

    def _handing_out(
        self, d: Deferred[T], direction: str, segments: Sequence[str], since: float
    ) -> Deferred[T]:
        """
        An open's Deferred; the object it fires with records itself, a
        failure is the transfer's event.
        """
        if self.session is None:
            return d

        def failed(failure: Failure) -> Failure:
            self.failed_transfer(direction, segments, failure.value, since)
            return failure

        return d.addErrback(failed)
