"""
The embedded default as a newcomer meets it: ``twistd -n cosftp`` in an
empty directory, the password read from the log line, a real FTP session.
The gateway runs as a child process, stopped by its PID.
"""

from __future__ import annotations

import ftplib
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

LINE = re.compile(
    r"log in at ftp://(?P<user>\w+)@(?P<host>[\d.]+):(?P<port>\d+)/ with password "
    r"(?P<password>\S+)"
)


class EmbeddedDefaultTests(unittest.SynchronousTestCase):
    def start(self, directory: Path) -> subprocess.Popen:
        log = open(directory / "twistd.log", "ab")  # noqa: SIM115
        self.addCleanup(log.close)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "cosftp"],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.stop, proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)

    def wait_for(self, directory: Path, pattern: re.Pattern, proc) -> re.Match:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (directory / "twistd.log").read_text(errors="replace")
            match = pattern.search(text)
            if match:
                return match
            if proc.poll() is not None:
                self.fail(f"twistd exited {proc.returncode}:\n{text}")
            time.sleep(0.1)
        self.fail("no login line within 30 s:\n" + text)

    def test_first_start_prints_login_that_works(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="cosgw-embedded-"))
        proc = self.start(directory)
        match = self.wait_for(directory, LINE, proc)
        self.assertEqual(match["user"], "cosgw")
        self.assertEqual(match["port"], "2121")
        ftp = ftplib.FTP()
        ftp.connect(match["host"], int(match["port"]), timeout=20)
        self.assertTrue(ftp.login(match["user"], match["password"]).startswith("230"))
        ftp.voidcmd("TYPE I")
        ftp.storbinary("STOR hello.txt", io.BytesIO(b"hello, cosgw"))
        ftp.quit()
        self.assertEqual(
            (directory / "cosgw-data" / "hello.txt").read_bytes(), b"hello, cosgw"
        )
        state = directory / "cosgw-state" / "users.passwd"
        self.assertEqual(state.stat().st_mode & 0o777, 0o600)
        self.assertNotIn(match["password"], state.read_text())
        self.stop(proc)
        # Second start: same account, password not shown again.
        (directory / "twistd.log").write_bytes(b"")
        proc = self.start(directory)
        again = self.wait_for(
            directory,
            re.compile(
                r"log in at ftp://cosgw@[\d.]+:2121/ with the password shown at first start"
            ),
            proc,
        )
        self.assertIsNotNone(again)
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", 2121, timeout=20)
        self.assertTrue(ftp.login("cosgw", match["password"]).startswith("230"))
        ftp.quit()
        self.assertNotIn(match["password"], (directory / "twistd.log").read_text())
