"""
The C{sftp} subsystem's protocol: Conch's L{FileTransferServer} with what
cosgw needs changed, over a L{GatewaySFTPServer}.

Requests are read from a L{ChunkQueue} and taken only while the session's
L{RequestGate} lets them in (see L{cosgw.frontends.sftp.flow}); a packet
longer than L{MAX_SFTP_PACKET} ends the connection before it is buffered.

While the gateway drains (L{cosgw.frontends.sftp.audited}), OPEN and
OPENDIR fail (FX_FAILURE, the drain's reason) and the connection is
disconnected once its files are closed and their replies sent, and
L{DRAIN_LINGER} seconds have passed for the requests a client makes right
after a transfer (paramiko's put checks the size with a STAT).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Optional, Union

from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_FAILURE,
    FX_OP_UNSUPPORTED,
    FXP_DATA,
    FXP_INIT,
    FXP_NAME,
    FXP_OPEN,
    FXP_OPENDIR,
    FXP_READ,
    FXP_READDIR,
    FXP_VERSION,
    FXP_WRITE,
)
from twisted.conch.ssh.transport import DISCONNECT_PROTOCOL_ERROR
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.audit import Session
from cosgw.escaping import for_log
from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.frontends.sftp.flow import ChunkQueue, RequestGate
from cosgw.frontends.sftp.handles import MAX_READ
from cosgw.frontends.sftp.server import MAX_SFTP_PACKET, GatewaySFTPServer, status_for
from cosgw.frontends.sftp.session import SFTPSession

__all__ = ["MAX_SFTP_PACKET", "FileTransfer"]

# The namespace these lines had when SFTP was one module.
log = Logger(namespace="cosgw.frontends.sftp")

#: What a READDIR reply is reckoned to cost, for the reply bytes promised
#: (100 entries of ordinary names; long ones cost more).
_READDIR_PROMISE = 32 * 1024
#: A DATA reply's bytes beyond the data: length, type, id, data length.
_DATA_OVERHEAD = 13
#: Seconds a draining session stays once its last file is closed, for the
#: requests clients send right after a transfer (paramiko's put STATs the
#: file; rclone reads its attributes): a round trip, with room to spare.
DRAIN_LINGER = 2.0


class FileTransfer(filetransfer.FileTransferServer):
    """
    Conch's SFTP server protocol with the fixes cosgw needs: a lost session
    aborts uploads instead of closing them as finished, READDIR fetches
    pages asynchronously, errors become status replies in L{status_for},
    and requests are not logged one by one.
    """

    _log = ConchLogger(namespace="twisted.conch.ssh.filetransfer")

    def __init__(self, data: Any = None, avatar: Any = None) -> None:
        super().__init__(data, avatar)
        self._input = ChunkQueue()
        #: Requests in flight and the replies they may still produce.
        self.gate = RequestGate()
        self._taking = False
        self._holding = False
        self._channel: Optional[SFTPSession] = None
        self._ssh: Any = None
        #: The connection's audit session: each request touches it.
        self._audit: Optional[Session] = None
        #: Draining with no file open: the disconnect waits for this.
        self._lingering: Optional[IDelayedCall] = None

    def connectionMade(self) -> None:
        channel = getattr(self.transport, "session", None)
        if isinstance(channel, SFTPSession):
            self._channel = channel
            channel.input_held = lambda: self.input_waiting
            channel.on_output_sent = self._take_requests
            self._ssh = getattr(channel.conn, "transport", None)
            self._audit = getattr(self._ssh, "audit", None)
        if self._ssh is not None and hasattr(self._ssh, "hold_input"):
            self._ssh.watch_output(self._output_changed)
            server = self.client
            if isinstance(server, GatewaySFTPServer):
                # Uploads whose writes wait hold the connection's input;
                # one holding its turn in the upload buffer budget feeds it.
                ssh = self._ssh
                server.pause_input = lambda on: ssh.hold_input(server, on)
                server.feed_input = lambda on: ssh.feed_input(server, on)
        else:
            self._ssh = None

    # -- requests in ------------------------------------------------------

    @property
    def input_waiting(self) -> int:
        """Bytes received and not yet taken as requests."""
        return len(self._input)

    def dataReceived(self, data: bytes) -> None:
        self._input.append(data)
        self._take_requests()

    def _take_requests(self) -> None:
        """
        Take the requests received while the gate lets them in; then hold
        the connection's input or not, and give the client window back for
        what was taken.
        """
        if self._taking:
            return  # a reply sent by a request being taken; the loop goes on
        self._taking = True
        try:
            while len(self._input) >= 9:
                header = self._input.peek(9)
                (length,) = struct.unpack("!L", header[:4])
                if not 5 <= length <= MAX_SFTP_PACKET:
                    self._refuse_packet(header, length)
                    return
                if len(self._input) < 4 + length or not self._accepting():
                    break
                packet = self._input.take(4 + length)
                kind = packet[4]
                # A WRITE is parsed from a view: its data is copied once.
                self._handle(
                    kind, memoryview(packet)[5:] if kind == FXP_WRITE else packet[5:]
                )
        finally:
            self._taking = False
        self._hold_input(not self._accepting())
        if self._channel is not None:
            self._channel.refill_window()
        self._drain_check()

    def _output_changed(self) -> None:
        """
        The TCP transport's buffer went over its limit or emptied: the
        replies waiting for it go, then requests are taken again.
        """
        if self._channel is not None and not self._ssh.output_full:
            self._channel.send_waiting()  # then takes requests
        else:
            self._take_requests()

    def _accepting(self) -> bool:
        waiting = self._channel.output_waiting if self._channel is not None else 0
        full = bool(self._ssh is not None and self._ssh.output_full)
        return self.gate.accepting(waiting, full)

    def _hold_input(self, stopped: bool) -> None:
        """
        Stop reading the connection while the session takes no requests,
        unless replies wait for the client's window: then the client's
        WINDOW_ADJUST must still get in, and the window (held back by the
        channel) limits what the client can send meanwhile.
        """
        hold = stopped and not (
            self._channel is not None and self._channel.window_closed
        )
        if hold != self._holding and self._ssh is not None:
            self._holding = hold
            self._ssh.hold_input(self, hold)

    def _handle(self, kind: int, payload: Union[bytes, memoryview]) -> None:
        """
        Conch's dispatch, except that a request that cannot be parsed is
        answered (FX_BAD_MESSAGE) rather than logged and left unanswered,
        which would leave the client waiting forever.
        """
        request_id = b"" if kind == FXP_INIT else bytes(payload[:4])
        if self._audit is not None:
            self._audit.touch()
        self.gate.dispatched(request_id, _promise(kind, payload))
        name = self.packetTypes.get(kind)
        handler = getattr(self, f"packet_{name}", None) if name else None
        draining = getattr(self._ssh, "draining", None)
        if draining is not None and kind in (FXP_OPEN, FXP_OPENDIR):
            self._sendStatus(request_id, FX_FAILURE, draining.encode("utf-8"))
            return
        if handler is None:
            self._sendStatus(request_id, FX_OP_UNSUPPORTED, b"unsupported request type")
            return
        try:
            handler(payload)
        except Exception as e:
            log.info(
                "bad SFTP {name} request from {user}: {error}",
                name=name,
                user=self._user(),
                error=repr(e),
            )
            if kind == FXP_INIT:
                self.gate.answered(b"")
            else:
                self._sendStatus(request_id, FX_BAD_MESSAGE, b"bad message")

    def _refuse_packet(self, header: bytes, length: int) -> None:
        """
        A packet longer than L{MAX_SFTP_PACKET} (or too short to hold a
        type and an id): answer BAD_MESSAGE and end the connection, as
        OpenSSH's sftp-server exits, without reading the packet.
        """
        self._input.clear()
        if header[4] != FXP_INIT:
            problem = b"packet too long" if length > MAX_SFTP_PACKET else b"bad length"
            self._sendStatus(header[5:9], FX_BAD_MESSAGE, problem)
        log.warn(
            "SFTP packet of {length} bytes from {user} at {peer} (the limit is"
            " {limit}); disconnecting",
            length=length,
            user=self._user(),
            peer=getattr(self._ssh, "peer", "?"),
            limit=MAX_SFTP_PACKET,
        )
        if self._ssh is not None:
            self._ssh.sendDisconnect(
                DISCONNECT_PROTOCOL_ERROR,
                f"SFTP packet of {length} bytes (the limit is {MAX_SFTP_PACKET})",
            )
        elif self.transport is not None:
            self.transport.loseConnection()

    def _user(self) -> str:
        return for_log(str(getattr(getattr(self.client, "fs", None), "user", None)))

    # -- replies out ------------------------------------------------------

    def sendPacket(self, kind: int, data: bytes) -> None:
        """Send a reply; it settles a request in flight (VERSION: INIT)."""
        self._reply(kind, data[:4], [struct.pack("!LB", len(data) + 1, kind), data])

    def _reply(
        self, kind: int, request_id: bytes, parts: list[bytes], more_soon: bool = False
    ) -> None:
        """
        Write a reply, C{parts} joined (by the channel, into the packets
        that carry them), and settle its request.
        """
        if self._channel is not None:
            self._channel.write_parts(parts, more_soon)
        else:
            assert self.transport is not None
            self.transport.write(b"".join(parts))
        if self.gate.answered(b"" if kind == FXP_VERSION else request_id):
            self._take_requests()
        self._drain_check()

    def _drain_check(self) -> None:
        """
        Draining: once no file is open, no request is in flight and every
        reply has gone to the client, the connection ends.
        """
        ssh = self._ssh
        if ssh is None or getattr(ssh, "draining", None) is None:
            return
        if ssh.files_open() or self.gate.in_flight:
            return
        if self._channel is not None and self._channel.output_waiting:
            return  # held for the client's window: checked when sent
        if self._lingering is None:
            self._lingering = ssh.factory.reactor.callLater(
                DRAIN_LINGER, self._drain_check
            )
        elif not self._lingering.active():
            ssh.drain(ssh.draining, now=True)

    def _cbRead(self, result: bytes, requestId: bytes) -> None:
        """
        A READ's DATA, as Conch's, without copying the data into the reply
        (Conch copies it three times), and letting its last packet wait for
        the replies that follow it this turn (L{SFTPSession.write_parts}).
        """
        if not result:
            raise EOFError()
        header = struct.pack(
            "!LB4sL", 9 + len(result), FXP_DATA, requestId, len(result)
        )
        self._reply(FXP_DATA, requestId, [header, result], more_soon=True)

    def _ebStatus(self, reason: Failure, requestId: bytes, msg: bytes = b"") -> None:
        code, message = status_for(reason, msg.decode("ascii", "replace") or "request")
        self._sendStatus(requestId, code, message.encode("utf-8"))

    def packet_WRITE(self, data: Union[bytes, memoryview]) -> None:
        """
        As Conch's, but bytes after the write's data are ignored instead of
        failing an assertion: rclone 1.60 (pkg/sftp 1.13) sends a short
        write in a packet as long as its whole buffer (OpenSSH's server
        ignores the rest too); and data shorter than its declared length is
        a bad message, not a short write acknowledged as whole.  Parsed
        from a view: the data is copied once (Conch copies it three times).
        """
        view = memoryview(data)
        requestId = bytes(view[:4])
        (size,) = struct.unpack_from("!L", view, 4)
        handle = bytes(view[8 : 8 + size])
        offset, length = struct.unpack_from("!QL", view, 8 + size)
        write_data = view[20 + size : 20 + size + length]
        if len(write_data) != length:
            raise ValueError("the WRITE's data is shorter than its length")
        if handle not in self.openFiles:
            self._ebWrite(Failure(KeyError(handle)), requestId)
            return
        d = maybeDeferred(self.openFiles[handle].writeChunk, offset, bytes(write_data))
        d.addCallback(self._cbStatus, requestId, b"write succeeded")
        d.addErrback(self._ebStatus, requestId, b"write failed")

    # Conch calls these for a READ or WRITE on an unknown handle but does
    # not define them.
    def _ebRead(self, reason: Failure, requestId: bytes) -> None:
        self._sendStatus(requestId, FX_FAILURE, b"invalid handle")

    _ebWrite = _ebRead

    def packet_READDIR(self, data: bytes) -> None:
        requestId = data[:4]
        handle, _ = getNS(data[4:])
        if handle not in self.openDirs:
            self._sendStatus(requestId, FX_FAILURE, b"invalid handle")
            return
        directory = self.openDirs[handle][0]
        d = directory.next_batch()
        d.addCallback(self._send_names, requestId)
        d.addErrback(self._ebStatus, requestId, b"readdir")

    def _send_names(
        self, entries: Sequence[tuple[bytes, bytes, dict]], requestId: bytes
    ) -> None:
        body = b"".join(
            NS(name) + NS(longname) + self._packAttributes(attrs)
            for name, longname, attrs in entries
        )
        self.sendPacket(FXP_NAME, requestId + struct.pack("!L", len(entries)) + body)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Not FileTransferServer.connectionLost: it closes every open file
        # as if it had finished, which would commit half an upload.
        filetransfer.FileTransferBase.connectionLost(self, reason)
        self._input.clear()
        self.gate.reset()
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        if self._ssh is not None:
            self._ssh.unwatch_output(self._output_changed)
            if self._holding:
                self._holding = False
                self._ssh.hold_input(self, False)
        self.openFiles = {}
        for directory, _ in self.openDirs.values():
            directory.close()
        self.openDirs = {}
        server = self.client
        if isinstance(server, GatewaySFTPServer):
            server.connection_lost()


def _promise(kind: int, payload: Union[bytes, memoryview]) -> int:
    """
    The reply bytes a request may produce: a READ's length (as much as
    L{MAX_READ}), a reckoning for READDIR, nothing for the short replies.
    """
    if kind == FXP_READ and len(payload) >= 4:
        (length,) = struct.unpack("!L", payload[-4:])
        return min(length, MAX_READ) + _DATA_OVERHEAD
    if kind == FXP_READDIR:
        return _READDIR_PROMISE
    return 0
