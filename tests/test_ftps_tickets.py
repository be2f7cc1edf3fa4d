"""
TLS 1.3 session tickets on FTPS connections (L{cosgw.frontends.ftp.tls}),
through real sockets with Python's ssl as the client.

The gateway sends its tickets on the control connection (data connections
resume from them) but holds a data connection's tickets until it sends
something else on it: an uploading client that never reads its data
connection (lftp, FileZilla) has nothing unread when it closes, so its
close is a FIN, not a reset that can destroy the upload's last bytes.
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import time
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import in_thread, random_bytes, sha256
from tests.test_ftps import (
    CLIENT_TIMEOUT,
    FTPSGatewayMixin,
    ReusingFTPS,
    client_context,
    retr,
    secure_login,
)

#: ssl's message-callback codes for a handshake record and NewSessionTicket.
HANDSHAKE, NEW_SESSION_TICKET = 22, 4

VERSIONS = (
    (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
)


class TicketCounter:
    """
    Counts the NewSessionTicket messages read by each connection of a
    client context, in the order the connections were made.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._connections: list[Any] = []
        self._read: list[int] = []
        # ssl's debugging hook (Lib/ssl.py, private): the only way to see
        # post-handshake messages from Python.
        context._msg_callback = self._seen  # type: ignore[attr-defined]

    def _seen(
        self, conn: Any, direction: str, v: Any, kind: Any, msg: Any, d: Any
    ) -> None:
        if conn not in self._connections:
            self._connections.append(conn)
            self._read.append(0)
        if direction == "read" and kind == HANDSHAKE and msg == NEW_SESSION_TICKET:
            self._read[self._connections.index(conn)] += 1

    def tickets(self) -> list[int]:
        """Tickets read, per connection."""
        return list(self._read)


def unread(sock: ssl.SSLSocket) -> int:
    """Bytes waiting unread in C{sock}'s kernel buffer, without reading them."""
    probe = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        return len(probe.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0
    finally:
        probe.close()


class TicketTests(FTPSGatewayMixin, unittest.TestCase):
    def setUp(self) -> Any:
        return self.start("local", tls_session_reuse=True)

    def received(self) -> int:
        """Bytes the gateway has read on the running transfer's connection."""
        for protocol in self.open_controls():
            transfer = getattr(protocol, "transfer", None)
            if transfer is not None and transfer.channel is not None:
                return int(transfer.channel.received)
        return 0

    def upload(self, maximum: ssl.TLSVersion, name: str, data: bytes) -> dict[str, Any]:
        """
        STOR over a data connection that resumes the control session (the
        gateway requires it here); once the gateway has read every byte,
        how much the client has unread on its data connection.  Blocking.
        """
        context = client_context(self.cert, maximum)
        ftp = ftplib.FTP_TLS(context=context, timeout=CLIENT_TIMEOUT)
        ftp.connect(self.gw.host, self.gw.port)
        secure_login(ftp)
        raw, _ = ftplib.FTP.ntransfercmd(ftp, f"STOR {name}")
        conn = context.wrap_socket(
            raw, server_hostname=ftp.host, session=ftp.sock.session
        )
        conn.sendall(data)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while self.received() < len(data) and time.monotonic() < deadline:
            time.sleep(0.01)
        r: dict[str, Any] = {
            "received": self.received(),
            "unread": unread(conn),
            "version": conn.version(),
            "resumed": conn.session_reused,
        }
        conn.unwrap()  # close_notify both ways: the held tickets come now
        conn.close()
        r["final"] = ftp.voidresp()
        ftp.quit()
        return r

    @defer.inlineCallbacks
    def test_upload_connection_has_nothing_unread(self) -> Any:
        """
        Under TLS 1.2 and 1.3: after the handshake and the whole upload the
        client has nothing unread on the data connection (under 1.3 the
        tickets used to wait there); the upload resumed the control
        session, and it is stored whole.
        """
        data = random_bytes(200_000)
        for maximum, version in VERSIONS:
            name = f"up-{version}.bin"
            r = yield in_thread(self.upload, maximum, name, data)
            self.assertEqual(
                (r["version"], r["resumed"], r["received"], r["unread"]),
                (version, True, len(data), 0),
            )
            self.assertTrue(r["final"].startswith("226"), r["final"])
            self.assertEqual(self.stored_sha(name), sha256(data))

    @defer.inlineCallbacks
    def test_tickets_on_control_and_downloads(self) -> Any:
        """
        Under TLS 1.3 the control connection gets its tickets (what data
        connections resume from) and a download gets the data connection's
        held ticket with the data, which arrives whole.
        """
        data = random_bytes(300_000)
        self.gw.inspector.root.mkdir(parents=True, exist_ok=True)
        (self.gw.inspector.root / "down.bin").write_bytes(data)

        def run() -> dict[str, Any]:
            context = client_context(self.cert)
            counter = TicketCounter(context)
            ftp = ReusingFTPS(context=context, timeout=CLIENT_TIMEOUT)
            ftp.connect(self.gw.host, self.gw.port)
            secure_login(ftp)
            r: dict[str, Any] = {"control": counter.tickets()}
            r["retr"], r["back"] = retr(ftp, "down.bin")
            r["tickets"] = counter.tickets()
            r["data_tls"] = ftp.data_tls
            ftp.quit()
            return r

        r = yield in_thread(run)
        (control,) = r["control"]
        self.assertGreaterEqual(control, 1)
        self.assertTrue(r["retr"].startswith("226"), r["retr"])
        self.assertEqual(sha256(r["back"]), sha256(data))
        self.assertEqual(r["data_tls"], [("TLSv1.3", True)])
        # A resumed handshake brings one new ticket: held, then sent ahead
        # of the data.
        self.assertEqual(r["tickets"][1:], [1])
