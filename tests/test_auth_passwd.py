"""
Tests for L{cosgw.auth.passwd}: the generated account of the embedded
default, passwd files and the C{cosgw-passwd} script.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from cosgw.auth import files, passwd
from cosgw.auth.hashes import verify_password
from cosgw.auth.passwd import ensure_generated_account, load_passwd_file, main
from tests.authtesting import (
    PROJECT_ROOT,
    SCRYPT_RE,
    cached_hash,
    temporary_directory,
)


class GeneratedAccountTests(TestCase):
    def setUp(self) -> None:
        self.state = temporary_directory(self) / "state"

    def test_creates_account(self) -> None:
        """
        The first call creates the directory (0700) and the file (0600),
        stores only the hash, and returns the password that verifies.
        """
        stored, password = ensure_generated_account(self.state)
        self.assertIsInstance(password, str)
        self.assertGreaterEqual(len(password), 16)
        self.assertRegex(stored, SCRYPT_RE)
        self.assertTrue(verify_password(password, stored, True))

        path = self.state / "users.passwd"
        self.assertEqual(stat.S_IMODE(self.state.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        content = path.read_text()
        self.assertEqual(content, f"cosgw:{stored}\n")
        self.assertNotIn(password, content)
        self.assertEqual(os.listdir(self.state), ["users.passwd"])
        self.assertEqual(load_passwd_file(path), {"cosgw": stored})

    def test_password_once(self) -> None:
        stored, password = ensure_generated_account(self.state)
        self.assertIsNotNone(password)
        self.assertEqual(ensure_generated_account(self.state), (stored, None))
        self.assertEqual(ensure_generated_account(self.state), (stored, None))

    def test_random(self) -> None:
        _, first = ensure_generated_account(self.state / "a")
        _, second = ensure_generated_account(self.state / "b")
        self.assertNotEqual(first, second)

    def test_username(self) -> None:
        stored, password = ensure_generated_account(self.state, "ftpadmin")
        self.assertEqual(
            load_passwd_file(self.state / "users.passwd"), {"ftpadmin": stored}
        )
        self.assertRaises(ValueError, ensure_generated_account, self.state, "other")

    def test_bad_username(self) -> None:
        self.assertRaises(ValueError, ensure_generated_account, self.state, "a:b")
        self.assertRaises(ValueError, ensure_generated_account, self.state, "")
        self.assertFalse(self.state.exists())

    def test_lost_race(self) -> None:
        """
        When another process creates the file first, its account wins and no
        password is returned: it was never stored.
        """
        real_link = os.link
        theirs = cached_hash("theirs")

        def racing_link(src, dst):
            Path(dst).write_text(f"cosgw:{theirs}\n")
            return real_link(src, dst)

        self.patch(files.os, "link", racing_link)
        self.assertEqual(ensure_generated_account(self.state), (theirs, None))
        self.assertEqual(os.listdir(self.state), ["users.passwd"])


class LoadPasswdFileTests(TestCase):
    def setUp(self) -> None:
        self.path = temporary_directory(self) / "users.passwd"

    def test_load(self) -> None:
        self.path.write_text(
            "# accounts\n\nalice:$scrypt$a$b$c\n  josé:$pbkdf2-sha256$1$b$c  \n"
        )
        self.assertEqual(
            load_passwd_file(self.path),
            {"alice": "$scrypt$a$b$c", "josé": "$pbkdf2-sha256$1$b$c"},
        )

    def test_malformed(self) -> None:
        """The error names the file and line but does not quote the line."""
        self.path.write_text("alice:$scrypt$x\nnocolon-secretvalue\n")
        error = self.assertRaises(ValueError, load_passwd_file, self.path)
        self.assertIn(str(self.path), str(error))
        self.assertIn("line 2", str(error))
        self.assertNotIn("secretvalue", str(error))

    def test_duplicate(self) -> None:
        self.path.write_text("alice:$scrypt$x\nalice:$scrypt$y\n")
        error = self.assertRaises(ValueError, load_passwd_file, self.path)
        self.assertIn("line 2", str(error))

    def test_missing(self) -> None:
        self.assertRaises(FileNotFoundError, load_passwd_file, self.path)


class MainTests(TestCase):
    """The C{cosgw-passwd} script."""

    def run_main(self, argv, stdin="", passwords=()):
        answers = iter(passwords)
        prompts = []

        def fake_getpass(prompt="Password: "):
            prompts.append(prompt)
            return next(answers)

        self.patch(passwd.getpass, "getpass", fake_getpass)
        self.patch(sys, "stdin", io.StringIO(stdin))
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        return main(argv), out.getvalue(), err.getvalue(), prompts

    def test_stdin(self) -> None:
        rc, out, err, prompts = self.run_main(["--stdin"], "s3cret 密码 \r\n")
        self.assertEqual((rc, err, prompts), (0, "", []))
        self.assertTrue(out.endswith("\n"))
        line = out.strip()
        self.assertRegex(line, SCRYPT_RE)
        # Inner and trailing spaces are part of the password.
        self.assertTrue(verify_password("s3cret 密码 ", line, True))
        self.assertNotIn("s3cret", out)

    def test_stdin_empty(self) -> None:
        rc, out, err, _ = self.run_main(["--stdin"], "\n")
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("empty", err)

    def test_getpass(self) -> None:
        rc, out, err, prompts = self.run_main([], passwords=["tty-pw", "tty-pw"])
        self.assertEqual((rc, err, len(prompts)), (0, "", 2))
        self.assertTrue(verify_password("tty-pw", out.strip(), True))

    def test_getpass_mismatch(self) -> None:
        rc, out, err, _ = self.run_main([], passwords=["tty-pw", "tty-pq"])
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("do not match", err)
        self.assertNotIn("tty-p", err)

    def test_getpass_interrupted(self) -> None:
        def interrupted(prompt=""):
            raise KeyboardInterrupt()

        self.patch(passwd.getpass, "getpass", interrupted)
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main([]), 1)

    def subprocess_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        return env

    def test_python_m(self) -> None:
        """C{python -m cosgw.auth --stdin} works as a script."""
        result = subprocess.run(
            [sys.executable, "-m", "cosgw.auth", "--stdin"],
            input="from-a-script\n",
            capture_output=True,
            text=True,
            env=self.subprocess_env(),
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(verify_password("from-a-script", result.stdout.strip(), True))

    def test_no_global_reactor(self) -> None:
        """Importing any module of cosgw.auth does not install a reactor."""
        code = (
            "import importlib, pkgutil, sys, cosgw.auth\n"
            "names = [m.name for m in pkgutil.iter_modules(cosgw.auth.__path__)]\n"
            "assert {'hashes', 'keys', 'passwd', 'passwords', 'realm'} <= set(names)\n"
            "for name in names:\n"
            "    if name != '__main__':\n"
            "        importlib.import_module('cosgw.auth.' + name)\n"
            "sys.exit('twisted.internet.reactor' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=self.subprocess_env(),
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
