"""
The admin JSON API over real HTTP: sessions and transfers as the status
page and the C{cosgw sessions} command read them, and the kick, first on
sessions put in the gateway's table directly, then on real ftplib and
paramiko sessions (FTP: 421 and the close; SFTP: a disconnect; an upload
in progress leaves no object).
"""

from __future__ import annotations

import ftplib
import io
import json
import socket
import threading
import time
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from cosgw.config import UserConfig
from tests.admintesting import Answer, request
from tests.harness import PASSWORD, in_thread, start_gateway

ADMIN = "tcp:0:interface=127.0.0.1"


def _wait(
    condition: Any, seconds: float = 15, what: str = "the condition"
) -> Deferred[None]:
    """Poll C{condition()} on the reactor until true; fail after C{seconds}."""

    async def poll() -> None:
        from twisted.internet import reactor

        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {seconds} s")
            await deferLater(reactor, 0.02, lambda: None)

    return Deferred.fromCoroutine(poll())


class _Kicks:
    """What a frontend's kick was told (sessions made without a frontend)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


class APITests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, "local", admin_listen=ADMIN)
        self.table = self.gw.service.sessions
        # Sessions made here have no connection to end when the gateway
        # drains at its stop: they end first.
        self.addCleanup(self._close_sessions)

    def _close_sessions(self) -> None:
        for session in list(self.table.sessions.values()):
            self.table.close(session, "test over")

    def call(self, path: str, method: str = "GET", **kwargs: Any) -> Deferred[Answer]:
        return in_thread(request, self.gw.admin_port, path, method, **kwargs)

    @defer.inlineCallbacks
    def test_sessions_and_transfers(self) -> Any:
        session = self.table.open("sftp", "192.0.2.9", 50123, _Kicks())
        session.user = "alice"
        transfer = session.start_transfer("download", "/big.iso", size=1000)
        transfer.progress(250)
        done = session.start_transfer("upload", "/small.txt")
        done.progress(5)
        done.finish()
        answer = yield self.call("/api/sessions")
        self.assertEqual(answer.headers["Content-Type"], "application/json")
        self.assertEqual(answer.headers["Cache-Control"], "no-store")
        listed = json.loads(answer.body)["sessions"]
        self.assertEqual(len(listed), 1)
        self.assertEqual(
            {k: listed[0][k] for k in ("id", "protocol", "user", "client_ip")},
            {
                "id": session.id,
                "protocol": "sftp",
                "user": "alice",
                "client_ip": "192.0.2.9",
            },
        )
        self.assertEqual(listed[0]["client_port"], 50123)
        self.assertEqual(listed[0]["transfers"], [transfer.id])
        answer = yield self.call("/api/transfers")
        body = json.loads(answer.body)
        self.assertEqual([t["id"] for t in body["transfers"]], [transfer.id])
        self.assertEqual(
            {k: body["transfers"][0][k] for k in ("path", "size", "bytes")},
            {"path": "/big.iso", "size": 1000, "bytes": 250},
        )
        self.assertEqual([t["id"] for t in body["finished"]], [done.id])
        self.assertEqual(body["finished"][0]["outcome"], "ok")
        answer = yield self.call("/api/sessions/" + session.id)
        self.assertEqual(json.loads(answer.body)["id"], session.id)

    @defer.inlineCallbacks
    def test_kick(self) -> Any:
        kicks = _Kicks()
        session = self.table.open("ftp", "127.0.0.1", 40000, kicks)
        answer = yield self.call(f"/api/sessions/{session.id}/kick", "GET")
        self.assertEqual((answer.status, answer.headers["Allow"]), (405, "POST"))
        self.assertEqual(kicks.reasons, [])
        answer = yield self.call(f"/api/sessions/{session.id}/kick", "POST")
        self.assertEqual(answer.status, 200)
        self.assertEqual(json.loads(answer.body), {"kicked": session.id})
        self.assertEqual(kicks.reasons, ["kicked by administrator"])
        answer = yield self.call("/api/sessions/0123456789ab/kick", "POST")
        self.assertEqual(answer.status, 404)
        self.assertEqual(json.loads(answer.body), {"error": "no such session"})

    @defer.inlineCallbacks
    def test_kick_from_another_site_refused(self) -> Any:
        """A page elsewhere may make a browser POST here: its Origin tells."""
        kicks = _Kicks()
        session = self.table.open("ftp", "127.0.0.1", 40000, kicks)
        path = f"/api/sessions/{session.id}/kick"
        answer = yield self.call(
            path, "POST", headers={"Origin": "http://evil.example"}
        )
        self.assertEqual(answer.status, 403)
        self.assertEqual(kicks.reasons, [])
        own = f"http://127.0.0.1:{self.gw.admin_port}"
        answer = yield self.call(path, "POST", headers={"Origin": own})
        self.assertEqual(answer.status, 200)
        self.assertEqual(kicks.reasons, ["kicked by administrator"])

    @defer.inlineCallbacks
    def test_large_body_cut_off(self) -> Any:
        """No request needs a body: one past 64 KiB ends the connection."""

        def send() -> bytes:
            with socket.create_connection(("127.0.0.1", self.gw.admin_port), 20) as s:
                s.sendall(
                    b"POST /api/sessions/x/kick HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: 104857600\r\n\r\n"
                )
                answer = b""
                try:
                    for _ in range(100):  # at most 6.4 MiB
                        s.sendall(b"z" * 65536)
                    answer = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    pass
                return answer

        answer = yield in_thread(send)
        self.assertEqual(answer, b"")


class KickTests(unittest.TestCase):
    """Kicks of real client sessions."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {
            "slow": UserConfig(
                name="slow",
                password=PASSWORD,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=frozenset({"list", "upload", "download"}),
                upload_rate=256 * 1024,
            )
        }
        self.gw = yield start_gateway(self, "local", admin_listen=ADMIN, users=users)

    def kick(self, session_id: str) -> Deferred[Answer]:
        return in_thread(
            request, self.gw.admin_port, f"/api/sessions/{session_id}/kick", "POST"
        )

    @defer.inlineCallbacks
    def the_session(self, user: str, port: int) -> Any:
        """The id of C{user}'s session from C{port}, as the API lists it."""
        found: list[str] = []

        async def listed() -> None:
            answer = await in_thread(request, self.gw.admin_port, "/api/sessions")
            found.extend(
                s["id"]
                for s in json.loads(answer.body)["sessions"]
                if s["user"] == user and s["client_port"] == port
            )

        deadline = time.monotonic() + 15
        while not found and time.monotonic() < deadline:
            yield Deferred.fromCoroutine(listed())
        self.assertEqual(len(found), 1, f"{user}'s session from port {port}")
        return found[0]

    @defer.inlineCallbacks
    def test_ftp_upload_kicked(self) -> Any:
        """421 to the client, the connection closed, no object stored."""
        ftp = ftplib.FTP()
        yield in_thread(ftp.connect, self.gw.host, self.gw.port, timeout=20)
        self.addCleanup(ftp.close)
        yield in_thread(ftp.login, "slow", PASSWORD)
        port = ftp.sock.getsockname()[1]
        session_id = yield self.the_session("slow", port)
        outcome: dict[str, Any] = {}
        started = threading.Event()

        class Source(io.RawIOBase):
            """16 MiB, far more than the rate lets through before the kick."""

            sent = 0

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                started.set()
                if self.sent >= 16 * 1024 * 1024:
                    return 0
                n = min(len(buffer), 64 * 1024)
                buffer[:n] = b"k" * n
                self.sent += n
                return n

        def upload() -> None:
            try:
                ftp.storbinary("STOR kicked.bin", Source(), blocksize=64 * 1024)
            except (ftplib.Error, OSError, EOFError) as e:
                outcome["error"] = e
            # What the control connection said until it closed (the data
            # connection's reset may have come first).
            outcome["replies"] = [line.rstrip() for line in ftp.file]

        uploading = in_thread(upload)
        yield _wait(started.is_set, what="upload start")
        yield _wait(
            lambda: any(True for _ in self.gw.service.sessions.transfers()),
            what="transfer in the table",
        )
        answer = yield self.kick(session_id)
        self.assertEqual(answer.status, 200)
        yield uploading
        self.assertIn("error", outcome)
        said = [*outcome["replies"], str(outcome["error"])]
        self.assertIn("421 kicked by administrator", said, said)
        yield _wait(lambda: self.gw.service.sessions.get(session_id) is None)
        yield _wait(lambda: not self.gw.inspector.pending_uploads(), what="no upload")
        self.assertNotIn("kicked.bin", self.gw.inspector.keys())

    @defer.inlineCallbacks
    def test_ftp_idle_kicked(self) -> Any:
        ftp = ftplib.FTP()
        yield in_thread(ftp.connect, self.gw.host, self.gw.port, timeout=20)
        self.addCleanup(ftp.close)
        yield in_thread(ftp.login, "slow", PASSWORD)
        session_id = yield self.the_session("slow", ftp.sock.getsockname()[1])
        answer = yield self.kick(session_id)
        self.assertEqual(answer.status, 200)
        reply = yield in_thread(ftp.getline)
        self.assertEqual(reply, "421 kicked by administrator")
        rest = yield in_thread(ftp.sock.recv, 100)
        self.assertEqual(rest, b"")

    @defer.inlineCallbacks
    def test_sftp_upload_kicked(self) -> Any:
        """A disconnect for the client, no object stored."""
        sock = socket.create_connection((self.gw.host, self.gw.sftp_port), 20)
        transport = paramiko.Transport(sock)
        self.addCleanup(transport.close)
        yield in_thread(transport.connect, username="slow", password=PASSWORD)
        sftp = yield in_thread(paramiko.SFTPClient.from_transport, transport)
        session_id = yield self.the_session("slow", sock.getsockname()[1])
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                with sftp.open("kicked.bin", "wb") as f:
                    for _ in range(64):  # 16 MiB at 256 KiB/s: far from done
                        f.write(b"s" * 256 * 1024)
            except (OSError, EOFError, paramiko.SSHException) as e:
                outcome["error"] = e

        uploading = in_thread(upload)
        yield _wait(
            lambda: any(t.bytes > 0 for t in self.gw.service.sessions.transfers()),
            what="upload under way",
        )
        answer = yield self.kick(session_id)
        self.assertEqual(answer.status, 200)
        yield uploading
        self.assertIn("error", outcome)
        yield _wait(lambda: not transport.is_active(), what="disconnect")
        yield _wait(lambda: self.gw.service.sessions.get(session_id) is None)
        self.assertNotIn("kicked.bin", self.gw.inspector.keys())
