"""
The shipped fail2ban filter and jail (etc/fail2ban/) against the log a
real gateway writes to log_dir after real failed FTP and SFTP logins,
checked with fail2ban's own tools (Debian package fail2ban):
``fail2ban-regex`` must find exactly the failing client's address once per
failed login, in the text and the JSON format, and never an address a
client put in its user name.
"""

from __future__ import annotations

import ftplib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import paramiko
from twisted.internet import defer
from twisted.trial import unittest

from tests.harness import in_thread, start_gateway
from tests.sshtesting import password_login

ROOT = Path(__file__).resolve().parent.parent
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "cosgw.conf"
JAIL = ROOT / "etc" / "fail2ban" / "jail.d" / "cosgw.conf"

#: A user name that tries to make the filter see another address.
CRAFTED = "x from 1.2.3.4 port 21 for user y"


def fail2ban_regex(log: Path) -> list[str]:
    """The addresses fail2ban-regex finds in C{log} with the shipped filter."""
    result = subprocess.run(
        ["fail2ban-regex", "--out", "ip", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


def ftp_fail(gw: Any, user: str) -> None:
    ftp = ftplib.FTP()
    ftp.connect(gw.host, gw.port, timeout=20)
    try:
        ftp.login(user, "not-the-password")
    except ftplib.error_perm as e:
        assert str(e).startswith("530"), e
    else:
        raise AssertionError("the login succeeded")
    finally:
        ftp.close()


def sftp_fail(gw: Any, user: str) -> None:
    try:
        password_login(gw.sftp_port, user, "not-the-password")
    except paramiko.AuthenticationException:
        return
    raise AssertionError("the login succeeded")


class Fail2banTests(unittest.TestCase):
    @defer.inlineCallbacks
    def failed_logins(self, log_format: str) -> Any:
        """
        Three failed FTP logins (one with the crafted name) and two failed
        SFTP logins (one crafted), one good FTP login; the log_dir file.
        """
        logs = Path(tempfile.mkdtemp(prefix="cosgw-fail2ban-"))
        self.addCleanup(shutil.rmtree, logs, True)
        gw = yield start_gateway(
            self, "local", log_dir=logs, log_format=log_format, log_level="info"
        )

        def run() -> None:
            ftp_fail(gw, "alice")
            ftp_fail(gw, "nobody")
            ftp_fail(gw, CRAFTED)
            sftp_fail(gw, "alice")
            sftp_fail(gw, CRAFTED)
            ftp = ftplib.FTP()
            ftp.connect(gw.host, gw.port, timeout=20)
            ftp.login("reader", "reader-pass")
            ftp.quit()

        yield in_thread(run)
        yield gw.service.stopService()
        return logs / "cosgw.log"

    def check(self, log: Path) -> None:
        found = fail2ban_regex(log)
        self.assertEqual(found, ["127.0.0.1"] * 5, log.read_text())
        self.assertNotIn("1.2.3.4", found)

    @defer.inlineCallbacks
    def test_text_log(self) -> Any:
        log = yield self.failed_logins("text")
        self.check(log)
        text = log.read_text()
        self.assertIn("ftp login failed from 127.0.0.1 port ", text)
        self.assertIn("sftp login failed from 127.0.0.1 port ", text)
        self.assertIn(f"for user {CRAFTED} (session ", text)

    @defer.inlineCallbacks
    def test_json_log(self) -> Any:
        import json

        log = yield self.failed_logins("json")
        self.check(log)
        failed = [
            record
            for record in map(json.loads, log.read_text().splitlines())
            if record.get("event") == "login-failed"
        ]
        self.assertEqual(
            sorted((r["protocol"], r["user"]) for r in failed),
            sorted(
                [
                    ("ftp", "alice"),
                    ("ftp", "nobody"),
                    ("ftp", CRAFTED),
                    ("sftp", "alice"),
                    ("sftp", CRAFTED),
                ]
            ),
        )
        self.assertEqual({r["client_ip"] for r in failed}, {"127.0.0.1"})


class JailTests(unittest.SynchronousTestCase):
    def test_jail_loads_with_the_filter(self) -> None:
        """
        fail2ban-client reads the jail and the filter from a config
        directory laid out as /etc/fail2ban is, and starts the jail on the
        log (a test run, no server).
        """
        conf = Path(tempfile.mkdtemp(prefix="cosgw-fail2ban-conf-"))
        self.addCleanup(shutil.rmtree, conf, True)
        for name in (
            "fail2ban.conf",
            "jail.conf",
            "paths-common.conf",
            "paths-debian.conf",
        ):
            shutil.copy(Path("/etc/fail2ban") / name, conf / name)
        shutil.copytree("/etc/fail2ban/action.d", conf / "action.d")
        (conf / "filter.d").mkdir()
        shutil.copy(FILTER, conf / "filter.d" / "cosgw.conf")
        shutil.copy("/etc/fail2ban/filter.d/common.conf", conf / "filter.d")
        (conf / "jail.d").mkdir()
        log = conf / "cosgw.log"
        log.write_text("")
        jail = JAIL.read_text().replace("/var/log/cosgw/cosgw.log", str(log))
        (conf / "jail.d" / "cosgw.conf").write_text(jail)
        result = subprocess.run(
            ["fail2ban-client", "-c", str(conf), "-d"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        self.assertIn("['add', 'cosgw', 'auto']", out)
        self.assertIn(f"['set', 'cosgw', 'addlogpath', '{log}', 'head']", out)
        self.assertIn("login failed from <HOST> port", out)
        self.assertIn("21,2121,990,2990,22,2222,61000:61999", out)
