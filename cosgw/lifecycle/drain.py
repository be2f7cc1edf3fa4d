"""
The drain: how the gateway stops when it is told to (SIGTERM or SIGINT
under twistd, C{cosgw stop} through the admin API, a program that embeds it
calling C{stopService}) without cutting the transfers that run.

The drain is a state table (L{Phase}, L{_NEXT}):

  - SERVING -> DRAINING, at once: C{/readyz} answers 503 (the readiness's
    C{draining}), systemd hears C{STOPPING=1}, every frontend refuses new
    connections with the reason (FTP and implicit FTPS C{421 Shutting
    down}, SSH a DISCONNECT "shutting down") while its listening sockets
    stay open, and every session is told (L{cosgw.audit.Session.drain}):
    idle ones, logged in or not, end at once; busy ones right after their
    transfers (FTP: after the 226, no command starts meanwhile; SFTP: after
    the last CLOSE's reply, no file opens meanwhile).  One log line says
    how many sessions and transfers there are.
  - DRAINING -> FORCING, C{drain_timeout} seconds later, or at a second
    SIGTERM or a SIGINT: what is left is interrupted as a lost connection
    is (FTP uploads kept for a resume, SFTP uploads aborted: nothing
    partial is ever visible), one log line per session.  The sessions get
    L{FORCE_GRACE} seconds to record that (kept parts, aborts); those still
    open then end with the process, as before there was a drain.
  - DRAINING or FORCING -> SETTLING, once the last session is gone: the
    uploads this gateway still writes (a commit, an abort, parts kept)
    settle with the store, for at most L{SETTLE_TIMEOUT} seconds, while
    the reactor and the thread pool still run.
  - SETTLING -> DONE: one log line with the timeline; the gateway's
    services then stop (listeners close, the pool is joined).

Signals.  twistd's own handlers stop the reactor at SIGTERM and SIGINT and
make the process end by that signal afterwards (C{reactor._exitSignal},
re-raised by twistd's runner: exit status -15).  Once the reactor runs,
L{install_signal_handlers} replaces them: the first SIGTERM or SIGINT
begins the drain and stops the reactor, whose "before shutdown" trigger
(the services' C{stopService}) waits for the drain; a later one forces it.
The reactor never records an exit signal, so twistd exits 0, after a drain
that ended by itself and after one a second signal cut short alike: the
stop was orderly either way (every session told, every upload kept or
aborted as documented), and the drain's last log line says what was
interrupted.  systemd counts exit 0 as a clean stop.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from cosgw.audit import Session, SessionTable
from cosgw.escaping import for_log

if TYPE_CHECKING:
    from cosgw.admin.health import Readiness
    from cosgw.service import GatewayService
    from cosgw.systemd import SystemdNotifier
    from cosgw.transfer.registry import UploadRegistry

__all__ = [
    "FORCE_GRACE",
    "REASON",
    "SETTLE_TIMEOUT",
    "Drain",
    "Phase",
    "gateway_drain",
    "install_signal_handlers",
]

log = Logger(namespace="cosgw.lifecycle")

#: What clients are told, and what the sessions' close events say.
REASON = "shutting down"
#: Seconds the sessions interrupted at the timeout get to end.
FORCE_GRACE = 10.0
#: Seconds the uploads still being written get to settle with the store.
SETTLE_TIMEOUT = 10.0
#: Seconds between two looks at the uploads still being written.
SETTLE_POLL = 0.05


class Phase(enum.Enum):
    """Where the drain is (see the module docstring)."""

    SERVING = "serving"
    DRAINING = "draining"
    FORCING = "forcing"
    SETTLING = "settling"
    DONE = "done"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.SERVING: frozenset({Phase.DRAINING}),
    Phase.DRAINING: frozenset({Phase.FORCING, Phase.SETTLING}),
    Phase.FORCING: frozenset({Phase.SETTLING}),
    Phase.SETTLING: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


class Drain:
    """
    One gateway's drain.  L{begin} starts it (once; later calls join it),
    L{force} cuts it short, L{request_stop} also stops the reactor.

    @ivar timeline: seconds from the start of the drain to each of its
        moments (C{forced}, C{empty}: the last session gone, C{done}).
    """

    def __init__(
        self,
        clock: IReactorTime,
        sessions: SessionTable,
        timeout: float,
        *,
        frontends: Iterable[Any] = (),
        readiness: Optional[Readiness] = None,
        notifier: Optional[SystemdNotifier] = None,
        registry: Optional[UploadRegistry] = None,
        stop: Optional[Callable[[], object]] = None,
        force_grace: float = FORCE_GRACE,
        settle_timeout: float = SETTLE_TIMEOUT,
    ) -> None:
        """
        @param timeout: seconds transfers get to finish (drain_timeout).
        @param frontends: each with C{refuse_new(reason)} and C{refused}
            (L{cosgw.frontends.frontend.Frontend}).
        @param readiness: set draining at the start (C{/readyz}).
        @param notifier: told C{STOPPING=1} at the start.
        @param registry: the uploads being written, waited for at the end.
        @param stop: stops the process (the reactor's C{stop}), for
            L{request_stop}.
        """
        self._clock = clock
        self._sessions = sessions
        self.timeout = timeout
        self._frontends = list(frontends)
        self._readiness = readiness
        self._notifier = notifier
        self._registry = registry
        self._stop = stop
        self._force_grace = force_grace
        self._settle_timeout = settle_timeout
        self.phase = Phase.SERVING
        self.cause = ""
        self.started = 0.0
        self.timeline: dict[str, float] = {}
        #: Sessions and transfers when the drain began, sessions forced.
        self.counts = {"sessions": 0, "transfers": 0, "forced": 0}
        self._timer: Optional[IDelayedCall] = None
        self._waiters: list[Deferred[None]] = []
        self._stop_asked = False

    # -- the table ------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise RuntimeError(f"drain: {self.phase.value} -> {phase.value}")
        self.phase = phase
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _mark(self, moment: str) -> float:
        elapsed = round(self._clock.seconds() - self.started, 3)
        self.timeline[moment] = elapsed
        return elapsed

    # -- starting, forcing --------------------------------------------------------

    def begin(self, cause: str) -> Deferred[None]:
        """
        Begin the drain (the first call's C{cause} stands: C{"SIGTERM"},
        C{"cosgw stop by admin ..."}).

        @return: a Deferred that fires with None once the drain is done
            (at once when no session is open and no upload is written).
        """
        d: Deferred[None] = Deferred()
        if self.phase is Phase.DONE:
            d.callback(None)
            return d
        self._waiters.append(d)
        if self.phase is Phase.SERVING:
            self._start(cause)
        return d

    def _start(self, cause: str) -> None:
        self._enter(Phase.DRAINING)
        self.cause = cause
        self.started = self._clock.seconds()
        live = list(self._sessions.sessions.values())
        transfers = sum(len(s.transfers) for s in live)
        self.counts.update(sessions=len(live), transfers=transfers)
        what = f"{len(live)} sessions, {transfers} transfers in progress"
        if self._readiness is not None:
            self._readiness.draining = f"{REASON} ({cause})"
        if self._notifier is not None:
            self._notifier.stopping(f"draining: {what}")
        for frontend in self._frontends:
            frontend.refuse_new(REASON)
        log.info(
            "drain ({cause}): {what}; new connections refused, transfers have"
            " {timeout} s to finish",
            cause=for_log(cause),
            what=what,
            timeout=self.timeout,
        )
        for session in live:
            self._tell(session, now=False)
        if self.timeout > 0:
            self._timer = self._clock.callLater(self.timeout, self.force, "timeout")
        else:
            self.force("drain_timeout 0")
        self._wait_for_sessions()

    def _tell(self, session: Session, now: bool) -> None:
        """One session is told to end; its frontend's failure is logged."""
        try:
            session.drain(REASON, now)
        except Exception:
            log.failure("drain: telling session {session}", session=session.id)

    def force(self, cause: str) -> None:
        """
        Interrupt every session still open (C{cause}: C{"timeout"}, a second
        signal), one log line each.  Does nothing unless draining.
        """
        if self.phase is not Phase.DRAINING:
            return
        self._enter(Phase.FORCING)
        elapsed = self._mark("forced")
        live = list(self._sessions.sessions.values())
        self.counts["forced"] = len(live)
        for session in live:
            log.info(
                "drain: interrupting {protocol} session {session} of {user} at"
                " {client} after {elapsed} s ({cause}): {what}",
                protocol=session.protocol,
                session=session.id,
                user=for_log(session.user or "-"),
                client=f"{session.host}:{session.port}",
                elapsed=elapsed,
                cause=for_log(cause),
                what=_transfers_text(session),
            )
            self._tell(session, now=True)
        self._timer = self._clock.callLater(self._force_grace, self._gave_up)

    def _gave_up(self) -> None:
        """Sessions interrupted at the timeout did not end in time."""
        self._timer = None
        left = len(self._sessions.sessions)
        log.warn(
            "drain: {left} sessions still open {grace} s after they were"
            " interrupted; they end with the process",
            left=left,
            grace=self._force_grace,
        )
        self._settle()

    def _wait_for_sessions(self) -> None:
        empty = self._sessions.when_empty()
        if empty.called:
            self._settle()
            return

        def gone(_: object) -> None:
            # Not inside the last session's connectionLost: a later turn.
            self._clock.callLater(0, self._settle)

        empty.addCallback(gone)

    # -- the end ----------------------------------------------------------------

    def _settle(self) -> None:
        """The sessions are gone: let the uploads still written settle."""
        if self.phase not in (Phase.DRAINING, Phase.FORCING):
            return
        self._enter(Phase.SETTLING)
        if not self._sessions.sessions:
            self._mark("empty")
        deadline = self._clock.seconds() + self._settle_timeout
        self._poll_settled(deadline)

    def _poll_settled(self, deadline: float) -> None:
        self._timer = None
        writing = self._registry.writing if self._registry is not None else 0
        if writing and self._clock.seconds() < deadline:
            self._timer = self._clock.callLater(
                SETTLE_POLL, self._poll_settled, deadline
            )
            return
        if writing:
            log.warn(
                "drain: {count} uploads still settling with the store after"
                " {seconds} s; the process stops without them",
                count=writing,
                seconds=self._settle_timeout,
            )
        self._done()

    def _done(self) -> None:
        self._enter(Phase.DONE)
        total = self._mark("done")
        log.info(
            "drain done in {total} s ({cause}): {timeline}; stopping",
            total=total,
            cause=for_log(self.cause),
            timeline="; ".join(self._timeline_text()),
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _timeline_text(self) -> list[str]:
        """The drain's moments, for its last log line."""
        finished = [
            t for t in self._sessions.finished if t.get("finished", 0) >= self.started
        ]
        ended = "no transfer ended"
        if finished:
            last = max(t["finished"] for t in finished) - self.started
            ended = f"{len(finished)} transfers ended, the last at +{last:.3f} s"
        forced = "no session interrupted"
        if "forced" in self.timeline:
            forced = (
                f"{self.counts['forced']} sessions interrupted at"
                f" +{self.timeline['forced']:.3f} s"
            )
        gone = f"{len(self._sessions.sessions)} sessions left to end with the process"
        if "empty" in self.timeline:
            gone = f"the last session ended at +{self.timeline['empty']:.3f} s"
        refused = sum(frontend.refused for frontend in self._frontends)
        return [ended, forced, gone, f"{refused} new connections refused"]

    # -- asked from outside -------------------------------------------------------

    def found(self) -> dict[str, Any]:
        """What the drain found and where it is (JSON-ready, for the API)."""
        sessions = self._sessions.sessions.values()
        return {
            "draining": self.phase is not Phase.SERVING,
            "phase": self.phase.value,
            "cause": self.cause,
            "sessions": len(sessions),
            "transfers": sum(len(s.transfers) for s in sessions),
            "timeout": self.timeout,
        }

    def request_stop(self, cause: str) -> dict[str, Any]:
        """
        Begin the drain and stop the process (the reactor, whose shutdown
        waits for the drain), as SIGTERM does: C{POST /api/drain}.

        @return: what the drain found as it began (L{found}).
        """
        self.begin(cause)
        found = self.found()
        if self._stop is not None and not self._stop_asked:
            self._stop_asked = True
            self._clock.callLater(0, self._stop_now)
        return found

    def _stop_now(self) -> None:
        assert self._stop is not None
        try:
            self._stop()
        except ReactorNotRunning:
            pass  # already stopping (twistd's stop, a signal): it waits for us

    def signalled(self, name: str) -> None:
        """
        SIGTERM or SIGINT (see L{install_signal_handlers}): the first
        begins the drain and the stop, a later one forces the drain.
        """
        if self.phase is Phase.SERVING:
            self.request_stop(name)
        elif self.phase is Phase.DRAINING:
            log.info("drain: {signal} during the drain: interrupting now", signal=name)
            self.force(name)
        else:
            log.info(
                "drain: {signal} ignored, the drain is {phase}",
                signal=name,
                phase=self.phase.value,
            )


def _transfers_text(session: Session) -> str:
    """A session's transfers in progress, for the log."""
    transfers = list(session.transfers.values())
    if not transfers:
        return "no transfer"
    return ", ".join(
        f"{t.direction} of {for_log(t.path)} at {t.offset + t.bytes} bytes"
        for t in transfers
    )


def gateway_drain(
    gateway: GatewayService,
    timeout: float,
    reactor: Any,
    notifier: Optional[SystemdNotifier] = None,
) -> Drain:
    """
    The drain of a gateway built by C{makeService}, over its sessions,
    frontends, readiness, systemd notifier and uploads; the admin API's
    C{POST /api/drain} begins it.
    """
    assert gateway.sessions is not None and gateway.accounts is not None
    readiness = gateway.admin.readiness if gateway.admin is not None else None
    drain = Drain(
        reactor,
        gateway.sessions,
        timeout,
        frontends=[
            f for f in (gateway.ftp, gateway.sftp, gateway.webdav) if f is not None
        ],
        readiness=readiness,
        notifier=notifier,
        registry=gateway.accounts.registry,
        stop=reactor.stop,
    )
    if readiness is not None:
        readiness.stop = drain.request_stop
    return drain


def install_signal_handlers(drain: Drain, reactor: Any) -> None:
    """
    Once the reactor runs (its own handlers are set by then), SIGTERM and
    SIGINT go to C{drain} (L{Drain.signalled}) through the reactor's
    thread-safe queue, as the reactor's handlers do.  A signal the process
    ignores (SIGINT in a background job) stays ignored.
    """

    def handler(number: int, frame: Optional[FrameType]) -> None:
        reactor.callFromThread(drain.signalled, signal.Signals(number).name)

    def install() -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            current = signal.getsignal(number)
            if callable(current) and current is not signal.default_int_handler:
                signal.signal(number, handler)

    reactor.callWhenRunning(install)
