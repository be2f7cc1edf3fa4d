"""
The C{sftp} subsystem's protocol: Conch's L{FileTransferServer} with what
cosgw needs changed, over a L{GatewaySFTPServer}.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.common import NS, getNS
from twisted.conch.ssh.filetransfer import (
    FX_BAD_MESSAGE,
    FX_FAILURE,
    FX_OP_UNSUPPORTED,
    FXP_NAME,
)
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from cosgw.frontends.sftp.conchlog import ConchLogger
from cosgw.frontends.sftp.server import GatewaySFTPServer, status_for

__all__ = ["FileTransfer"]

# The namespace these lines had when SFTP was one module.
log = Logger(namespace="cosgw.frontends.sftp")


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
        server = self.client
        if isinstance(server, GatewaySFTPServer):
            server.pause_input = self._pause_input

    def _pause_input(self, on: bool) -> None:
        transport = _tcp_transport(self)
        if transport is None:
            return
        if on:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def _ebStatus(self, reason: Failure, requestId: bytes, msg: bytes = b"") -> None:
        code, message = status_for(reason, msg.decode("ascii", "replace") or "request")
        self._sendStatus(requestId, code, message.encode("utf-8"))

    def packet_WRITE(self, data: bytes) -> None:
        """
        As Conch's, but bytes after the write's data are ignored instead of
        failing an assertion: rclone 1.60 (pkg/sftp 1.13) sends a short
        write in a packet as long as its whole buffer (OpenSSH's server
        ignores the rest too); and data shorter than its declared length is
        a bad message, not a short write acknowledged as whole.
        """
        requestId = data[:4]
        handle, rest = getNS(data[4:])
        (offset, length) = struct.unpack("!QL", rest[:12])
        write_data = rest[12 : 12 + length]
        if len(write_data) != length:
            raise ValueError("the WRITE's data is shorter than its length")
        if handle not in self.openFiles:
            self._ebWrite(Failure(KeyError(handle)), requestId)
            return
        d = maybeDeferred(self.openFiles[handle].writeChunk, offset, write_data)
        d.addCallback(self._cbStatus, requestId, b"write succeeded")
        d.addErrback(self._ebStatus, requestId, b"write failed")

    def dataReceived(self, data: bytes) -> None:
        """
        Conch's packet loop, except that a request that cannot be parsed is
        answered (FX_BAD_MESSAGE) rather than logged and left unanswered,
        which would leave the client waiting forever.
        """
        self.buf += data
        while len(self.buf) >= 9:
            length, kind = struct.unpack("!LB", self.buf[:5])
            if len(self.buf) < 4 + length:
                return
            packet, self.buf = self.buf[5 : 4 + length], self.buf[4 + length :]
            name = self.packetTypes.get(kind)
            handler = getattr(self, f"packet_{name}", None) if name else None
            if handler is None:
                self._sendStatus(
                    packet[:4], FX_OP_UNSUPPORTED, b"unsupported request type"
                )
                continue
            try:
                handler(packet)
            except Exception as e:
                log.info(
                    "bad SFTP {name} request from {user}: {error}",
                    name=name,
                    user=getattr(getattr(self.client, "fs", None), "user", None),
                    error=repr(e),
                )
                if kind != filetransfer.FXP_INIT:
                    self._sendStatus(packet[:4], FX_BAD_MESSAGE, b"bad message")

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
        self.openFiles = {}
        for directory, _ in self.openDirs.values():
            directory.close()
        self.openDirs = {}
        server = self.client
        if isinstance(server, GatewaySFTPServer):
            server.connection_lost()


def _tcp_transport(protocol: Any) -> Any:
    """The TCP transport under an SFTP subsystem, to pause reading it."""
    session = getattr(protocol.transport, "session", None)
    conn = getattr(session, "conn", None)
    ssh = getattr(conn, "transport", None)
    return getattr(ssh, "transport", None)
