"""
The status page in a real browser (headless Chromium through selenium):
while a rate-limited FTP upload runs, the page shows the session with the
right user and address and the transfer's progress bar advances between
two screenshots.  The screenshots go to the test's output directory (and,
with C{COSGW_STATUS_SCREENSHOT=PATH}, the second also to PATH: that is how
docs/status-page.png is made).
"""

from __future__ import annotations

import ftplib
import io
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from cosgw.config import ALL_PERMISSIONS, UserConfig
from tests.admintesting import browser, request
from tests.harness import PASSWORD, in_thread, start_gateway
from tests.test_ftp import connect

#: The upload: its announced size (ALLO) and the rate its user may send at.
SIZE = 8 * 1024 * 1024
RATE = 512 * 1024

#: The progress bar's value in the transfer's row (None: no such row yet).
PROGRESS = """
const bar = document.querySelector("#transfers tr[data-transfer] progress");
return bar === null ? null : bar.value;
"""

#: Each session row as [user, address, protocol].
SESSIONS = """
return Array.from(document.querySelectorAll("#sessions tr[data-session]"),
  (row) => Array.from(row.cells).slice(0, 3).map((cell) => cell.textContent));
"""


class _Source(io.RawIOBase):
    """The upload's bytes (loopback buffers take megabytes at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), 32 * 1024, SIZE - self.sent)
        buffer[:n] = b"p" * n
        self.sent += n
        return n


def _until(get: Any, accept: Any, seconds: float, what: str) -> Any:
    """Poll C{get()} (in this thread) until C{accept}s it; fail after C{seconds}."""
    deadline = time.monotonic() + seconds
    while True:
        value = get()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds} s (last: {value!r})")
        time.sleep(0.05)


class StatusPageTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        users = {
            "alice": UserConfig(
                name="alice",
                password=PASSWORD,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=ALL_PERMISSIONS,
            ),
            "carol": UserConfig(
                name="carol",
                password=PASSWORD,
                password_is_hashed=False,
                storage="store",
                home="",
                permissions=frozenset({"list", "upload", "download"}),
                upload_rate=RATE,
            ),
        }
        self.gw = yield start_gateway(
            self, "local", admin_listen="tcp:0:interface=127.0.0.1", users=users
        )
        # Kept after the test, for people to look at.
        self.output = Path(tempfile.mkdtemp(prefix="cosgw-status-page-"))

    def others(self) -> Any:
        """Finished transfers and an idle SFTP session, for a fuller page."""
        ftp = connect(self.gw)
        ftp.mkd("incoming")
        for name, size in (("report.csv", 48_213), ("photo.jpg", 734_001)):
            ftp.storbinary(f"STOR {name}", io.BytesIO(b"x" * size))
        ftp.quit()
        sock = socket.create_connection((self.gw.host, self.gw.sftp_port), 20)
        transport = paramiko.Transport(sock)
        transport.connect(username="alice", password=PASSWORD)
        paramiko.SFTPClient.from_transport(transport).listdir("/")
        return transport

    def upload(self, ftp: ftplib.FTP) -> str:
        """Upload until the end, or until kicked: what the client was told."""
        ftp.sendcmd(f"ALLO {SIZE}")
        try:
            return ftp.storbinary("STOR incoming/big-upload.bin", _Source())
        except (ftplib.Error, OSError) as e:
            return "".join(ftp.file) or str(e)

    def look(self, port: int, client_port: int) -> tuple[float, float]:
        """The browser's part (blocking): two screenshots, the bar's values."""
        driver = browser()
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            first = _until(
                lambda: driver.execute_script(PROGRESS),
                lambda v: v is not None and v > 0,
                20,
                "progress bar",
            )
            rows = driver.execute_script(SESSIONS)
            self.assertIn(["carol", f"127.0.0.1:{client_port}", "FTP"], rows)
            driver.save_screenshot(str(self.output / "status-1.png"))
            second = _until(
                lambda: driver.execute_script(PROGRESS),
                lambda v: v is not None and v >= first + RATE,
                20,
                "progress",
            )
            driver.save_screenshot(str(self.output / "status-2.png"))
            return first, second
        finally:
            driver.quit()

    @defer.inlineCallbacks
    def test_progress_advances(self) -> Any:
        transport = yield in_thread(self.others)
        self.addCleanup(transport.close)
        ftp = ftplib.FTP()
        yield in_thread(ftp.connect, self.gw.host, self.gw.port, timeout=20)
        self.addCleanup(ftp.close)
        yield in_thread(ftp.login, "carol", PASSWORD)
        client_port = ftp.sock.getsockname()[1]
        uploading = in_thread(self.upload, ftp)
        first, second = yield in_thread(self.look, self.gw.admin_port, client_port)
        self.assertGreater(second, first)
        # Done: the upload need not take its 16 s.
        (session,) = [
            s for s in self.gw.service.sessions.sessions.values() if s.user == "carol"
        ]
        answer = yield in_thread(
            request, self.gw.admin_port, f"/api/sessions/{session.id}/kick", "POST"
        )
        self.assertEqual(answer.status, 200)
        told = yield uploading
        self.assertIn("421 kicked by administrator", told)
        for name in ("status-1.png", "status-2.png"):
            self.assertGreater((self.output / name).stat().st_size, 10_000)
        target = os.environ.get("COSGW_STATUS_SCREENSHOT")
        if target:
            shutil.copyfile(self.output / "status-2.png", target)
