"""
Tests for the C{cosgw} command as a whole: its console script, C{cosgw
passwd}, and what its subcommands read and print (durations, sizes,
tables, the admin listener's address).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import entry_points

from twisted.trial.unittest import TestCase

from cosgw.auth.hashes import verify_password
from cosgw.cli.admin import AdminError, admin_url, url_of_endpoint
from cosgw.cli.text import (
    format_bytes,
    format_duration,
    parse_duration,
    table,
)
from tests.clitesting import PROJECT_ROOT, cosgw, temporary_directory, write_config
from tests.cosserver import closed_port


class ConsoleScriptTests(TestCase):
    def test_entry_points(self) -> None:
        """The installed package has both scripts, cosgw-passwd kept."""
        scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
        self.assertEqual(scripts.get("cosgw"), "cosgw.cli.main:main")
        self.assertEqual(scripts.get("cosgw-passwd"), "cosgw.auth.passwd:main")

    def test_help(self) -> None:
        result = cosgw("--help")
        self.assertEqual(result.returncode, 0)
        for command in ("check-config", "passwd", "sessions", "kick", "uploads"):
            self.assertIn(command, result.stdout)

    def test_no_global_reactor(self) -> None:
        """Importing the command's modules installs no reactor."""
        code = (
            "import sys, cosgw.cli.main, cosgw.cli.check, cosgw.cli.uploads\n"
            "import cosgw.cli.admin, cosgw.cli.stores\n"
            "sys.exit('twisted.internet.reactor' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)


class PasswdTests(TestCase):
    """C{cosgw passwd} is cosgw-passwd under the one command."""

    def test_stdin(self) -> None:
        result = cosgw("passwd", "--stdin", stdin="from a script\n")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertTrue(verify_password("from a script", result.stdout.strip(), True))
        self.assertNotIn("from a script", result.stdout)

    def test_empty(self) -> None:
        result = cosgw("passwd", "--stdin", stdin="\n")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr, "cosgw passwd: refusing an empty password\n")

    def test_old_script(self) -> None:
        """C{python -m cosgw.auth} (what cosgw-passwd runs) still works."""
        result = subprocess.run(
            [sys.executable, "-m", "cosgw.auth", "--stdin"],
            input="old\n",
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(verify_password("old", result.stdout.strip(), True))


class TextTests(TestCase):
    def test_parse_duration(self) -> None:
        for text, seconds in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("2h", 7200),
            ("7d", 604800),
            ("1w", 604800),
            ("1h30m", 5400),
            ("1.5h", 5400),
            ("0", 0),
        ]:
            self.assertEqual(parse_duration(text), seconds, text)
        for bad in ("", "soon", "5x", "h", "-1h", "1h soon"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_format(self) -> None:
        self.assertEqual(
            [format_duration(s) for s in (0, 45, 185, 7800, 273600)],
            ["0s", "45s", "3m05s", "2h10m", "3d04h"],
        )
        self.assertEqual(
            [format_bytes(n) for n in (None, 0, 1023, 1024, 1536, 5 * 1024**3)],
            ["-", "0 B", "1023 B", "1 KiB", "1.5 KiB", "5 GiB"],
        )

    def test_table_escapes(self) -> None:
        """A name with control characters cannot forge a line or colour one."""
        text = table(["ID", "USER"], [["a1", "evil\n\x1b[31mroot"], ["b22", "bob"]])
        self.assertEqual(text, "ID   USER\na1   evil??[31mroot\nb22  bob")


class AdminAddressTests(TestCase):
    """Where sessions and kick find the admin listener."""

    def test_endpoints(self) -> None:
        for endpoint, url in [
            ("tcp:9121:interface=127.0.0.1", "http://127.0.0.1:9121"),
            ("tcp:port=9300:interface=10.0.0.5", "http://10.0.0.5:9300"),
            ("tcp:9121", "http://127.0.0.1:9121"),
            ("tcp:9121:interface=0.0.0.0", "http://127.0.0.1:9121"),
            ("tcp6:9121:interface=\\:\\:1", "http://[::1]:9121"),
            ("tcp6:9121", "http://[::1]:9121"),
            ("ssl:9443:privateKey=k.pem:interface=127.0.0.1", "https://127.0.0.1:9443"),
        ]:
            self.assertEqual(url_of_endpoint(endpoint), url, endpoint)
        for endpoint in ("unix:/run/cosgw/admin.sock", "haproxy:tcp:9121"):
            self.assertRaises(AdminError, url_of_endpoint, endpoint)

    def args(self, **kwargs: object) -> argparse.Namespace:
        values: dict[str, object] = {"admin": None, "config": None}
        values.update(kwargs)
        return argparse.Namespace(**values)

    def test_from_config(self) -> None:
        directory = temporary_directory(self)
        base = "[storage:s]\ntype = local\npath = d\n[user:u]\npassword = p\n"
        on = write_config(
            directory, "[server]\nadmin_listen = tcp:9555:interface=127.0.0.1\n" + base
        )
        self.assertEqual(admin_url(self.args(config=str(on))), "http://127.0.0.1:9555")
        self.assertEqual(admin_url(self.args()), "http://127.0.0.1:9121")
        self.assertEqual(admin_url(self.args(admin="http://h:1/")), "http://h:1")

    def test_disabled_in_config(self) -> None:
        """An empty admin_listen: a clear error, exit 1."""
        directory = temporary_directory(self)
        config = write_config(
            directory,
            "[server]\nadmin_listen =\n"
            "[storage:s]\ntype = local\npath = d\n[user:u]\npassword = p\n",
        )
        result = cosgw("sessions", "--config", str(config))
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(
            result.stderr,
            f"cosgw sessions: {config}: the admin listener is off"
            " (admin_listen is empty)\n",
        )

    def test_unreachable(self) -> None:
        """Nothing listens: a clear error, exit 3."""
        port = closed_port()
        result = cosgw("kick", "abc", "--admin", f"http://127.0.0.1:{port}")
        self.assertEqual((result.returncode, result.stdout), (3, ""))
        self.assertEqual(
            result.stderr,
            f"cosgw kick: cannot reach the admin listener at http://127.0.0.1:{port}:"
            " connection refused (ECONNREFUSED)\n",
        )
