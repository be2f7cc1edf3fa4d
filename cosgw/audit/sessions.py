"""
The live sessions and transfers of one gateway: what the status page and
the admin API show, what a kick ends, and the context every audit event of
a session carries.

A frontend opens a L{Session} when a client connects (before login: a
connection that never logs in is a session too) and closes it when the
connection is lost; the file system below the frontends starts a
L{Transfer} per upload or download on it and finishes it once.  Opening,
closing and finishing emit the audit events, so a frontend cannot forget
them.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cosgw.audit.events import emit

__all__ = ["Session", "SessionTable", "Transfer"]

#: How many finished transfers the status page keeps.
FINISHED_KEPT = 100


def client_address(host: str) -> str:
    """
    The address as logs and ban tools should see it: an IPv4 client of a
    dual-stack socket (C{::ffff:192.0.2.1}, as systemd's sockets give) in
    its IPv4 form, so one client has one address whatever the listener.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return host


def _reply_unknown(error: Optional[BaseException]) -> str:
    """The status of a session whose frontend set no mapping."""
    return "ok" if error is None else type(error).__name__


class Session:
    """
    One client connection, from connect to disconnect.

    @ivar protocol: C{"ftp"}, C{"ftps"} (an FTP session moves here when its
        control connection turns to TLS) or C{"sftp"}.
    @ivar status_of: the frontend's own mapping of an error (None: success)
        to what its client is told (an FTP reply code, an SFTP status
        name), so that the file system, which knows no protocol, can put it
        in the events it emits.
    @ivar kick: ends the session as its protocol does (FTP: 421 and close;
        SFTP: a disconnect message); takes the reason.
    @ivar drain: ends the session as the gateway stops
        (L{cosgw.lifecycle.drain}), given the reason and C{now}: without
        C{now}, once no transfer runs (at once if none does); with it, at
        once, a transfer in progress interrupted as if the connection were
        lost.  Set by the frontend; by default a kick when idle or C{now}.
    """

    def __init__(
        self,
        table: SessionTable,
        protocol: str,
        host: str,
        port: int,
        kick: Callable[[str], None],
    ) -> None:
        self.table = table
        self.id = secrets.token_hex(6)
        self.protocol = protocol
        self.host = client_address(host)
        self.port = port
        self.user = ""
        self.kick = kick
        self.status_of: Callable[[Optional[BaseException]], str] = _reply_unknown
        self.started = table.clock.seconds()
        self.last_active = self.started
        self.transfers: dict[str, Transfer] = {}
        self.closed = False
        self.drain: Callable[[str, bool], None] = self._kick_when_idle

    def _kick_when_idle(self, reason: str, now: bool) -> None:
        if now or not self.transfers:
            self.kick(reason)

    def touch(self) -> None:
        """The client did something: the session is not idle."""
        self.last_active = self.table.clock.seconds()

    def fields(self) -> dict[str, Any]:
        """The fields every event of this session carries."""
        return {
            "session": self.id,
            "protocol": self.protocol,
            "client_ip": self.host,
            "client_port": self.port,
            "user": self.user,
        }

    def emit(
        self,
        event: str,
        error: Optional[BaseException] = None,
        **fields: Any,
    ) -> None:
        """
        Emit C{event} for this session; C{error} (None: it succeeded) gives
        the outcome, the error text and the status the client got.
        """
        self.touch()
        record = self.fields()
        record["event"] = event
        record["outcome"] = "ok" if error is None else "error"
        if error is not None:
            record["error"] = str(error) or type(error).__name__
        record["status"] = str(self.status_of(error))
        record.update(fields)
        emit(record)

    def start_transfer(
        self,
        direction: str,
        path: str,
        size: Optional[int] = None,
        offset: int = 0,
    ) -> Transfer:
        """A transfer begins on this session (C{direction}: upload, download)."""
        transfer = Transfer(self, direction, path, size, offset)
        self.transfers[transfer.id] = transfer
        self.touch()
        return transfer

    def describe(self) -> dict[str, Any]:
        """The session as the admin API shows it (JSON-ready)."""
        now = self.table.clock.seconds()
        return {
            "id": self.id,
            "protocol": self.protocol,
            "user": self.user,
            "client_ip": self.host,
            "client_port": self.port,
            "since": self.started,
            "idle": round(now - self.last_active, 3),
            "transfers": [t.id for t in self.transfers.values()],
        }


class Transfer:
    """
    One upload or download in progress: its progress for the status page,
    and, when it ends, its audit event.

    The counters are kept by the layers that know them: C{bytes} by whoever
    moves the client's bytes (L{progress}), C{store_wait}, C{parts},
    C{retries} and C{request_ids} by the transfer code below.
    """

    def __init__(
        self,
        session: Session,
        direction: str,
        path: str,
        size: Optional[int],
        offset: int,
    ) -> None:
        self.session = session
        self.id = secrets.token_hex(6)
        self.direction = direction
        self.path = path
        #: The whole size when known (downloads, ALLO, SFTP with a size).
        self.size = size
        self.offset = offset
        self.bytes = 0
        self.started = session.table.clock.seconds()
        self.store_wait = 0.0
        self.parts = 0
        self.retries = 0
        self.request_ids: list[str] = []
        self.finished = False

    def progress(self, count: int) -> None:
        """C{count} more bytes moved between client and gateway."""
        self.bytes += count
        self.session.last_active = self.session.table.clock.seconds()

    def finish(
        self,
        error: Optional[BaseException] = None,
        interrupted: bool = False,
        **fields: Any,
    ) -> None:
        """
        The transfer ended: committed (C{error} None), failed with C{error},
        or, with C{interrupted}, cut short by the client or the gateway
        (a disconnect, ABOR, a kick).  Emits its one event: C{upload} or
        C{download}, or C{abort} for an interrupted one.  C{fields} may say
        more, such as C{kept=True} for an upload kept for resume.  Only the
        first call counts.
        """
        if self.finished:
            return
        self.finished = True
        session = self.session
        session.transfers.pop(self.id, None)
        record = self.describe()
        record.update(fields)
        record["outcome"] = "ok" if error is None else "error"
        record["finished"] = session.table.clock.seconds()
        session.table.finished.appendleft(record)
        session.emit(
            "abort" if interrupted else self.direction,
            error,
            path=self.path,
            direction=self.direction,
            bytes=self.bytes,
            duration=record["duration"],
            size=self.size,
            offset=self.offset,
            rate=record["rate"],
            store_wait=round(self.store_wait, 3),
            parts=self.parts,
            retries=self.retries,
            request_ids=list(self.request_ids),
            **fields,
        )

    def describe(self) -> dict[str, Any]:
        """The transfer as the admin API shows it (JSON-ready)."""
        now = self.session.table.clock.seconds()
        duration = max(now - self.started, 0.0)
        rate = self.bytes / duration if duration > 0 else 0.0
        eta = None
        if self.size is not None and rate > 0:
            eta = max(self.size - self.offset - self.bytes, 0) / rate
        return {
            "id": self.id,
            "session": self.session.id,
            "protocol": self.session.protocol,
            "user": self.session.user,
            "client_ip": self.session.host,
            "direction": self.direction,
            "path": self.path,
            "size": self.size,
            "offset": self.offset,
            "bytes": self.bytes,
            "started": self.started,
            "duration": round(duration, 3),
            "rate": round(rate, 1),
            "eta": None if eta is None else round(eta, 1),
        }


class SessionTable:
    """Every live session of the gateway, and its last finished transfers."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.finished: deque[dict[str, Any]] = deque(maxlen=FINISHED_KEPT)
        self._empty_waiters: list[Deferred[None]] = []

    def open(
        self,
        protocol: str,
        host: str,
        port: int,
        kick: Callable[[str], None],
        status_of: Optional[Callable[[Optional[BaseException]], str]] = None,
    ) -> Session:
        """
        A client connected; emits C{session-open}, whose status comes from
        C{status_of} (the session's L{Session.status_of}) when given.
        """
        session = Session(self, protocol, host, port, kick)
        if status_of is not None:
            session.status_of = status_of
        self.sessions[session.id] = session
        session.emit("session-open")
        return session

    def close(self, session: Session, reason: str = "closed") -> None:
        """
        The connection is gone; emits C{session-close} once.  Transfers
        still open are finished as interrupted first, so none is lost from
        the log.
        """
        if session.closed:
            return
        session.closed = True
        for transfer in list(session.transfers.values()):
            transfer.finish(ConnectionError(reason), interrupted=True)
        self.sessions.pop(session.id, None)
        duration = round(self.clock.seconds() - session.started, 3)
        session.emit("session-close", reason=reason, duration=duration)
        if not self.sessions:
            waiters, self._empty_waiters = self._empty_waiters, []
            for d in waiters:
                d.callback(None)

    def when_empty(self) -> Deferred[None]:
        """Fires with None once no session is open (at once if none is)."""
        if not self.sessions:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._empty_waiters.append(d)
        return d

    def get(self, session_id: str) -> Optional[Session]:
        return self.sessions.get(session_id)

    def transfers(self) -> Iterator[Transfer]:
        """Every transfer in progress."""
        for session in list(self.sessions.values()):
            yield from list(session.transfers.values())
