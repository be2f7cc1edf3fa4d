"""
Reload on SIGHUP as an operator does it: a real C{twistd -n cosftp}
(stopped by its PID), its config file edited, then SIGHUP from the test,
from C{cosgw reload --pidfile} and C{--pid}.  While a rate-limited FTP
upload of a third user runs across the reload, a user is added and
another's plain password changed: the old password is refused, the new one
accepted, the new user logs in over FTP and SFTP, the upload completes
with the right bytes; log_level debug shows debug lines after; a changed
passive range is named as needing a restart; systemd hears RELOADING=1
and READY=1; a broken file keeps the running config with one error line.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from tests.authtesting import cached_hash
from tests.clitesting import cosgw
from tests.processtesting import TWISTD, Child, free_port, poll, scratch
from tests.sshtesting import password_login
from tests.test_reload import host_key
from tests.test_systemd import Listening

KiB = 1024
#: Seconds any one step may take on a loaded machine.
TIMEOUT = 30

BOB_OLD, BOB_NEW = "bob-plain-old", "bob-plain-new"
CAROL = "carol-pw"
DAVE = "dave-pw"


def config(directory: Path, ftp: int, sftp: int, users: str, server: str = "") -> str:
    return (
        f"[server]\nstate_dir = {directory}/state\n"
        f"ftp_listen = tcp:{ftp}:interface=127.0.0.1\n"
        f"sftp_listen = tcp:{sftp}:interface=127.0.0.1\n"
        f"ssh_host_keys = {directory / 'ssh_host_ed25519_key'}\n"
        "admin_listen =\nlog_format = json\nlogin_failure_delay = 0\n"
        f"{server}"
        f"[storage:s]\ntype = local\npath = {directory / 'data'}\n"
        f"[user:carol]\npassword = {cached_hash(CAROL)}\nupload_rate = 512K\n"
        f"{users}"
    )


def login_reply(port: int, user: str, password: str) -> str:
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=TIMEOUT)
    try:
        return ftp.login(user, password)
    except ftplib.Error as e:
        return str(e)
    finally:
        ftp.close()


class Upload(threading.Thread):
    """carol's rate-limited upload, counting what it has sent."""

    def __init__(self, port: int, data: bytes) -> None:
        super().__init__(daemon=True)
        self.port, self.data = port, data
        self.sent = 0
        self.reply: Any = None

    def run(self) -> None:
        try:
            with ftplib.FTP() as ftp:
                ftp.connect("127.0.0.1", self.port, timeout=TIMEOUT)
                ftp.login("carol", CAROL)
                self.reply = ftp.storbinary(
                    "STOR big.bin", io.BytesIO(self.data), 16 * KiB, self._sent
                )
        except Exception as e:  # the test reads what happened
            self.reply = e

    def _sent(self, block: bytes) -> None:
        self.sent += len(block)


class SighupTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = scratch(self, "cosgw-reload-")
        host_key(self.directory)
        self.ftp, self.sftp = free_port(), free_port()
        self.path = self.directory / "cosgw.ini"
        self.pidfile = self.directory / "twistd.pid"

    def write(self, users: str, server: str = "") -> None:
        self.path.write_text(config(self.directory, self.ftp, self.sftp, users, server))

    def events(self) -> list[dict[str, Any]]:
        text = (self.directory / "twistd.log").read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def reload_lines(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["namespace"] == "cosgw.reload"]

    def wait_reload_lines(self, count: int) -> list[dict[str, Any]]:
        return poll(
            lambda: len(self.reload_lines()) >= count and self.reload_lines(),
            TIMEOUT,
            f"{count} reload lines",
        )

    def test_sighup(self) -> None:
        notify = Listening(self, abstract=True)
        self.write(f"[user:bob]\npassword = {BOB_OLD}\n")
        argv = [TWISTD, "-n", f"--pidfile={self.pidfile}", "--logfile=-"]
        argv += ["cosftp", "--config", str(self.path)]
        child = Child(self, argv, self.directory, env={"NOTIFY_SOCKET": notify.env})
        notify.until("READY", TIMEOUT)
        # 8 s at carol's 512K/s: the reload happens well inside it.
        data = os.urandom(4096 * KiB)
        upload = Upload(self.ftp, data)
        upload.start()
        poll(lambda: upload.sent >= 256 * KiB, TIMEOUT, "the upload under way")

        dave = f"[user:dave]\npassword = {cached_hash(DAVE)}\n"
        self.write(
            f"[user:bob]\npassword = {BOB_NEW}\n{dave}",
            "log_level = debug\npassive_ports = 63600-63699\n",
        )
        os.kill(child.pid, signal.SIGHUP)

        reloading = notify.until("RELOADING", TIMEOUT)
        self.assertIn("MONOTONIC_USEC", reloading)
        ready = notify.until("READY", TIMEOUT)
        self.assertEqual(
            ready["STATUS"], "config reloaded; some changes wait for a restart"
        )
        applied, restart = self.wait_reload_lines(2)
        self.assertEqual(
            (applied["level"], applied["message"]),
            (
                "info",
                f"reload (SIGHUP) of {self.path}: users added: dave;"
                " users changed: bob (password); [server] log_level",
            ),
        )
        self.assertEqual(
            (restart["level"], restart["message"]),
            (
                "warn",
                f"reload (SIGHUP) of {self.path}: not applied until a restart:"
                " [server] passive_ports",
            ),
        )
        self.assertTrue(login_reply(self.ftp, "bob", BOB_OLD).startswith("530"))
        self.assertTrue(login_reply(self.ftp, "bob", BOB_NEW).startswith("230"))
        self.assertTrue(login_reply(self.ftp, "dave", DAVE).startswith("230"))
        self.assertEqual(password_login(self.sftp, "dave", DAVE), "/")
        traced = [
            e
            for e in self.events()
            if e["level"] == "debug" and e["message"].endswith("> USER dave")
        ]
        self.assertEqual(len(traced), 1)
        upload.join(TIMEOUT)
        self.assertEqual(upload.reply, "226 Transfer complete")
        # It was under way across the reload: its upload event comes after.
        events = self.events()
        [done] = [i for i, e in enumerate(events) if e.get("event") == "upload"]
        self.assertLess(events.index(applied), done)
        stored = (self.directory / "data" / "big.bin").read_bytes()
        self.assertEqual(hashlib.sha256(stored).digest(), hashlib.sha256(data).digest())

        # A broken file, through cosgw reload --pidfile: one error line.
        self.write(f"[user:bob]\npassword = {BOB_NEW}\nmax_sessions = many\n")
        sent = cosgw("reload", "--pidfile", str(self.pidfile))
        self.assertEqual(
            (sent.returncode, sent.stdout),
            (0, f"sent SIGHUP to process {child.pid}; the gateway logs the result\n"),
        )
        lines = self.wait_reload_lines(3)
        self.assertEqual(len(lines), 3)
        self.assertEqual(lines[2]["level"], "error")
        self.assertTrue(
            lines[2]["message"].startswith(
                f"reload (SIGHUP) failed, the running config is kept: {self.path}:"
                " [user:bob] max_sessions"
            ),
            lines[2]["message"],
        )
        self.assertTrue(login_reply(self.ftp, "bob", BOB_NEW).startswith("230"))
        self.assertTrue(login_reply(self.ftp, "dave", DAVE).startswith("230"))

        # Fixed, through cosgw reload --pid: no change since the last
        # applied file, and the passive range still waits.
        self.write(
            f"[user:bob]\npassword = {BOB_NEW}\n{dave}",
            "log_level = debug\npassive_ports = 63600-63699\n",
        )
        self.assertEqual(cosgw("reload", "--pid", str(child.pid)).returncode, 0)
        lines = self.wait_reload_lines(5)
        self.assertEqual(
            [line["message"].split(": ", 1)[1] for line in lines[3:]],
            ["no change", "not applied until a restart: [server] passive_ports"],
        )
        self.assertTrue(child.running())
