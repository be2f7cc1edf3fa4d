"""
The embedded default as a newcomer meets it: ``twistd -n cosftp`` in an
empty directory, the password read from the log line, a real FTP session.
The gateway runs as a child process, stopped by its PID.
"""

from __future__ import annotations

import fcntl
import ftplib
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from tests.processtesting import TWISTD, Child, accepts, poll, scratch

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


def other_address() -> str:
    """
    An IPv4 address of this host other than 127.0.0.1: an interface's
    (SIOCGIFADDR), or else 127.0.0.2, which Linux's loopback also answers
    but a socket bound to 127.0.0.1 does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, request)[20:24]  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address
            address = socket.inet_ntoa(packed)
            if not address.startswith("127."):
                return address
    return "127.0.0.2"


class EmbeddedListenersTests(unittest.SynchronousTestCase):
    """Where the embedded default listens, and what its log says of it."""

    def start(self, *options: str) -> tuple[Child, str]:
        directory = scratch(self, "cosgw-embedded-")
        child = Child(self, [TWISTD, "-n", "--pidfile=", "cosftp", *options], directory)
        poll(lambda: child.running() and LINE.search(child.text()), 30, "login line")
        for port in (2121, 2990, 2222):
            poll(
                lambda p=port: (
                    "listening on" in child.text() and f":{p} " in child.text()
                ),
                30,
                str(port),
            )
        return child, child.text()

    def test_loopback_only_by_default(self) -> None:
        child, text = self.start()
        for port, what in ((2121, "FTP"), (2990, "implicit FTPS"), (2222, "SFTP")):
            self.assertIn(f"listening on 127.0.0.1:{port} for {what}", text)
        self.assertNotIn("0.0.0.0", text)
        self.assertTrue(accepts("127.0.0.1", 2121))
        elsewhere = other_address()
        for port in (2121, 2990, 2222):
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection((elsewhere, port), timeout=10).close()

    def test_listen_all(self) -> None:
        child, text = self.start("--listen-all")
        for port in (2121, 2990, 2222):
            self.assertIn(f"listening on 0.0.0.0:{port} (every IPv4 interface)", text)
        # The URL to log in at is one that works from this machine.
        self.assertRegex(
            text, r"log in at ftp://cosgw@127\.0\.0\.1:2121/ with password"
        )
        with socket.create_connection((other_address(), 2121), timeout=10) as s:
            self.assertTrue(s.recv(100).startswith(b"220 "))

    def test_listen_all_is_for_the_embedded_default(self) -> None:
        directory = scratch(self, "cosgw-embedded-")
        config = directory / "cosgw.ini"
        config.write_text(
            "[storage:s]\ntype = local\npath = d\n[user:u]\npassword = p\n"
        )
        child = Child(
            self,
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "cosftp",
                "--listen-all",
                "--config",
                str(config),
            ],
            directory,
        )
        self.assertEqual(child.wait(30), 1)
        self.assertIn("--listen-all is for the embedded default", child.text())
